"""The dataset format and everything on it: format (samples, shards, checksums), writer,
reader, the phantom world, k-shot subsets, image augmentation.

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

_EXPORTS = {
    "CLASS_NAMES": "phantoms",
    "DatasetError": "format",
    "DatasetInfo": "reader",
    "DatasetWriter": "writer",
    "DomainStyle": "phantoms",
    "FORMAT": "format",
    "HOSPITAL": "phantoms",
    "IMAGE_EXTS": "format",
    "PROMPT_TEMPLATES": "phantoms",
    "PUBLIC": "phantoms",
    "PhantomConfig": "phantom_config",
    "RandomGamma": "augmentation",
    "SHARD_RE": "format",
    "SKIP_REASONS": "reader",
    "Sample": "format",
    "SampleValidator": "reader",
    "ShardRecord": "format",
    "SkipLog": "reader",
    "SplitArrays": "format",
    "WARPS": "augmentation",
    "augmentation": "augmentation",
    "decode_png": "format",
    "encode_image": "format",
    "encode_png": "format",
    "finalize_dataset": "writer",
    "image_member": "format",
    "image_transforms": "augmentation",
    "iter_samples": "reader",
    "iter_shard_tolerant": "reader",
    "iter_tar_samples": "reader",
    "kshot_subset": "kshot",
    "list_shards": "writer",
    "load_split": "reader",
    "split_patients": "reader",
    "make_phantom_world": "phantoms",
    "render_lesion": "phantoms",
    "shard_name": "format",
    "write_shard": "writer",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
