"""Measurements cached per machine: what a short calibration found, kept so it runs once.

Choices that depend on speed or memory (which backend, how many streams, threads, batch) are
made from measurements, never from a preset tuned elsewhere. A measurement is only valid on the
machine and software it was taken on, for the model it was taken with, so its cache key is

    (kind, model hash, ``machine_id()``, caller's key dict)

and it lives at ``<cache>/measured/<kind>/<sha of the key>.json`` (``$MEDFAKE_CACHE``), written
atomically (a concurrent writer never leaves half a file; the last complete one wins, which is
fine for two measurements of the same thing). A corrupt or foreign entry reads as missing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from functools import lru_cache
from typing import Any

from .atomic import atomic_write_json
from .paths import cache_dir

log = logging.getLogger(__name__)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def machine_id() -> dict[str, Any]:
    """What makes a speed/memory measurement specific to this machine and software: CPU model,
    usable cores, total memory (GiB), GPU names, and the versions of the runtimes that run the
    networks. Two farm nodes of the same type share it; an upgraded runtime does not."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        mem_gib = None
    gpus: list[str] = []
    try:
        import torch
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA install is "no GPU" for a cache key
        gpus = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": _cpu_model(), "cores": cores, "mem_gib": mem_gib, "gpus": gpus,
            "runtimes": {d: version(d) for d in ("torch", "onnxruntime", "onnxruntime-gpu",
                                                  "openvino", "tensorrt")}}


def _path(kind: str, model_hash: str, key: dict[str, Any]):
    full = {"kind": kind, "model": model_hash, "machine": machine_id(), "key": key}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir("measured", kind) / f"{digest}.json", full


def load_measured(kind: str, model_hash: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached result for this (kind, model, machine, key), or None (never measured here,
    or the entry is unreadable / was written for a different key)."""
    path, full = _path(kind, model_hash, key)
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("id") != full:
        log.warning("ignoring measurement cache entry %s: not written for this key", path)
        return None
    return entry.get("result")


def save_measured(kind: str, model_hash: str, key: dict[str, Any],
                  result: dict[str, Any]) -> None:
    """Cache ``result`` (JSON-able) for this (kind, model, machine, key)."""
    path, full = _path(kind, model_hash, key)
    atomic_write_json(path, {"id": full, "result": result})
