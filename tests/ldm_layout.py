"""Test helper: write a diffusers SD 1.x model as a single-file checkpoint in the original LDM
layout, so the single-file converter is tested on a file the test itself made (no download).

This is the inverse of the layout rules diffusers' single-file loader reads
(``model.diffusion_model.input_blocks.{1 + i*(L+1) + j}.0`` for down block i, resnet j, ...).
It is checked by round trip: converting its output back must give the original tensors exactly.
"""
from __future__ import annotations

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_ATTN = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
             ("to_out.0.", "proj_out."))


def _sub(key: str, old: str, new: str) -> str | None:
    return new + key[len(old):] if key.startswith(old) else None


def unet_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    L, n = config["layers_per_block"], len(config["block_out_channels"])
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.":
                "time_embed.2.", "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.",
                "conv_out.": "out.2.",
                "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.":
                "middle_block.1.", "mid_block.resnets.1.": "middle_block.2."}
    for i in range(n):
        for j in range(L):
            b = 1 + i * (L + 1) + j
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{b}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{b}.1."
        if i < n - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (L + 1)}.0.op."
        has_attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(L + 1):
            b = i * (L + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{b}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{b}.1."
        if i < n - 1:
            prefixes[f"up_blocks.{i}.upsamplers.0.conv."] = \
                f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv."
    out = {}
    for k, v in sd.items():
        for old, new in prefixes.items():
            mapped = _sub(k, old, new)
            if mapped is None:
                continue
            if ".resnets." in old or old.startswith("mid_block.resnets"):
                head, tail = new, mapped[len(new):]
                for a, b in _RESNET:
                    if tail.startswith(a + "."):
                        tail = b + tail[len(a):]
                mapped = head + tail
            out["model.diffusion_model." + mapped] = v
            break
        else:
            raise KeyError(f"no LDM name for UNet tensor {k}")
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.",
                "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(n):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{n - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    out = {}
    for k, v in sd.items():
        mapped = k
        for old, new in prefixes.items():
            if (m := _sub(k, old, new)) is not None:
                mapped = m
                if ".mid_block.attentions." in old:
                    tail = mapped[len(new):]
                    for a, b in _VAE_ATTN:
                        if tail.startswith(a):
                            tail = b + tail[len(a):]
                    mapped = new + tail
                    if v.ndim == 2:   # LDM's attention projections are 1x1 convolutions
                        v = v[:, :, None, None]
                break
        out["first_stage_model." + mapped.replace("conv_shortcut", "nin_shortcut")] = v
    return out


def to_ldm_state_dict(comps) -> dict[str, torch.Tensor]:
    """The whole SD 1.x model (UNet, VAE, CLIP text tower) in the original single-file layout."""
    sd = unet_to_ldm(comps.unet.state_dict(), comps.unet.config)
    sd.update(vae_to_ldm(comps.vae.state_dict(), comps.vae.config))
    # The original layout wraps a transformers-4 CLIPTextModel (keys under ``text_model.``);
    # transformers 5 drops that level from the state dict.
    sd.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.")
                                                  else "text_model." + k): v
               for k, v in comps.text_encoder.state_dict().items()})
    return {k: v.contiguous().clone() for k, v in sd.items()}


def ldm_yaml(unet_cfg, vae_cfg, scale_factor: float, v_prediction: bool = False) -> str:
    """An original-style inference YAML for an SD 1.x-shaped model with an int head count."""
    mults = [c // unet_cfg["block_out_channels"][0] for c in unet_cfg["block_out_channels"]]
    attn = [2 ** i for i, t in enumerate(unet_cfg["down_block_types"]) if "CrossAttn" in t]
    vmults = [c // vae_cfg["block_out_channels"][0] for c in vae_cfg["block_out_channels"]]
    param = "\n    parameterization: v" if v_prediction else ""
    return f"""model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.012
    timesteps: 1000
    scale_factor: {scale_factor}{param}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: {unet_cfg["sample_size"]}
        in_channels: {unet_cfg["in_channels"]}
        out_channels: {unet_cfg["out_channels"]}
        model_channels: {unet_cfg["block_out_channels"][0]}
        attention_resolutions: {attn}
        num_res_blocks: {unet_cfg["layers_per_block"]}
        channel_mult: {mults}
        num_heads: {unet_cfg["attention_head_dim"]}
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: {unet_cfg["cross_attention_dim"]}
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {vae_cfg["latent_channels"]}
        ddconfig:
          double_z: true
          z_channels: {vae_cfg["latent_channels"]}
          resolution: {vae_cfg["sample_size"]}
          in_channels: {vae_cfg["in_channels"]}
          out_ch: {vae_cfg["out_channels"]}
          ch: {vae_cfg["block_out_channels"][0]}
          ch_mult: {vmults}
          num_res_blocks: {vae_cfg["layers_per_block"]}
          attn_resolutions: []
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""
