"""ONNX export, the ONNX Runtime backend, TensorRT build planning, capability errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from medfake.engine.core import capabilities as cap
from medfake.engine.diffusion.backends import resolve_backend
from medfake.pipelines.models import load_model
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.sd_model import init_model
from medfake.export import onnx_export
from medfake.engine.diffusion.backends.components import SPECS, ModelGeometry
from medfake.engine.diffusion.backends.manifest import ExportError, ExportManifest
from medfake.export.onnx_export import OnnxExportConfig, export_onnx
from medfake.export.tensorrt_build import (TensorRTBuildConfig, build_engines, component_batches,
                                           engine_cache_key, profile_shapes)
from medfake.pipelines.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return init_model("tiny", d / "model", seed=0)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    # with the step-feature caching graphs (unet_deep, unet_shallow), which its tests use too
    return export_onnx(str(tiny), str(tmp_path_factory.mktemp("onnx") / "export"),
                       OnnxExportConfig(deep_cache=True))


def test_export_writes_validated_graphs_and_manifest(exported, tiny):
    m = ExportManifest.load(exported, kind="onnx")
    assert set(m.components) == {"text_encoder", "unet", "vae_encoder", "vae_decoder",
                                 "unet_deep", "unet_shallow"}
    from medfake.engine.diffusion.sd_model import model_hash
    assert m.source_hash == model_hash(tiny)
    for name, entry in m.components.items():
        onnx.checker.check_model(str(exported / entry["file"]))
        # unet_deep validates both of its outputs (noise_pred, deep_feature) at each batch
        assert [r["batch"] for r in entry["validation"]] == (
            [1, 1, 3, 3] if name == "unet_deep" else [1, 3])
        assert all(r["ok"] and r["max_abs"] < 1e-4 for r in entry["validation"]), name
        assert entry["opset"] == 17 and entry["tolerance"]["atol"] == 1e-4
        graph = onnx.load(str(exported / entry["file"])).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    assert (exported / "tokenizer").is_dir() and (exported / "scheduler").is_dir()


def test_onnx_backend_matches_torch_images(exported, tiny):
    cfg = SamplerConfig("dpm++", 8, 4.0, "", 32, 32)
    prompts, seeds = ["a CT image of a cyst", "a CT image of a hemangioma"], [3, 4]
    ref = load_model(str(tiny), "torch").sampler(cfg).generate(prompts, seeds, output="float")
    onnx_model = load_model(str(exported), "onnx")
    assert onnx_model.backend_name == "onnx" and onnx_model.details["providers"] == [
        "CPUExecutionProvider"]
    got = onnx_model.sampler(cfg).generate(prompts, seeds, output="float")
    assert got.shape == ref.shape == (2, 32, 32, 3)
    assert np.abs(got - ref).max() < 1e-3


def test_cached_sampling_on_onnx_matches_torch(exported, tiny):
    """Step-feature caching with CFG truncation through the exported graphs (ONNX Runtime, and
    OpenVINO where installed) equals the torch path within float tolerance."""
    from medfake.engine.diffusion.deep_cache import DeepCacheError
    cfg = SamplerConfig("dpm++", 7, 4.0, "", 32, 32, cfg_cutoff=0.5, deep_cache_interval=3)
    prompts, seeds = ["a CT image of a cyst", "a CT image of a hemangioma"], [3, 4]
    ref = load_model(str(tiny), "torch").sampler(cfg).generate(prompts, seeds, output="float")
    base = load_model(str(tiny), "torch").sampler(SamplerConfig("dpm++", 7, 4.0, "", 32, 32)
                                                  ).generate(prompts, seeds, output="float")
    assert np.abs(ref - base).max() > 1e-3            # the cached path is not the plain one
    got = load_model(str(exported), "onnx").sampler(cfg).generate(prompts, seeds, output="float")
    assert np.abs(got - ref).max() < 1e-3
    if cap.openvino().available:
        ov = load_model(str(exported), "openvino", precision="fp32").sampler(cfg)
        assert np.abs(ov.generate(prompts, seeds, output="float") - ref).max() < 1e-3
    m = ExportManifest.load(exported)
    for name in ("unet_deep", "unet_shallow"):
        m.components.pop(name)
    with pytest.raises(DeepCacheError, match="--deep-cache"):
        m.require_deep_cache("DIR", "onnx", 1)


def test_onnx_backend_from_model_dir_exports_once_into_cache(tiny, exported, monkeypatch):
    calls = []
    real = onnx_export.export_onnx
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = load_model(str(tiny), "onnx", )
    second = load_model(str(tiny), "onnx")
    assert len(calls) <= 1 and first.details["export_dir"] == second.details["export_dir"]
    assert ExportManifest.load(first.details["export_dir"]).source_hash == first.model_hash


def test_inpainting_unet_fp16_and_external_data(tmp_path):
    d = init_model("tiny-inpaint", tmp_path / "inpaint", seed=1)
    out = export_onnx(str(d), str(tmp_path / "x16"),
                      OnnxExportConfig(precision="fp16", components=("unet",),
                                       external_data_threshold=0))
    m = ExportManifest.load(out)
    assert m.geometry.unet_in_channels == 9 and m.precision == "fp16"
    entry = m.components["unet"]
    assert entry["external_data"] and (out / "unet" / "model.onnx.data").is_file()
    assert all(r["ok"] for r in entry["validation"])
    assert max(r["max_abs"] for r in entry["validation"]) > 1e-6  # really computed in fp16


def test_export_over_tolerance_fails_and_writes_no_manifest(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", (0.0, 0.0))
    with pytest.raises(ExportError, match="vae_decoder does not match PyTorch"):
        export_onnx(str(tiny), str(tmp_path / "bad"), OnnxExportConfig(components=("vae_decoder",)))
    assert not (tmp_path / "bad" / "export_manifest.json").exists()


def test_export_config_and_input_errors(tmp_path):
    with pytest.raises(ValueError, match="opset <= 20"):
        OnnxExportConfig(opset=23).check()
    with pytest.raises(ValueError, match="unknown components"):
        OnnxExportConfig(components=("clip",)).check()
    with pytest.raises(ExportError, match="medfake export onnx"):
        ExportManifest.load(tmp_path)


def test_tensorrt_profiles_cache_keys_and_cpu_refusal(exported, tmp_path):
    cfg = TensorRTBuildConfig.profile(**TensorRTBuildConfig.parse_batch("2:4:8"))
    geom = ExportManifest.load(exported).geometry
    assert component_batches("unet", cfg) == (2, 8, 16)  # CFG doubles the UNet batch
    assert component_batches("text_encoder", cfg) == (1, 4, 8)
    shapes = profile_shapes("unet", geom, cfg)
    assert shapes["sample"] == ((2, 4, 8, 8), (8, 4, 8, 8), (16, 4, 8, 8))
    assert shapes["encoder_hidden_states"][2] == (16, 32, 64) and shapes["timestep"][0] == ()
    assert profile_shapes("vae_decoder", geom, cfg)["latent"][2] == (8, 4, 8, 8)
    k = engine_cache_key("abc", "A100", "10.9", cfg, shapes)
    assert k != engine_cache_key("abc", "H100", "10.9", cfg, shapes)
    assert k != engine_cache_key("abc", "A100", "11.4", cfg, shapes)
    with pytest.raises(ValueError, match="MIN:OPT:MAX"):
        TensorRTBuildConfig.parse_batch("8")
    with pytest.raises(ValueError, match="MIN <= OPT <= MAX"):
        TensorRTBuildConfig.profile(**TensorRTBuildConfig.parse_batch("8:4:16"))
    if not cap.tensorrt().available or not cap.cuda().available:
        with pytest.raises(cap.CapabilityError, match="TensorRT"):
            build_engines(str(exported), str(tmp_path / "trt"), cfg)
        assert not (tmp_path / "trt" / "export_manifest.json").exists()
        return
    # A GPU with TensorRT: build, validate against ONNX, sample, and refuse a job outside
    # the profile with the one clear error.
    from medfake.engine.diffusion.backends.components import JobShape
    from medfake.engine.diffusion.backends.trt_backend import EngineShapeError
    out = build_engines(str(exported), str(tmp_path / "trt"), cfg)
    m = ExportManifest.load(out, kind="tensorrt")
    assert set(m.components) == set(ExportManifest.load(exported).components)
    for name, entry in m.components.items():
        assert [r["batch"] for r in entry["validation"]] == [2, 8], name
        assert all(r["ok"] for r in entry["validation"]), name
    scfg = SamplerConfig("dpm++", 2, 4.0, "", 64, 64)
    ref = load_model(str(exported), "onnx", provider="cpu").sampler(scfg).generate(
        ["a"] * 2, [0, 1], output="float")
    got = load_model(str(out), "tensorrt").sampler(scfg).generate(["a"] * 2, [0, 1],
                                                                  output="float")
    assert float(np.abs(got - ref).max()) < 6e-2
    dcfg = SamplerConfig("dpm++", 4, 4.0, "", 64, 64, cfg_cutoff=0.5, deep_cache_interval=2)
    ref = load_model(str(exported), "onnx", provider="cpu").sampler(dcfg).generate(
        ["a"] * 2, [0, 1], output="float")
    got = load_model(str(out), "tensorrt").sampler(dcfg).generate(["a"] * 2, [0, 1],
                                                                  output="float")
    assert float(np.abs(got - ref).max()) < 6e-2
    with pytest.raises(EngineShapeError, match="cannot serve 9 image"):
        load_model(str(out), "tensorrt", job=JobShape(9, 64, 64))


def test_gpu_backends_and_providers_fail_clearly_without_gpu(exported, monkeypatch):
    """The refusals a CPU machine gives, tested on every machine (a GPU machine is made to
    look like one without CUDA)."""
    monkeypatch.setattr(cap, "cuda", lambda: cap.Probe("cuda", False, "", "no CUDA device "
                                                       "visible to torch"))
    from medfake.engine.diffusion.backends.ort_backend import select_providers
    assert select_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(cap.CapabilityError, match="CUDA GPU"):
        select_providers("cuda")
    with pytest.raises(cap.CapabilityError, match="tensorrt"):
        load_model(str(exported), "tensorrt")
    assert resolve_backend("auto") in ("onnx", "torch")
    assert resolve_backend("auto", str(exported)) == "onnx"
    from medfake.kernels.attention import resolve_attention
    with pytest.raises(RuntimeError, match="xformers"):
        resolve_attention("xformers", "cpu")


def test_cli_export_doctor_and_synth_on_onnx(tiny, exported, small_world, tmp_path, capsys,
                                             caplog):
    main(["doctor"])
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "synthesis (--backend auto)" in out
    with pytest.raises(SystemExit) as e:
        main(["export", "onnx", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "medfake: error:" in capsys.readouterr().err
    _, hospital = small_world
    main(["synth", "--model", str(exported), "--real", str(hospital), "--out",
          str(tmp_path / "syn"), "--per-class", "2", "--steps", "3", "--backend", "onnx"])
    from medfake.engine.data.reader import load_split
    syn = load_split(tmp_path / "syn", "train")
    assert len(syn.keys) == 6 and all(m["backend"] == "onnx" for m in syn.metas)
    from medfake.engine.diffusion.sd_model import model_hash
    assert {m["model_hash"] for m in syn.metas} == {model_hash(tiny)}
    plan = json.loads((tmp_path / "syn" / "synth_plan.json").read_text())
    assert plan["backend"] == "onnx"
    # streams and batch left automatic: measured on the model, and the log says so
    assert "calibrated:" in caplog.text and "batch" in caplog.text
    # the job's measured peak is recorded for the automatic backend choice
    from medfake.engine.core.paths import cache_dir
    assert list(cache_dir("measured", "peak_rss").glob("*.json"))


def test_component_specs_cover_the_geometry():
    g = ModelGeometry(32, 3, 4, 4, 0.18215, 9, 77, 768)
    assert SPECS["unet"].shapes(g, 2)["sample"] == [2, 9, 8, 8]
    assert SPECS["vae_encoder"].shapes(g, 2)["image"] == [2, 3, 32, 32]
    assert SPECS["text_encoder"].shapes(g, 5)["input_ids"] == [5, 77]


def test_export_computes_attention_one_head_at_a_time_unless_told(exported, tiny, tmp_path):
    """The default export splits each attention into one Softmax per head (ONNX Runtime then
    holds one head's scores at a time); attention_heads_per_chunk=0 keeps one per layer, the
    graph TensorRT builds from. Both validate against PyTorch."""
    from medfake.engine.diffusion.sd_model import load_components
    unet = load_components(str(tiny)).unet
    layers = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    heads = sum(m.heads for m in layers)
    assert heads > len(layers)             # the tiny UNet has layers of several heads

    def softmaxes(d):
        g = onnx.load(str(d / ExportManifest.load(d).components["unet"]["file"])).graph
        return sum(n.op_type == "Softmax" for n in g.node)

    assert ExportManifest.load(exported).settings["attention_heads_per_chunk"] == 1
    assert softmaxes(exported) == heads
    fused = export_onnx(str(tiny), str(tmp_path / "fused"),
                        OnnxExportConfig(components=("unet",), attention_heads_per_chunk=0))
    assert softmaxes(fused) == len(layers)
    assert all(r["ok"] for r in ExportManifest.load(fused).components["unet"]["validation"])
    with pytest.raises(ValueError, match=">= 0"):
        OnnxExportConfig(attention_heads_per_chunk=-1).check()
