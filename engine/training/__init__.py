"""Training plumbing shared by every trainer: precision, optimizers, checkpoints (accel),
throughput telemetry, deliberate stops for tests.

Public names are exported lazily (PEP 562): ``from medfake.engine.training import X`` imports
only the module that defines X, so the CLI stays fast to start.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "JSONL_NAME": "telemetry",
    "MIXED_PRECISION": "accel",
    "Precision": "accel",
    "TB_DIR": "telemetry",
    "Telemetry": "telemetry",
    "TrainingStopped": "stop",
    "atomic_torch_save": "accel",
    "claim_output_dir": "accel",
    "make_adamw": "accel",
    "require_8bit_adam": "accel",
    "resolve_device": "accel",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
