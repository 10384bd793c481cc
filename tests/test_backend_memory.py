"""Memory: the peak estimate an automatic backend choice reads (engine.diffusion.backends.memory),
and the export's memory-saving steps (export.onnx_export)."""
from __future__ import annotations

import numpy as np
import pytest
from medfake.engine.diffusion.backends import memory
from medfake.engine.diffusion.backends.components import SPECS, JobShape
from medfake.engine.diffusion.sd_model import SDComponents
from torch import nn


@pytest.fixture
def micro(tmp_path):
    """A diffusers-layout dir with an SD-like UNet/VAE config and weight files of known size
    (the estimate reads only these)."""
    import json
    d = tmp_path / "model"
    for sub, cfg, size in (
            ("unet", {"block_out_channels": [32, 64], "layers_per_block": 1,
                      "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                      "attention_head_dim": 8}, 3000),
            ("vae", {"block_out_channels": [16, 32, 32, 32]}, 2000),
            ("text_encoder", {}, 1000)):
        (d / sub).mkdir(parents=True)
        (d / sub / "config.json").write_text(json.dumps(cfg))
        (d / sub / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * size)
        (d / sub / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"\0" * 7)
    return d


def test_estimate_grows_with_the_job_and_a_measurement_replaces_it(micro, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path))
    w = memory.weight_bytes(micro)
    assert w == 6000                                     # fp16 variants are not counted
    small = JobShape(1, 32, 32)
    big = JobShape(8, 256, 256)
    torch_small = memory.estimate_peak_bytes("torch", str(micro), small)
    assert torch_small >= memory.BASE_BYTES + w
    assert memory.estimate_peak_bytes("torch", str(micro), big) > torch_small
    # ONNX Runtime materialises attention scores; two streams hold two sets of activations
    assert (memory.estimate_peak_bytes("onnx", str(micro), big)
            > memory.estimate_peak_bytes("torch", str(micro), big))
    assert (memory.estimate_peak_bytes("onnx", str(micro), big, streams=2)
            > memory.estimate_peak_bytes("onnx", str(micro), big))
    memory.record_peak("onnx", "h", big, 1, 123_456_789)
    assert memory.estimate_peak_bytes("onnx", str(micro), big, model_hash="h") == 123_456_789
    memory.record_peak("onnx", "h", big, 1, 5)          # the larger measurement is kept
    assert memory.load_peak("onnx", "h", big, 1) == 123_456_789
    assert memory.load_peak("onnx", "h", big, 2) is None


def test_peak_since_reset_sees_a_new_allocation():
    if not memory.reset_peak():
        pytest.skip("no /proc/self/clear_refs here")
    before = memory.peak_since_reset()
    block = np.ones(64 * 2 ** 20 // 8)          # 64 MB, touched
    assert memory.peak_since_reset() >= before + 50 * 2 ** 20
    del block


def test_export_frees_each_network_after_its_last_use():
    from medfake.export.onnx_export import _release_unused
    comps = SDComponents(unet=nn.Linear(2, 2), vae=nn.Linear(2, 2), text_encoder=nn.Linear(2, 2),
                         tokenizer=object(), scheduler=object())
    vae = comps.vae
    _release_unused(comps, [SPECS["vae_encoder"], SPECS["vae_decoder"]])
    assert comps.unet is None and comps.text_encoder is None and comps.vae is vae
    assert comps.tokenizer is not None
    _release_unused(comps, [])
    assert comps.vae is None


def test_one_external_file_is_not_loaded_again(tmp_path, monkeypatch):
    from medfake.export import onnx_export
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "model.onnx.data").write_bytes(b"weights")

    def no_load(*a, **k):
        raise AssertionError("a second copy of the weights was loaded")
    monkeypatch.setattr(onnx_export.onnx, "load", no_load)
    assert onnx_export._finalize_storage(tmp_path / "model.onnx", 10, threshold=1) is True


def test_per_tensor_files_are_consolidated_without_loading_the_weights(tmp_path, monkeypatch):
    import onnx
    import onnxruntime as ort
    from medfake.export import onnx_export
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(tmp_path.iterdir())) == 3            # the graph and one file per tensor
    real_load = onnx.load

    def load(p, *a, load_external_data=True, **k):
        assert not load_external_data, "a second copy of the weights was loaded"
        return real_load(p, *a, load_external_data=False, **k)
    monkeypatch.setattr(onnx_export.onnx, "load", load)
    assert onnx_export._finalize_storage(path, 2 * 64 * 64 * 4, threshold=0) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    x = rng.standard_normal((1, 64)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, x @ w1 @ w2, atol=1e-4)


def test_estimate_follows_the_exports_attention_head_chunking(micro):
    """An export that computes attention one head at a time (the default) holds one head's
    scores; an older export (no setting) or one with 0 holds all 8 heads' at once."""
    big = JobShape(1, 256, 256)
    tokens = (256 // 8) ** 2
    scores = 2 * tokens * tokens * 4 * 2     # scores + softmax, fp32, UNet batch 2 (CFG)
    per_diffusers_dir = memory.estimate_peak_bytes("onnx", str(micro), big)

    def export_with(settings):
        from medfake.engine.diffusion.backends.components import ModelGeometry
        from medfake.engine.diffusion.backends.manifest import ExportManifest
        ExportManifest("onnx", str(micro), "x", "fp32", ModelGeometry(256, 3, 4, 8, 0.18, 4, 8, 8),
                       settings=settings).save(micro)
        return memory.estimate_peak_bytes("onnx", str(micro), big)

    one, old = export_with({"attention_heads_per_chunk": 1}), export_with({})
    assert old > one and export_with({"attention_heads_per_chunk": 0}) == old
    assert abs(per_diffusers_dir - one) < 10_000   # a diffusers dir: as the default export (+ its weights)
    cfg = memory._unet_config(micro)       # the UNet call's share, exactly
    unet = {n: memory._unet_activation_bytes(cfg, 2, 32, 32, n) for n in (None, 0, 1, 2)}
    assert unet[0] - unet[1] == 7 * scores and unet[2] - unet[1] == scores
    assert unet[1] - unet[None] == scores  # torch (blocked SDPA) materialises none
