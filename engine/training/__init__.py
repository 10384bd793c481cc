"""Training plumbing shared by every trainer: precision, optimizers, checkpoints (accel),
throughput telemetry, deliberate stops for tests.

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

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
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
