"""Step-feature caching in the style of DeepCache (Ma, Fang, Wang, "DeepCache: Accelerating
Diffusion Models for Free", CVPR 2024): the deep features of a UNet change slowly between
adjacent denoising steps, so a *full* step runs the whole UNet and keeps the feature entering
its shallowest up-blocks, and the following *shallow* steps run only the shallow path
(``conv_in``, the time embedding, the first ``branch`` down-blocks, the last ``branch``
up-blocks fed with the cached feature, ``conv_out``).

``DeepCacheUNet`` wraps a diffusers ``UNet2DConditionModel`` (it owns no weights):

- ``full(sample, t, text) -> (eps, deep)``: ``eps`` is the stock UNet's output (same modules,
  same operations in the same order: bit-identical to ``unet(sample, t, text).sample``) and
  ``deep`` the output of ``up_blocks[-branch - 1]`` (B, C_deep, h', w');
- ``shallow(sample, t, text, deep) -> eps``: the shallow path with ``deep`` in place of the
  deep path's output.

``branch`` (1 .. len(up_blocks) - 1) is how many shallow levels run on a cached step: 1 (the
paper's default and the cheapest) runs only the outermost level. The two passes are also the
two graphs an ONNX export with ``--deep-cache`` holds (``FullWithCacheGraph``,
``ShallowGraph`` in ``backends.components``).

Supported: the UNet configurations Stable Diffusion 1.x/2.x and medfake's presets use (no
class or added embeddings, no attention masks, no ControlNet/adapter residuals); other
configurations are refused with one error at construction.
"""
from __future__ import annotations

import torch
from torch import nn


class DeepCacheError(ValueError):
    """Step-feature caching cannot run with this model, backend or export (message: the fix)."""


def deep_channels(unet_config, branch: int = 1) -> int:
    """Channels of the cached deep feature: the output of ``up_blocks[-branch - 1]``."""
    chans = list(unet_config.block_out_channels)
    return int(chans[branch])


def check_branch(n_up_blocks: int, branch: int) -> None:
    if not 1 <= branch < n_up_blocks:
        raise DeepCacheError(f"deep cache branch {branch} must be between 1 and "
                             f"{n_up_blocks - 1} (the UNet has {n_up_blocks} up-blocks)")


class DeepCacheUNet(nn.Module):
    """The full-with-cache and shallow passes of ``unet`` (see the module doc)."""

    def __init__(self, unet: nn.Module, branch: int = 1):
        super().__init__()
        c = unet.config
        unsupported = [k for k in ("class_embed_type", "addition_embed_type",
                                   "num_class_embeds", "encoder_hid_dim_type")
                       if getattr(c, k, None) is not None]
        if unsupported or getattr(unet, "class_embedding", None) is not None:
            raise DeepCacheError(f"step-feature caching does not support UNets with "
                                 f"{', '.join(unsupported) or 'class embeddings'}; run without "
                                 f"--deep-cache-interval")
        check_branch(len(unet.up_blocks), branch)
        self.unet, self.branch = unet, branch
        # residuals the shallow up-blocks consume: the first ones down_block_res_samples holds
        self.n_shallow_res = sum(len(b.resnets) for b in unet.up_blocks[-branch:])

    # -- shared pieces (the stock forward's first lines, in its order) ---------------------

    def _embed(self, sample, timestep, text):
        u = self.unet
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        t_emb = u.get_time_embed(sample=sample, timestep=timestep)
        emb = u.time_embedding(t_emb, None)
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        text = u.process_encoder_hidden_states(encoder_hidden_states=text,
                                               added_cond_kwargs=None)
        return u.conv_in(sample), emb, text

    @staticmethod
    def _down(block, sample, emb, text):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, encoder_hidden_states=text,
                         attention_mask=None, cross_attention_kwargs=None,
                         encoder_attention_mask=None)
        return block(hidden_states=sample, temb=emb)

    @staticmethod
    def _up(block, sample, emb, text, res, upsample_size):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                         encoder_hidden_states=text, cross_attention_kwargs=None,
                         upsample_size=upsample_size, attention_mask=None,
                         encoder_attention_mask=None)
        return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                     upsample_size=upsample_size)

    def _forward_upsample_size(self, sample) -> bool:
        f = 2 ** self.unet.num_upsamplers
        return any(d % f != 0 for d in sample.shape[-2:])

    def _run_up(self, blocks, first_index, sample, emb, text, res_samples, fwd_size):
        """``blocks`` = ``up_blocks[first_index:]``, consuming ``res_samples`` from its end;
        returns the final hidden state and the output of each block."""
        u, upsample_size, outs = self.unet, None, []
        for j, block in enumerate(blocks):
            is_final = first_index + j == len(u.up_blocks) - 1
            res = res_samples[-len(block.resnets):]
            res_samples = res_samples[:-len(block.resnets)]
            if not is_final and fwd_size:
                upsample_size = res_samples[-1].shape[2:]
            sample = self._up(block, sample, emb, text, res, upsample_size)
            outs.append(sample)
        return sample, outs

    def _out(self, sample):
        u = self.unet
        if u.conv_norm_out:
            sample = u.conv_norm_out(sample)
            sample = u.conv_act(sample)
        return u.conv_out(sample)

    # -- the two passes --------------------------------------------------------------------

    def full(self, sample: torch.Tensor, timestep, text: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stock UNet's output and the deep feature entering ``up_blocks[-branch]``."""
        u = self.unet
        fwd_size = self._forward_upsample_size(sample)
        h, emb, text = self._embed(sample, timestep, text)
        res_samples = (h,)
        for block in u.down_blocks:
            h, res = self._down(block, h, emb, text)
            res_samples += res
        if u.mid_block is not None:
            if getattr(u.mid_block, "has_cross_attention", False):
                h = u.mid_block(h, emb, encoder_hidden_states=text, attention_mask=None,
                                cross_attention_kwargs=None, encoder_attention_mask=None)
            else:
                h = u.mid_block(h, emb)
        h, outs = self._run_up(u.up_blocks, 0, h, emb, text, res_samples, fwd_size)
        return self._out(h), outs[len(u.up_blocks) - self.branch - 1]

    def shallow(self, sample: torch.Tensor, timestep, text: torch.Tensor,
                deep: torch.Tensor) -> torch.Tensor:
        """The UNet's output with the deep path replaced by the cached feature ``deep``."""
        u, b = self.unet, self.branch
        fwd_size = self._forward_upsample_size(sample)
        h, emb, text = self._embed(sample, timestep, text)
        res_samples = (h,)
        for block in u.down_blocks[:b]:
            h, res = self._down(block, h, emb, text)
            res_samples += res
        res_samples = res_samples[:self.n_shallow_res]
        n = len(u.up_blocks)
        h, _ = self._run_up(u.up_blocks[n - b:], n - b, deep.to(h.dtype), emb, text,
                            res_samples, fwd_size)
        return self._out(h)
