"""Mass-synthesis sampler options: CFG truncation and step-feature caching (DeepCache)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from medfake.engine.diffusion.backends import load_model
from medfake.engine.diffusion.backends.components import JobShape, input_shapes
from medfake.engine.diffusion.backends.manifest import ExportManifest
from medfake.engine.diffusion.backends.trt_backend import job_misfit
from medfake.engine.diffusion.deep_cache import DeepCacheError, DeepCacheUNet
from medfake.engine.diffusion.sampler import Sampler, SamplerConfig
from medfake.engine.diffusion.sd_model import build_components, init_model

PROMPTS, SEEDS = ["a CT image of a liver cyst", "a CT image of a liver metastasis"], [3, 4]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("m") / "micro", seed=0)


@pytest.fixture(scope="module")
def torch_model(micro):
    return load_model(str(micro), "torch")


def _gen(model, **kw):
    return model.sampler(SamplerConfig(steps=4, **kw)).generate(PROMPTS, SEEDS, output="float")


def test_full_pass_equals_stock_unet_and_shallow_reuses_the_deep_feature():
    unet = build_components("micro").unet.eval()
    dc = DeepCacheUNet(unet)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 77, 32, generator=g)
    t = torch.tensor(617.0)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=text).sample
        eps, deep = dc.full(x, t, text)
        assert torch.equal(eps, ref)                         # bit-identical to the stock UNet
        assert deep.shape == (3, unet.config.block_out_channels[1], 8, 8)
        # the shallow pass on its own step's feature is the full UNet again
        assert torch.equal(dc.shallow(x, t, text, deep), ref)
        x2 = x + 0.05 * torch.randn(x.shape, generator=g)
        stale = dc.shallow(x2, t, text, deep)
        assert not torch.equal(stale, unet(x2, t, encoder_hidden_states=text).sample)
    with pytest.raises(DeepCacheError, match="branch 2"):
        DeepCacheUNet(unet, branch=2)    # micro has two up-blocks: only branch 1 exists


def test_options_off_are_the_baseline_and_caching_stays_close(torch_model):
    base = _gen(torch_model)
    cached = _gen(torch_model, deep_cache_interval=2)
    diff = np.abs(cached - base)
    assert 0 < diff.mean() < 0.01 and diff.max() < 0.1      # a real, small approximation
    truncated = _gen(torch_model, cfg_cutoff=0.5)
    assert 0 < np.abs(truncated - base).mean() < 0.01


class CountingBackend:
    """Wraps a torch backend and records (kind, batch) of every UNet call."""

    def __init__(self, inner, caching: bool = True):
        self.inner, self.calls = inner, []
        for k in ("device", "latent_channels", "vae_scale_factor", "scaling_factor",
                  "unet_in_channels", "encode_text", "vae_decode", "vae_encode"):
            setattr(self, k, getattr(inner, k))
        if caching:
            self.require_deep_cache = inner.require_deep_cache

    def unet(self, x, t, text):
        self.calls.append(("unet", x.shape[0]))
        return self.inner.unet(x, t, text)

    def unet_full_with_cache(self, x, t, text, branch):
        self.calls.append(("full", x.shape[0]))
        return self.inner.unet_full_with_cache(x, t, text, branch)

    def unet_shallow(self, x, t, text, deep, branch):
        assert deep.shape[0] == x.shape[0] == text.shape[0]
        self.calls.append(("shallow", x.shape[0]))
        return self.inner.unet_shallow(x, t, text, deep, branch)


def test_cfg_truncation_halves_the_batch_after_the_cutoff(torch_model):
    b = CountingBackend(torch_model.backend)
    s = Sampler(b, torch_model.tokenizer, torch_model.scheduler_config,
                SamplerConfig(steps=10, cfg_cutoff=0.3))
    s.generate(PROMPTS, SEEDS)
    assert b.calls == [("unet", 4)] * 3 + [("unet", 2)] * 7
    b.calls.clear()
    s = Sampler(b, torch_model.tokenizer, torch_model.scheduler_config,
                SamplerConfig(steps=7, cfg_cutoff=0.5, deep_cache_interval=3))
    s.generate(PROMPTS, SEEDS)   # cfg for ceil(3.5) = 4 steps; full steps 0, 3, 6
    assert b.calls == [("full", 4), ("shallow", 4), ("shallow", 4), ("full", 4),
                       ("shallow", 2), ("shallow", 2), ("full", 2)]


def test_caching_needs_a_backend_that_can_run_it(torch_model):
    b = CountingBackend(torch_model.backend, caching=False)
    with pytest.raises(DeepCacheError, match="cannot run step-feature caching"):
        Sampler(b, torch_model.tokenizer, torch_model.scheduler_config,
                SamplerConfig(deep_cache_interval=2))
    for bad, match in (({"cfg_cutoff": 1.5}, "cfg-cutoff"),
                       ({"deep_cache_interval": 0}, "deep-cache-interval")):
        with pytest.raises(ValueError, match=match):
            SamplerConfig(**bad).check()


def test_job_shape_serves_both_unet_batches_and_needs_caching_engines():
    from medfake.engine.diffusion.backends.components import ModelGeometry
    g = ModelGeometry(32, 3, 4, 4, 0.18, 4, 77, 32, deep_channels=64)
    job = JobShape(4, 32, 32, guidance=True, truncated_guidance=True, deep_cache=True)
    assert job.component_batches("unet") == (4, 8)
    assert job.component_batches("unet_shallow") == (4, 8)
    assert job.component_batches("vae_decoder") == (4,)
    assert input_shapes("unet_shallow", g, 4)["deep_feature"] == (4, 64, 8, 8)

    def profile(name, lo, hi):
        return {k: [list(input_shapes(name, g, lo)[k]), list(input_shapes(name, g, hi)[k]),
                    list(input_shapes(name, g, hi)[k])] for k in input_shapes(name, g, 1)}
    comps = {n: {"profile": profile(n, 1, 8)} for n in ("text_encoder", "unet", "vae_decoder")}
    m = ExportManifest("tensorrt", "src", "h", "fp32", g, components=comps)
    assert "no step-feature caching engines" in job_misfit(m, job)
    m.components.update({n: {"profile": profile(n, 1, 8)} for n in ("unet_deep", "unet_shallow")})
    assert job_misfit(m, job) is None
    m.components["unet_shallow"]["profile"] = profile("unet_shallow", 1, 4)   # not 2N
    assert "unet_shallow" in job_misfit(m, job)


def test_synth_options_are_the_jobs_identity(micro, small_world, tmp_path):
    from medfake.engine.synth.plan import PlanMismatchError
    from medfake.pipelines.synth import SynthConfig, synthesize
    _, hospital = small_world

    def cfg(out, **kw):
        return SynthConfig(model_dir=str(micro), real_dataset=str(hospital), out_dir=str(out),
                           per_class=1, steps=3, batch_size=3, backend="torch", **kw)
    synthesize(cfg(tmp_path / "base"))
    plan = json.loads((tmp_path / "base" / "synth_plan.json").read_text())
    assert not {"cfg_cutoff", "deep_cache_interval"} & set(plan)   # old plans keep their id
    out = synthesize(cfg(tmp_path / "fast", cfg_cutoff=0.5, deep_cache_interval=2))
    plan = json.loads((out / "synth_plan.json").read_text())
    assert plan["cfg_cutoff"] == 0.5 and plan["deep_cache_interval"] == 2
    assert plan["deep_cache_branch"] == 1
    with pytest.raises(PlanMismatchError, match="deep_cache_interval"):
        synthesize(cfg(tmp_path / "fast", cfg_cutoff=0.5, deep_cache_interval=3))
    with pytest.raises(ValueError, match="cfg-cutoff"):
        synthesize(cfg(tmp_path / "bad", cfg_cutoff=2.0))
    assert not (tmp_path / "bad").exists()
