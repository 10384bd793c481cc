"""Memory: the peak estimate an automatic backend choice reads (engine.diffusion.backends.memory),
and the export's memory-saving steps (export.onnx_export)."""
from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from medfake.engine.diffusion.backends import memory
from medfake.engine.diffusion.backends.components import SPECS, JobShape
from medfake.engine.diffusion.sd_model import SDComponents, init_model


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("m") / "micro", seed=0)


def test_estimate_grows_with_the_job_and_a_measurement_replaces_it(micro, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path))
    w = memory.weight_bytes(micro)
    assert w > 0
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
