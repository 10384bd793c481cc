"""Reduced precision on the CPU: torch bf16 autocast, the image-difference gate, and the
measured choice behind ``--backend auto``.

This CPU may lack native bf16; torch's bf16 autocast still runs there (emulated), so the tests
that check bf16 numerics pretend the CPU has it (``cap.cpu_bf16`` patched)."""
from __future__ import annotations

import json

import pytest

from medfake.engine.core import capabilities as cap
from medfake.engine.diffusion.precision_check import DEFAULT_BOUND, compare_images
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.sd_model import init_model
from medfake.pipelines.models import load_model

CFG = SamplerConfig("dpm++", 4, 4.0, "", 32, 32)
PROMPTS, SEEDS = ["a CT image of a cyst", "a CT image of a hemangioma"], [3, 4]
NATIVE = cap.Probe("cpu_bf16", True, "", "native bf16: avx512_bf16 (patched by the test)")
NONE = cap.Probe("cpu_bf16", False, "", "no native bf16 on this CPU (patched by the test)")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("micro") / "model", seed=0)


def test_torch_bf16_autocast_is_close_to_fp32(micro, monkeypatch):
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    fp32 = load_model(str(micro), "torch")
    bf16 = load_model(str(micro), "torch", precision="bf16")
    assert fp32.backend.precision == "fp32" and fp32.details["precision"] == "fp32"
    assert bf16.backend.precision == "bf16" and bf16.details["precision"] == "bf16"
    ref = fp32.sampler(CFG).generate(PROMPTS, SEEDS, output="float")
    got = bf16.sampler(CFG).generate(PROMPTS, SEEDS, output="float")
    diff = compare_images(ref, got)
    # bf16 really ran (a silent fp32 run would be identical), and within the stated bound
    assert 0 < diff.mean_abs < 0.005 and diff.max_abs < 0.05, diff
    assert diff.passes(DEFAULT_BOUND)
    # the VAE decode stays fp32: the same latents decode identically on both
    import torch
    lat = torch.randn(1, 4, 8, 8)
    assert torch.equal(fp32.backend.vae_decode(lat), bf16.backend.vae_decode(lat))


def test_torch_bf16_refused_without_native_bf16(micro, monkeypatch):
    from medfake.engine.diffusion.backends.torch_backend import resolve_precision
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NONE)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(cap.CapabilityError, match="native bf16.*--precision fp32"):
        load_model(str(micro), "torch", precision="bf16")
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    assert resolve_precision("auto", "cpu") == resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda:0") == "fp32"   # a GPU: bf16 only when asked


def test_cpu_bf16_probe_reads_the_cpu_flags(monkeypatch):
    cap.cpu_bf16.cache_clear()
    try:
        monkeypatch.setattr(cap, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
        assert cap.cpu_bf16().available and "amx_bf16" in cap.cpu_bf16().detail
        cap.cpu_bf16.cache_clear()
        monkeypatch.setattr(cap, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
        assert not cap.cpu_bf16().available
    finally:
        cap.cpu_bf16.cache_clear()


def test_synth_torch_bf16_records_precision(micro, small_world, tmp_path, monkeypatch):
    """Every sample of a bf16 torch job says bf16, and bf16 is part of the job's identity (a
    resume at fp32 is a different job); an fp32 torch plan keeps its old identity."""
    from medfake.engine.data.reader import load_split
    from medfake.pipelines.synth import SynthConfig, run_job
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    _, hospital = small_world
    out = tmp_path / "bf16"
    res = run_job(SynthConfig(str(micro), str(hospital), str(out), per_class=1, steps=2,
                              samples_per_shard=4, batch_size=2, backend="torch",
                              precision="bf16", threads=2))
    assert res.complete
    assert {m["precision"] for m in load_split(out, "train").metas} == {"bf16"}
    assert json.loads((out / "synth_plan.json").read_text())["precision"] == "bf16"
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NONE)
    with pytest.raises(cap.CapabilityError, match="native bf16"):
        run_job(SynthConfig(str(micro), str(hospital), str(tmp_path / "refused"), per_class=1,
                            steps=2, backend="torch", precision="bf16"))
    assert not (tmp_path / "refused" / "synth_plan.json").exists()   # refused before writing
