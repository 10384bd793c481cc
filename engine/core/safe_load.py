"""Safe weight files: safetensors by default, pickles only when the user says so.

Contract:
- ``save_weights(state_dict, path)`` writes a ``.safetensors`` file atomically (tmp + fsync +
  rename); tensors are made contiguous and shared storage is cloned, so any state dict saves.
- ``load_weights_file(path, trust_pickle=None)`` returns a ``{name: tensor}`` dict. A
  ``.safetensors`` file loads without executing code. A pickled file (``.bin``, ``.ckpt``, ``.pt``,
  ``.pth``) raises ``UnsafeWeightsError`` unless code is trusted (``engine.core.trust``: the
  argument, else ``--trust-code``), and is then loaded with ``torch.load(weights_only=True)``,
  which refuses arbitrary objects.
- ``load_checkpoint(path)`` is for medfake's own resume checkpoints (optimizer state, RNG
  states): ``torch.load(weights_only=True)``; these are written by medfake, never downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from .atomic import fsync_dir
from .errors import UntrustedCodeError
from .trust import TRUST_FLAG, code_trusted

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class UnsafeWeightsError(UntrustedCodeError):
    """A pickled weights file was given without ``--trust-code``."""


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``state_dict`` as safetensors at ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def load_weights_file(path: str | os.PathLike,
                      trust_pickle: bool | None = None) -> dict[str, torch.Tensor]:
    """Load a weights file as a state dict, refusing pickles unless trusted (None: the
    process-wide ``--trust-code``, see ``engine.core.trust``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in PICKLE_SUFFIXES or not _is_safetensors(path):
        if not code_trusted(trust_pickle):
            raise UnsafeWeightsError(
                f"{path} is a pickled weights file, which can run arbitrary code when loaded. "
                f"Convert it to .safetensors, or pass {TRUST_FLAG} if you trust its source "
                f"(it is then loaded with torch.load(weights_only=True)).")
        sd: Any = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
        return dict(sd)
    return load_file(str(path))


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load one of medfake's own resume checkpoints (tensors, dicts, numbers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file (8-byte header length + JSON)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"
