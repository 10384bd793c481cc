"""Synthesis: the loop matches stock diffusers, shards carry provenance, re-runs resume exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.diffusion.inpainting import MaskSpec, mask_geometry, render_mask
from medfake.engine.diffusion.sampler import Sampler, SamplerConfig, TorchBackend, make_scheduler
from medfake.engine.diffusion.sd_model import init_model, load_components
from medfake.engine.synth.plan import PlanMismatchError
from medfake.pipelines.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("model") / "micro", seed=0)


def test_loop_matches_stock_pipeline_and_is_batch_invariant(model_dir):
    comps = load_components(model_dir)
    cfg = SamplerConfig(scheduler="dpm++", steps=3, guidance_scale=4.0, height=32, width=32)
    sampler = Sampler(TorchBackend(comps), comps.tokenizer, comps.scheduler.config, cfg)
    prompts = ["a CT image of a liver cyst", "a CT image of a liver metastasis"]
    four = sampler.generate(prompts * 2, [1, 2, 3, 4])
    two = sampler.generate(prompts, [3, 4])
    assert four.shape == (4, 32, 32, 3) and four.dtype == np.uint8
    assert np.abs(four[2:].astype(int) - two.astype(int)).max() <= 1

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompts, height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
               latents=sampler.initial_latents([3, 4]), output_type="np").images
    assert np.abs((ref * 255).round().astype(int) - two.astype(int)).max() <= 1


@pytest.mark.parametrize("g", [0.0, 0.5, 1.0, 4.0])
def test_guidance_semantics_equal_diffusers(model_dir, g):
    """CFG only when guidance > 1 (diffusers' rule); below 1 the image is the conditional one,
    never one made from the negative prompt."""
    comps = load_components(model_dir)
    cfg = SamplerConfig(scheduler="dpm++", steps=3, guidance_scale=g, height=32, width=32,
                        negative_prompt="noise")
    sampler = Sampler(TorchBackend(comps), comps.tokenizer, comps.scheduler.config, cfg)
    prompts = ["a CT image of a liver cyst"]
    ours = sampler.generate(prompts, [5])
    pipe = comps.pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompts, negative_prompt=["noise"], height=32, width=32, num_inference_steps=3,
               guidance_scale=g, latents=sampler.initial_latents([5]), output_type="np").images
    assert np.abs((ref * 255).round().astype(int) - ours.astype(int)).max() <= 1


def test_unknown_scheduler_is_a_clear_error(model_dir):
    with pytest.raises(ValueError, match="unknown scheduler 'nope'.*ddim"):
        make_scheduler("nope", {})


def _cfg(model_dir, hospital, out, **kw):
    base = dict(model_dir=str(model_dir), real_dataset=str(hospital), out_dir=str(out),
                per_class=3, steps=2, samples_per_shard=4, batch_size=3, backend="torch")
    return SynthConfig(**{**base, **kw})


def test_synth_writes_shards_with_provenance_and_resumes(model_dir, small_world, tmp_path):
    _, hospital = small_world
    out = synthesize(_cfg(model_dir, hospital, tmp_path / "syn"))
    info = DatasetInfo.load(out)
    assert info.splits["train"]["count"] == 9 and len(info.shard_paths("train")) == 3
    assert info.channels == 1 and info.verify() == []
    arr = load_split(out, "train")
    assert arr.images.shape == (9, 32, 32)
    meta = arr.metas[0]
    for field in ("model_hash", "prompt", "seed", "scheduler", "steps", "guidance_scale"):
        assert field in meta
    assert arr.captions[0] == meta["prompt"] and meta["source"] == "synthetic"

    # Kill-and-resume: remove a finished shard; a re-run rewrites only it, byte-identical,
    # whatever the batch size.
    shard = out / "train-000001.tar"
    original = shard.read_bytes()
    untouched = (out / "train-000000.tar").stat().st_mtime_ns
    shard.unlink()
    synthesize(_cfg(model_dir, hospital, tmp_path / "syn", batch_size=2))
    assert shard.read_bytes() == original
    assert (out / "train-000000.tar").stat().st_mtime_ns == untouched


def test_changed_parameters_are_refused(model_dir, small_world, tmp_path):
    _, hospital = small_world
    synthesize(_cfg(model_dir, hospital, tmp_path / "syn", per_class=1))
    with pytest.raises(PlanMismatchError, match="guidance_scale"):
        synthesize(_cfg(model_dir, hospital, tmp_path / "syn", per_class=1, guidance_scale=7.0))
    plan = json.loads((tmp_path / "syn" / "synth_plan.json").read_text())
    assert plan["guidance_scale"] == 4.0


def _inputs(n=2, size=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.stack([render_mask(mask_geometry(MaskSpec(), size, size, rng), size, size)
                      for _ in range(n)])
    return ["a CT image of a liver cyst", "a CT image of a liver metastasis"][:n], images, masks


def _stock_inpaint(comps, sampler, prompts, images, masks, **kw):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image
    pipe = StableDiffusionInpaintPipeline(
        vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
        unet=comps.unet, scheduler=DPMSolverMultistepScheduler.from_config(comps.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompts, image=[Image.fromarray(i) for i in images],
                mask_image=[Image.fromarray((m * 255).astype(np.uint8)) for m in masks],
                height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
                latents=sampler.initial_latents([1, 2]), output_type="np", **kw).images


@pytest.fixture(scope="module")
def inpaint_model_dir(tmp_path_factory):
    return init_model("tiny-inpaint", tmp_path_factory.mktemp("model") / "inpaint", seed=0)


def test_conditioned_sampling_matches_stock_inpaint_pipeline(model_dir, inpaint_model_dir,
                                                             monkeypatch):
    """9-channel UNet: masked-image latents as extra input; 4-channel UNet: latent blending
    with the noised original; both as diffusers' StableDiffusionInpaintPipeline."""
    import torch
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as P
    prompts, images, masks = _inputs()
    cfg = SamplerConfig(scheduler="dpm++", steps=3, guidance_scale=4.0, height=32, width=32)
    for path in (inpaint_model_dir, model_dir):
        comps = load_components(path)
        sampler = Sampler(TorchBackend(comps), comps.tokenizer, comps.scheduler.config, cfg)
        ours = sampler.generate_conditioned(prompts, [1, 2], images, masks, output="float",
                                            keep_known=False)
        x = torch.from_numpy(images).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        if comps.unet.config.in_channels == 9:   # hand the pipeline our (mean) latents
            kw = {"masked_image_latents": sampler.encode_images(
                x * (torch.from_numpy(masks)[:, None] < 0.5))}
        else:   # the pipeline samples the VAE posterior; ours takes its mean
            orig = P.retrieve_latents
            monkeypatch.setattr(P, "retrieve_latents", lambda out, generator=None,
                                sample_mode="sample": orig(out, generator, "argmax"))
            kw = {}
        ref = _stock_inpaint(comps, sampler, prompts, images, masks, **kw)
        assert np.abs(ref - ours).max() < 1e-4
        kept = sampler.generate_conditioned(prompts, [1, 2], images, masks)
        assert np.array_equal(kept[masks < 0.5], images[masks < 0.5])
        assert not np.array_equal(kept[masks >= 0.5], images[masks >= 0.5])


def test_conditioned_sampling_on_onnx_runtime(inpaint_model_dir):
    from medfake.pipelines.models import load_model
    prompts, images, masks = _inputs()
    cfg = SamplerConfig(scheduler="euler-a", steps=3, guidance_scale=4.0, height=32, width=32)
    out = [load_model(str(inpaint_model_dir), b, **kw).sampler(cfg).generate_conditioned(
        prompts, [1, 2], images, masks, output="float", keep_known=False)
        for b, kw in (("onnx", {"threads": 1}), ("torch", {}))]
    assert np.abs(out[0] - out[1]).max() < 1e-3
