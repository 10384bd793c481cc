"""Mass synthesis building blocks: the plan (keys, seeds, ranks), modes, real-image sources,
the shard pool, curation, status and the synthesis file protocol.

Public names are exported lazily (PEP 562): ``from medfake.engine.synth import X`` imports
only the module that defines X, so the CLI stays fast to start.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchGenerator": "modes",
    "ClipScoreFilter": "curation",
    "Conditioning": "modes",
    "Curate": "shard_pool",
    "CurationConfig": "curation",
    "Curator": "curation",
    "JobStatus": "status",
    "LESION_FIELDS": "sources",
    "MEMORIZATION_SPACES": "curation",
    "MODES": "modes",
    "MemorizationGuard": "curation",
    "ModeConfig": "modes",
    "PLAN_FILE": "plan",
    "PlanMismatchError": "plan",
    "PlannedSample": "plan",
    "PoolStats": "shard_pool",
    "QUANTITY_KEYS": "plan",
    "RankInfo": "plan",
    "RealIndex": "sources",
    "SEED_RANGE": "plan",
    "SPLIT": "status",
    "Segment": "plan",
    "ShardPool": "shard_pool",
    "ShardState": "status",
    "ShardWriter": "shard_pool",
    "SynthPlan": "plan",
    "build_curator": "curation",
    "check_plan": "plan",
    "claim_plan_file": "plan",
    "create_once": "files",
    "dataset_info": "status",
    "encode_sample": "shard_pool",
    "finalize": "status",
    "job_status": "status",
    "json_bytes": "files",
    "json_safe": "modes",
    "load_plan": "status",
    "open_plan": "plan",
    "plan_samples": "plan",
    "read_plan_file": "plan",
    "remove_corrupt": "status",
    "replace_if_different": "files",
    "resolve_rank": "plan",
    "sample_key": "plan",
    "sample_seed": "plan",
    "shard_state": "status",
    "split_fingerprint": "sources",
    "stray_temporaries": "files",
    "tar_header": "shard_pool",
    "temp_name": "files",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
