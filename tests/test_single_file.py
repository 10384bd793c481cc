"""Single-file checkpoints (original LDM layout) -> diffusers dirs, offline, with clear errors.

The checkpoints are written by the test from random models (tests/ldm_layout.py); a conversion
must give back every tensor exactly."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medfake.engine.core.safe_load import UnsafeWeightsError
from medfake.engine.diffusion.sd_model import (ModelDirError, SDComponents, build_clip_tokenizer,
                                               init_model, load_components, save_components)
from medfake.engine.diffusion.single_file import SingleFileError, convert_single_file
from medfake.pipelines.cli import main

from ldm_layout import ldm_yaml, to_ldm_state_dict


def _same_weights(a: SDComponents, b: SDComponents) -> None:
    for part in ("unet", "vae", "text_encoder"):
        x, y = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert x.keys() == y.keys(), part
        bad = [k for k in x if not torch.equal(x[k], y[k])]
        assert not bad, f"{part}: {bad[:3]}"


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    model = init_model("micro", root / "micro", seed=3)
    ckpt = root / "micro.safetensors"
    save_file(to_ldm_state_dict(load_components(model)), str(ckpt))
    return model, ckpt


def test_convert_with_a_diffusers_config_dir_round_trips_exactly(micro, tmp_path, capsys):
    model, ckpt = micro
    main(["model", "convert", str(ckpt), "--config", str(model), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    _same_weights(load_components(model), load_components(tmp_path / "out"))
    assert not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written left behind


def _ldm_shaped_components() -> SDComponents:
    """A small model every field of which an original LDM YAML can express (int head count,
    32 norm groups, VAE mid attention), so the YAML route can be checked exactly."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=2, cross_attention_dim=64)
    vae = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.5)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=1,
                                        max_position_embeddings=77, projection_dim=64,
                                        hidden_act="quick_gelu")).eval()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return SDComponents(unet, vae, text, build_clip_tokenizer(77), sched)


def test_convert_with_the_original_yaml_offline(tmp_path, monkeypatch):
    from medfake.engine.diffusion.sampler import Sampler, SamplerConfig, TorchBackend
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    comps = _ldm_shaped_components()
    ref = save_components(comps, tmp_path / "ref")
    ckpt = tmp_path / "model.safetensors"
    save_file(to_ldm_state_dict(comps), str(ckpt))
    yaml = tmp_path / "v1-inference.yaml"
    yaml.write_text(ldm_yaml(comps.unet.config, comps.vae.config, 0.5))
    out = convert_single_file(ckpt, yaml, tmp_path / "out")
    conv = load_components(out)
    _same_weights(load_components(ref), conv)
    assert conv.vae.config.scaling_factor == 0.5
    cfg = SamplerConfig(scheduler="ddim", steps=2, height=32, width=32)
    img = Sampler(TorchBackend(conv), conv.tokenizer, conv.scheduler.config, cfg).generate(
        ["a CT image"], [0])
    assert img.shape == (1, 32, 32, 3)


def test_bad_checkpoints_get_one_clear_error(micro, tmp_path):
    model, ckpt = micro
    with pytest.raises(SingleFileError, match="does not exist"):
        convert_single_file(tmp_path / "nope.safetensors", model, tmp_path / "a")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(SingleFileError, match="truncated"):
        convert_single_file(cut, model, tmp_path / "b")
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": to_ldm_state_dict(load_components(model))}, pickled)
    with pytest.raises(UnsafeWeightsError, match="--trust-code"):
        convert_single_file(pickled, model, tmp_path / "c")
    _same_weights(load_components(model),
                  load_components(convert_single_file(pickled, model, tmp_path / "c",
                                                      trust_pickle=True)))
    other = init_model("tiny", tmp_path / "tiny")  # another architecture
    with pytest.raises(SingleFileError, match="does not fit the architecture"):
        convert_single_file(ckpt, other, tmp_path / "d")
    not_sd = tmp_path / "lora.safetensors"
    save_file({"lora.down.weight": torch.zeros(2, 2)}, str(not_sd))
    with pytest.raises(SingleFileError, match="not a Stable Diffusion checkpoint"):
        convert_single_file(not_sd, model, tmp_path / "e")
    with pytest.raises(SingleFileError, match="neither a diffusers model dir"):
        convert_single_file(ckpt, tmp_path / "missing.json", tmp_path / "f")
    for d in "abdef":
        assert not (tmp_path / d).exists()


def test_a_single_file_given_as_model_names_the_convert_command(micro, small_world, tmp_path,
                                                                capsys):
    _, ckpt = micro
    with pytest.raises(ModelDirError, match="medfake model convert"):
        load_components(ckpt)
    _, hospital = small_world
    with pytest.raises(SystemExit) as e:
        main(["synth", "--model", str(ckpt), "--real", str(hospital), "--out",
              str(tmp_path / "syn"), "--per-class", "1", "--backend", "torch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "medfake model convert" in err
