"""Attention dispatch for the PyTorch path of diffusers models (UNet, VAE).

Three implementations, all diffusers attention processors set through ``model.set_attn_processor``:

- ``"xformers"``: xformers ``memory_efficient_attention`` (``XFormersAttnProcessor``); CUDA only.
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (``AttnProcessor2_0``); runs
  everywhere, picks flash / memory-efficient / math kernels itself, and exports to ONNX.
- ``"math"``: the reference ``softmax(Q K^T / sqrt(d)) V`` as separate ``baddbmm``, ``softmax``
  and ``bmm`` ops (``AttnProcessor``), so FLOP counters see every matmul; also exportable.

``"auto"`` means xformers on CUDA when the package imports, SDPA otherwise. ONNX/TensorRT export
must wrap the trace in :func:`exportable_attention`, which swaps in an exportable processor and
restores whatever was set before. The stock diffusers processors are reused rather than rewritten:
they own the pre/post steps (group norm, spatial norm, residual, rescale), so the three kinds
differ only in the attention core.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch
from torch import nn

log = logging.getLogger(__name__)

AttentionKind = Literal["auto", "xformers", "sdpa", "math"]
KINDS: tuple[str, ...] = get_args(AttentionKind)
EXPORTABLE_KINDS = ("sdpa", "math")


@functools.lru_cache(maxsize=1)
def xformers_status() -> tuple[bool, str]:
    """(importable, reason): whether the xformers package imports, and why not if it does not."""
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build raising at import time
        return False, (f"the xformers package is not usable ({type(exc).__name__}: {exc}); "
                       "install it with `pip install xformers` (extra `medfake[xformers]`, only "
                       "with the torch its wheel was built for)")
    return True, "xformers imports"


def _as_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def resolve_attention(kind: AttentionKind, device: str | torch.device | None = None) -> str:
    """The concrete kind (``xformers``/``sdpa``/``math``) to use for ``kind`` on ``device``.

    ``auto`` is xformers when ``device`` is CUDA (and CUDA works) and xformers imports, else
    sdpa. Asking for ``xformers`` where it cannot run raises RuntimeError naming every missing
    piece; an unknown kind raises ValueError.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(KINDS)}")
    dev = _as_device(device)
    on_cuda = dev.type == "cuda" and torch.cuda.is_available()
    xf_ok, xf_reason = xformers_status()
    if kind == "auto":
        return "xformers" if on_cuda and xf_ok else "sdpa"
    if kind == "xformers" and not (on_cuda and xf_ok):
        missing = []
        if not on_cuda:
            why = ("torch.cuda.is_available() is False" if dev.type == "cuda"
                   else f"got device {dev}")
            missing.append(f"a CUDA device ({why})")
        if not xf_ok:
            missing.append(xf_reason)
        raise RuntimeError("xformers attention needs " + " and ".join(missing)
                           + "; use --attention sdpa (or auto) on this machine")
    return kind


def make_processor(kind: str):
    """A fresh diffusers attention processor for a concrete kind (not ``auto``)."""
    from diffusers.models.attention_processor import (AttnProcessor, AttnProcessor2_0,
                                                      XFormersAttnProcessor)

    if kind == "xformers":
        import diffusers.models.attention_processor as ap

        if ap.xformers is None:  # diffusers decides once, when it is first imported
            raise RuntimeError("diffusers did not detect xformers when it was imported; "
                               "install xformers before starting medfake")
        return XFormersAttnProcessor()
    if kind == "sdpa":
        return AttnProcessor2_0()
    if kind == "math":
        return AttnProcessor()
    raise ValueError(f"no processor for attention kind {kind!r}; choose xformers, sdpa or math")


def _processor_kind(proc) -> str:
    from diffusers.models.attention_processor import (AttnProcessor, AttnProcessor2_0,
                                                      XFormersAttnProcessor)

    for cls, kind in ((XFormersAttnProcessor, "xformers"), (AttnProcessor2_0, "sdpa"),
                      (AttnProcessor, "math")):
        if type(proc) is cls:
            return kind
    return f"other:{type(proc).__name__}"


def _require_processors(model: nn.Module) -> None:
    if not hasattr(model, "set_attn_processor") or not hasattr(model, "attn_processors"):
        raise TypeError(f"{type(model).__name__} has no diffusers attention processors; "
                        "apply_attention works on diffusers models such as UNet2DConditionModel "
                        "and AutoencoderKL")


def attention_kinds(model: nn.Module) -> dict[str, int]:
    """How many attention modules of ``model`` use each kind, e.g. ``{"sdpa": 7}``.

    Kinds outside this module's three show as ``other:<ProcessorClass>``; a model without
    attention modules (e.g. a VAE built with ``mid_block_add_attention=False``) gives ``{}``.
    """
    _require_processors(model)
    counts: dict[str, int] = {}
    for proc in model.attn_processors.values():
        kind = _processor_kind(proc)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def apply_attention(model: nn.Module, kind: AttentionKind = "auto") -> str:
    """Set every attention module of the diffusers ``model`` to ``kind``; return the kind used.

    The device is taken from the model's parameters, so move the model first. Raises as
    :func:`resolve_attention` does, or TypeError for a model without attention processors.
    """
    _require_processors(model)
    used = resolve_attention(kind, _model_device(model))
    n = len(model.attn_processors)
    if n:
        model.set_attn_processor(make_processor(used))
    log.info("attention %s -> %s on %d modules of %s", kind, used, n, type(model).__name__)
    return used


def head_chunked_sdpa(sdpa: Callable[..., torch.Tensor], heads_per_chunk: int):
    """``sdpa`` (``F.scaled_dot_product_attention``'s signature) computed ``heads_per_chunk``
    heads at a time and concatenated: the same result, but a graph that materialises the
    (batch, heads, queries, keys) score tensor keeps only one chunk's scores alive at a time.

    Heads are a static dimension of each attention layer, so a traced graph holds the same
    number of chunks for every batch size and image size (a loop over the batch or the query
    axis would bake the example's sizes into an export with dynamic axes)."""
    if heads_per_chunk < 1:
        raise ValueError(f"heads_per_chunk must be >= 1, got {heads_per_chunk}")

    def chunked(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        heads = int(query.shape[1]) if not torch.jit.is_tracing() else _static(query.shape[1])
        if heads <= heads_per_chunk:
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                        is_causal=is_causal, **kw)
        outs = []
        for i in range(0, heads, heads_per_chunk):
            j = min(i + heads_per_chunk, heads)
            mask = attn_mask
            if mask is not None and mask.dim() == 4 and mask.shape[1] == heads:
                mask = mask[:, i:j]
            outs.append(sdpa(query[:, i:j], key[:, i:j], value[:, i:j], attn_mask=mask,
                             dropout_p=dropout_p, is_causal=is_causal, **kw))
        return torch.cat(outs, dim=1)
    return chunked


def _static(dim) -> int:
    """A traced tensor's static dimension as an int, without the tracer's warning (heads are
    fixed by the layer, so the trace is right for every input)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(dim)


class _FunctionalWithSDPA:
    """``torch.nn.functional`` with ``scaled_dot_product_attention`` replaced."""

    def __init__(self, sdpa) -> None:
        self.scaled_dot_product_attention = sdpa

    def __getattr__(self, name: str):
        return getattr(torch.nn.functional, name)


def head_chunked_processor(heads_per_chunk: int):
    """The stock ``AttnProcessor2_0`` (diffusers keeps the pre/post steps: norms, residual,
    rescale) whose attention core is :func:`head_chunked_sdpa`. For exports only: while it
    runs it points the diffusers attention module's ``F`` at a copy with the chunked SDPA,
    which a trace (single-threaded) tolerates and concurrent eager use would not."""
    from diffusers.models import attention_processor as ap

    class HeadChunkedAttnProcessor(ap.AttnProcessor2_0):
        def __init__(self) -> None:
            super().__init__()
            self.heads_per_chunk = heads_per_chunk
            self._functional = _FunctionalWithSDPA(head_chunked_sdpa(
                torch.nn.functional.scaled_dot_product_attention, heads_per_chunk))

        def __call__(self, *args, **kwargs):
            saved = ap.F
            ap.F = self._functional
            try:
                return super().__call__(*args, **kwargs)
            finally:
                ap.F = saved

    return HeadChunkedAttnProcessor()


@contextlib.contextmanager
def exportable_attention(model: nn.Module, kind: str = "sdpa",
                         heads_per_chunk: int = 0) -> Iterator[str]:
    """Within the block every attention module of ``model`` uses an exportable kind.

    ``kind`` is ``sdpa`` (a single op that opset 23 maps to the ONNX ``Attention`` op and older
    opsets decompose) or ``math`` (plain MatMul/Softmax). ``heads_per_chunk`` > 0 (``sdpa``
    only) computes attention that many heads at a time (:func:`head_chunked_sdpa`), so a
    runtime that materialises the score tensor (ONNX Runtime on CPU) holds one chunk's scores
    instead of all heads' at once. The previous processors, whatever they were, are restored on
    exit, also when the block raises. Yields the kind in effect.
    """
    if kind not in EXPORTABLE_KINDS:
        raise ValueError(f"attention kind {kind!r} is not exportable; use one of "
                         f"{', '.join(EXPORTABLE_KINDS)}")
    if heads_per_chunk and kind != "sdpa":
        raise ValueError("heads_per_chunk needs attention kind sdpa")
    _require_processors(model)
    saved = dict(model.attn_processors)
    if saved:
        model.set_attn_processor(head_chunked_processor(heads_per_chunk) if heads_per_chunk
                                 else make_processor(kind))
    try:
        yield kind
    finally:
        if saved:
            model.set_attn_processor(dict(saved))  # set_attn_processor consumes the dict it gets
