"""DreamBooth: weights change, the output loads in stock diffusers, the learned tokens reach the
provenance of synthesized samples, a killed run resumes exactly, LoRA loads through diffusers'
own loader, and the inpainting UNet trains with masks."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.core.safe_load import load_checkpoint
from medfake.engine.diffusion.sd_model import init_model
from medfake.engine.training.accel import Precision, make_adamw
from medfake.pipelines.dreambooth import DreamBoothConfig, TrainingStopped, finetune_dreambooth
from medfake.pipelines.synth import SynthConfig, synthesize

FAST = dict(k=2, num_class_images=2, class_image_steps=2, class_image_batch=3, steps=4,
            batch_size=2, checkpoint_every=2)
UNET = "unet/diffusion_pytorch_model.safetensors"
TEXT = "text_encoder/model.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("db") / "base", seed=0)


def _changed(a, b, rel: str) -> bool:
    x, y = load_file(a / rel), load_file(b / rel)
    return any(not torch.equal(x[k], y[k]) for k in x)


def test_finetune_loads_in_diffusers_and_tokens_reach_provenance(base, small_world, tmp_path):
    _, hospital = small_world
    cfg = DreamBoothConfig(**FAST)
    out = finetune_dreambooth(base, hospital, tmp_path / "db", cfg)
    assert _changed(base, out, UNET) and not _changed(base, out, TEXT)
    prompts = json.loads((out / "medfake_prompts.json").read_text())
    assert prompts["tokens"] == {"cyst": "sks", "metastasis": "ohwx", "hemangioma": "phol"}
    assert prompts["prompt_templates"]["cyst"][0] == "a CT image of a liver cyst sks"
    assert DatasetInfo.load(out / "class_images").count("train") == 3 * 2

    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a CT image of a liver metastasis ohwx", height=32, width=32,
               num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 32, 32, 3) and np.isfinite(img).all()

    syn = load_split(synthesize(SynthConfig(model_dir=str(out), real_dataset=str(hospital),
                                            out_dir=str(tmp_path / "syn"), per_class=1,
                                            steps=2, backend="torch")), "train")
    for meta, caption in zip(syn.metas, syn.captions):
        token = prompts["tokens"][meta["class_name"]]
        assert meta["identifier_token"] == token and caption == meta["prompt"]
        assert caption.split()[-1] == token

    stamp = (out / UNET).stat().st_mtime_ns
    finetune_dreambooth(base, hospital, out, cfg)  # finished: returned as is
    assert (out / UNET).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"different parameters \(lr\)"):
        finetune_dreambooth(base, hospital, out, DreamBoothConfig(**{**FAST, "lr": 1e-3}))


def test_resume_after_kill_equals_uninterrupted_run(base, small_world, tmp_path, caplog):
    _, hospital = small_world
    cfg = DreamBoothConfig(**{**FAST, "steps": 5, "train_text_encoder": True})
    ref = finetune_dreambooth(base, hospital, tmp_path / "ref", cfg)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped):
        finetune_dreambooth(base, hospital, run, cfg, stop_after=3)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    prior_shard = (run / "class_images" / "train-000000.tar").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medfake.pipelines.dreambooth"):
        finetune_dreambooth(base, hospital, run, cfg)
    assert "resuming DreamBooth at step 2" in caplog.text
    assert (run / "class_images" / "train-000000.tar").stat().st_mtime_ns == prior_shard
    assert not (run / "checkpoint.pt").exists()
    for rel in (UNET, TEXT):
        assert not _changed(ref, run, rel), rel
    assert _changed(base, run, TEXT)  # the text encoder was trained
    marker = lambda d: json.loads((d / "medfake_dreambooth.json").read_text())["losses"]  # noqa: E731
    assert marker(ref) == marker(run)


def test_lora_loads_with_stock_load_lora_weights_and_equals_fused_dir(base, small_world, tmp_path):
    _, hospital = small_world
    cfg = DreamBoothConfig(**{**FAST, "steps": 3, "lora_rank": 4, "train_text_encoder": True,
                              "lr": 1e-2, "prior_preservation": False})
    out = finetune_dreambooth(base, hospital, tmp_path / "lora", cfg)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()

    def latents(pipe) -> torch.Tensor:
        pipe.set_progress_bar_config(disable=True)
        return pipe("a CT image of a liver cyst sks", height=32, width=32, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images

    fused = latents(StableDiffusionPipeline.from_pretrained(out))
    stock = StableDiffusionPipeline.from_pretrained(base)
    plain = latents(stock)
    stock.load_lora_weights(out / "lora")
    assert torch.allclose(latents(stock), fused, atol=1e-4)
    assert not torch.allclose(plain, fused, atol=1e-3)


def test_inpainting_unet_trains_with_masks(small_world, tmp_path):
    _, hospital = small_world
    base = init_model("tiny-inpaint", tmp_path / "base")
    cfg = DreamBoothConfig(**{**FAST, "steps": 2, "gradient_checkpointing": True})
    out = finetune_dreambooth(base, hospital, tmp_path / "db", cfg)
    assert _changed(base, out, UNET)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a CT image of a liver cyst sks", image=Image.new("RGB", (32, 32)),
               mask_image=Image.new("L", (32, 32), 255), height=32, width=32,
               num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 32, 32, 3)


def test_gpu_only_options_and_bad_tokens_fail_clearly(base, small_world, tmp_path):
    _, hospital = small_world
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="8-bit Adam.*CUDA"):
        make_adamw([torch.nn.Parameter(torch.zeros(1))], 1e-3, eight_bit=True, device=cpu)
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU"):
        Precision("fp16", cpu)
    with pytest.raises(ValueError, match="8-bit Adam"):
        finetune_dreambooth(base, hospital, tmp_path / "x",
                            DreamBoothConfig(**FAST, use_8bit_adam=True, device="cpu"))
    with pytest.raises(ValueError, match="3 classes need 3 identifier tokens"):
        finetune_dreambooth(base, hospital, tmp_path / "x", DreamBoothConfig(**FAST, tokens=("sks",)))
    assert not (tmp_path / "x").exists()  # a refused call claims nothing
