"""Foundations every other subpackage may use: cache paths, seeding, safe weight loading,
machine capabilities, distributed launch environments, atomic files.

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "CapabilityError": "capabilities",
    "DiskFullError": "atomic",
    "DistEnv": "distributed",
    "PICKLE_SUFFIXES": "safe_load",
    "Probe": "capabilities",
    "SHM_COMM_ENV": "distributed",
    "UnsafeWeightsError": "safe_load",
    "all_probes": "capabilities",
    "atomic_write": "atomic",
    "atomic_write_bytes": "atomic",
    "atomic_write_json": "atomic",
    "backend_for_device": "distributed",
    "barrier": "distributed",
    "broadcast_object": "distributed",
    "cache_dir": "paths",
    "cuda": "capabilities",
    "deepspeed": "capabilities",
    "derive_seed": "seeding",
    "destroy_process_group": "distributed",
    "detect_env": "distributed",
    "device_for": "distributed",
    "gather_floats": "distributed",
    "import_deepspeed": "distributed",
    "init_process_group": "distributed",
    "is_disk_full": "atomic",
    "load_checkpoint": "safe_load",
    "load_weights_file": "safe_load",
    "onnxruntime": "capabilities",
    "ort_providers": "capabilities",
    "prepare_deepspeed_comm": "distributed",
    "rank": "distributed",
    "require_cuda": "capabilities",
    "require_onnxruntime": "capabilities",
    "require_tensorrt": "capabilities",
    "save_weights": "safe_load",
    "seed_everything": "seeding",
    "sha256_file": "atomic",
    "tensorrt": "capabilities",
    "triton": "capabilities",
    "world_size": "distributed",
    "xformers": "capabilities",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
