"""Single-file Stable Diffusion checkpoints (original LDM layout) to diffusers directories, offline.

Most users download a model as one ``*.safetensors`` or ``*.ckpt`` file in the original
CompVis/Stability layout (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*``). ``convert_single_file`` turns one into a stock diffusers SD directory
with diffusers' own single-file loader (``StableDiffusionPipeline.from_single_file``), never
touching a hub: the loader is given ``config=`` a local directory of configs, either

- a diffusers model dir of the same architecture (``model_index.json`` + component configs), or
- a config-only dir that ``config_dir_from_yaml`` writes from the checkpoint's original YAML
  (``v1-inference.yaml``, ``v2-inference-v.yaml``, ...) and the checkpoint's own tensor shapes,
  with the CLIP tokenizer built from the vocabulary open_clip ships.

Contract: the output dir appears only complete (built in a temp dir, renamed into place); a
missing, truncated or foreign file, a pickle without ``trust_pickle``, or a checkpoint whose
shapes do not fit the config raises ``SingleFileError`` naming the problem and the fix.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..core.safe_load import PICKLE_SUFFIXES, UnsafeWeightsError
from ..core.trust import code_trusted
from .sd_model import check_model_dir, write_clip_tokenizer_files

SAFE_SUFFIXES = (".safetensors",)
UNET_PREFIX = "model.diffusion_model."
_SD1_TEXT = "cond_stage_model.transformer.text_model."
_SD2_TEXT = "cond_stage_model.model."


class SingleFileError(ValueError):
    """A single-file checkpoint cannot be converted; the message says why and what to do."""


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool | None = None) -> dict[str, Any]:
    """The tensors of a single-file checkpoint; SingleFileError / UnsafeWeightsError if not."""
    p = Path(path)
    if not p.is_file():
        raise SingleFileError(f"checkpoint {p} does not exist; pass the path of a *.safetensors "
                              f"or *.ckpt file")
    suffix = p.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors.torch import load_file
        try:
            sd = load_file(str(p))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise SingleFileError(f"{p} is not a readable safetensors file ({e}); it may be "
                                  f"truncated: download it again and compare its checksum") from e
    elif suffix in PICKLE_SUFFIXES:
        if not code_trusted(trust_pickle):
            raise UnsafeWeightsError(
                f"{p} is a pickle, which can run arbitrary code when loaded. Use the model's "
                f".safetensors release, or pass --trust-code if you trust its source (then it "
                f"is read with torch.load(weights_only=True)).")
        from ..core.safe_load import load_weights_file
        try:   # torch.load(weights_only=True): refuses arbitrary objects even when trusted
            sd = load_weights_file(p, trust_pickle=True)
        except Exception as e:
            raise SingleFileError(f"{p} cannot be read as a torch checkpoint ({e}); it may be "
                                  f"truncated or not a model file") from e
    else:
        raise SingleFileError(f"{p}: unsupported checkpoint format {suffix or '(no suffix)'!r}; "
                              f"expected .safetensors or .ckpt")
    while isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not any(str(k).startswith(UNET_PREFIX) for k in sd):
        raise SingleFileError(f"{p} is not a Stable Diffusion checkpoint in the original layout "
                              f"(no '{UNET_PREFIX}*' tensors). A diffusers directory needs no "
                              f"conversion: pass it as --model directly")
    return sd


def _text_encoder_config(sd: dict[str, Any], cond_params: dict[str, Any]) -> tuple[dict, str]:
    """CLIPTextConfig fields read off the checkpoint's text tower, and the tokenizer pad token."""
    if f"{_SD1_TEXT}embeddings.token_embedding.weight" in sd:
        vocab, hidden = sd[f"{_SD1_TEXT}embeddings.token_embedding.weight"].shape
        layers = 1 + max(int(m.group(1)) for k in sd
                         if (m := re.match(re.escape(_SD1_TEXT) + r"encoder\.layers\.(\d+)\.", k)))
        inter = sd[f"{_SD1_TEXT}encoder.layers.0.mlp.fc1.weight"].shape[0]
        positions = sd[f"{_SD1_TEXT}embeddings.position_embedding.weight"].shape[0]
        return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                    num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                    max_position_embeddings=positions, hidden_act="quick_gelu",
                    projection_dim=hidden), "<|endoftext|>"
    if f"{_SD2_TEXT}token_embedding.weight" in sd:
        vocab, hidden = sd[f"{_SD2_TEXT}token_embedding.weight"].shape
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(
            re.escape(_SD2_TEXT) + r"transformer\.resblocks\.(\d+)\.", k)))
        if cond_params.get("layer", "penultimate") == "penultimate":
            layers -= 1   # SD 2.x conditions on the penultimate layer; diffusers drops the last
        inter = sd[f"{_SD2_TEXT}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        positions = sd[f"{_SD2_TEXT}positional_embedding"].shape[0]
        proj = sd.get(f"{_SD2_TEXT}text_projection")
        return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                    num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                    max_position_embeddings=positions, hidden_act="gelu",
                    projection_dim=int(proj.shape[1]) if proj is not None else 512), "!"
    raise SingleFileError("the checkpoint has no CLIP text encoder (cond_stage_model.transformer "
                          "or cond_stage_model.model): convert it with --config a diffusers dir "
                          "of the same architecture")


def config_dir_from_yaml(yaml_path: str | os.PathLike, sd: dict[str, Any],
                         out_dir: str | os.PathLike) -> Path:
    """Write a config-only diffusers dir for ``sd`` from its original LDM YAML (offline)."""
    import diffusers
    from diffusers.loaders.single_file_utils import (create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm,
                                                     fetch_original_config)

    try:
        oc = fetch_original_config(str(yaml_path), local_files_only=True)
        params = oc["model"]["params"]
        unet = create_unet_diffusers_config_from_ldm(oc, sd)
        vae = create_vae_diffusers_config_from_ldm(oc, sd, scaling_factor=params.get(
            "scale_factor", 0.18215))
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise SingleFileError(f"{yaml_path} is not an original Stable Diffusion config this "
                              f"checkpoint fits ({type(e).__name__}: {e}); pass the YAML the "
                              f"checkpoint was released with, or --config a diffusers dir") from e
    text, pad = _text_encoder_config(sd, params.get("cond_stage_config", {}).get("params") or {})
    v_pred = params.get("parameterization", "eps") == "v"
    if v_pred and unet.get("sample_size", 0) >= 96:
        unet["upcast_attention"] = True   # the 768-v models, as diffusers configures them
    out = Path(out_dir)
    pipeline = "StableDiffusionInpaintPipeline" if unet["in_channels"] == 9 else \
        "StableDiffusionPipeline"
    scheduler = {"_class_name": "DDIMScheduler", "num_train_timesteps": params.get("timesteps", 1000),
                 "beta_start": params.get("linear_start", 0.00085),
                 "beta_end": params.get("linear_end", 0.012), "beta_schedule": "scaled_linear",
                 "prediction_type": "v_prediction" if v_pred else "epsilon",
                 "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    configs = {
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **unet},
        "vae/config.json": {"_class_name": "AutoencoderKL", **vae},
        "text_encoder/config.json": {"architectures": ["CLIPTextModel"], "model_type":
                                     "clip_text_model", **text},
        "scheduler/scheduler_config.json": scheduler,
        "model_index.json": {
            "_class_name": pipeline, "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
            "feature_extractor": [None, None], "requires_safety_checker": False},
    }
    for rel, cfg in configs.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(json.dumps(cfg, indent=1))
    write_clip_tokenizer_files(out / "tokenizer", text["max_position_embeddings"], pad)
    return out


def convert_single_file(checkpoint: str | os.PathLike, config: str | os.PathLike,
                        out_dir: str | os.PathLike, trust_pickle: bool | None = None) -> Path:
    """Convert ``checkpoint`` into a diffusers SD dir at ``out_dir`` (safetensors weights).

    ``config``: a diffusers model dir of the same architecture, or the original LDM YAML.
    """
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from .sd_model import add_slow_tokenizer_files

    out = Path(out_dir)
    if (out / "model_index.json").exists():
        raise SingleFileError(f"{out} already holds a model; pass a new --out directory")
    sd = read_checkpoint(checkpoint, trust_pickle)
    cfg_path = Path(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if cfg_path.is_dir():
            config_dir = check_model_dir(cfg_path)
        elif cfg_path.is_file() and cfg_path.suffix.lower() in (".yaml", ".yml"):
            config_dir = config_dir_from_yaml(cfg_path, sd, tmp / "config")
        else:
            raise SingleFileError(f"--config {cfg_path} is neither a diffusers model dir nor an "
                                  f"original *.yaml config")
        index = json.loads((Path(config_dir) / "model_index.json").read_text())
        in_ch = sd[f"{UNET_PREFIX}input_blocks.0.0.weight"].shape[1]
        cls = StableDiffusionInpaintPipeline if in_ch == 9 else StableDiffusionPipeline
        if index.get("_class_name") not in (None, cls.__name__) and in_ch == 9:
            raise SingleFileError(f"the checkpoint is an inpainting model (9-channel UNet) but "
                                  f"{cfg_path} describes a {index['_class_name']}; pass an "
                                  f"inpainting config")
        try:
            pipe = cls.from_single_file(str(checkpoint), config=str(config_dir),
                                        local_files_only=True, safety_checker=None,
                                        requires_safety_checker=False)
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            raise SingleFileError(
                f"{checkpoint} does not fit the architecture in {cfg_path} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300]}); pass --config of the model family the "
                f"checkpoint belongs to (SD 1.x and 2.x differ in text encoder and attention)"
            ) from e
        model = tmp / "model"
        pipe.save_pretrained(model, safe_serialization=True)
        add_slow_tokenizer_files(pipe.tokenizer, model / "tokenizer")
        os.rename(model, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
