"""State of a synthesis job across all its ranks, and the final ``dataset.json``.

A planned shard is *done* when its manifest and tar exist, the manifest names exactly the
shard's planned keys (written or dropped by curation) and the tar has the recorded size (the
default check: one small JSON read and one ``stat`` per shard, in parallel threads, seconds at
10^6 samples); with ``checksums`` its sha256 and tar member list are checked too (reads every
byte; parallel threads, ``hashlib`` releases the GIL). It is *missing* when no rank has
published it yet (a tar without manifest is an interrupted publish: missing), *corrupt* when it
exists but fails a check. ``finalize`` writes ``dataset.json`` once every shard is done; the
content is a pure function of the plan and the manifests, so ranks finishing at the same time
write identical bytes and the race is harmless.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..core.atomic import sha256_file
from ..data.format import FORMAT, IMAGE_EXTS, shard_name
from .files import json_bytes, live_temporaries, replace_if_different, stray_temporaries
from .plan import SynthPlan, read_plan_file

log = logging.getLogger(__name__)
SPLIT = "train"


@dataclass
class ShardState:
    index: int
    name: str
    state: str            # done | missing | corrupt
    detail: str = ""
    manifest: dict[str, Any] | None = None


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tar_member_names(tar_path: Path) -> list[str]:
    """Member names of a plain ustar/pax archive from its 512-byte headers, seeking over the
    data (``tarfile`` builds a ``TarInfo`` per member, ~10x slower). Falls back to ``tarfile``
    for anything else (GNU long names, sparse files); raises ``tarfile.TarError`` if corrupt."""
    names: list[str] = []
    with open(tar_path, "rb") as f:
        while True:
            h = f.read(tarfile.BLOCKSIZE)
            if len(h) < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("unexpected end of archive")
            if h == tarfile.NUL * tarfile.BLOCKSIZE:
                return names
            kind = h[156:157]
            if kind not in (b"0", b"\0") or h[257:262] != b"ustar":
                with tarfile.open(tar_path, "r") as tar:
                    return [m.name for m in tar]
            if tarfile.calc_chksums(h)[0] != int(h[148:156].rstrip(b" \0") or b"-1", 8):
                raise tarfile.ReadError("bad header checksum")
            size = int(h[124:136].rstrip(b" \0") or b"0", 8)
            names.append(h[:100].rstrip(b"\0").decode("utf-8", "replace"))
            f.seek(-(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, os.SEEK_CUR)


def _members_ok(tar_path: Path, keys: list[str]) -> str:
    """'' if the tar holds exactly the keys' members in order, else what is wrong."""
    try:
        names = tar_member_names(tar_path)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        return f"tar unreadable ({type(e).__name__})"
    got = [n.partition(".")[0] for n in names[::4]]
    exts = {n.partition(".")[2] for n in names}
    if got != keys or len(names) != 4 * len(keys) or not exts <= {*IMAGE_EXTS, "cls", "txt", "json"}:
        return "tar members differ from its manifest"
    return ""


def shard_state(out: Path, plan: SynthPlan, index: int, verify: bool = False,
                keys: bool = True) -> ShardState:
    """State of planned shard ``index``: manifest, planned keys (unless ``keys=False``) and
    size; ``verify`` adds the sha256 and member list (every byte read)."""
    name = shard_name(SPLIT, index)
    tar, man_path = out / name, (out / name).with_suffix(".json")
    if not man_path.exists():
        return ShardState(index, name, "missing", "tar without manifest (interrupted publish)"
                          if tar.exists() else "")
    manifest = _read_manifest(man_path)
    if manifest is None or not isinstance(manifest.get("keys"), list):
        return ShardState(index, name, "corrupt", "manifest unreadable")
    if not tar.exists():
        return ShardState(index, name, "missing", "manifest without tar (tar deleted)")
    dropped = [d.get("key") for d in manifest.get("dropped", [])]
    listed = manifest["keys"] + dropped
    if keys and (sorted(listed) != sorted(plan.shard_keys(index))
                 or len(set(listed)) != len(listed)):
        return ShardState(index, name, "corrupt", "manifest keys differ from the plan")
    if manifest.get("bytes") is not None and tar.stat().st_size != manifest["bytes"]:
        return ShardState(index, name, "corrupt", f"size {tar.stat().st_size} != "
                                                  f"{manifest['bytes']} in manifest")
    if verify:
        if sha256_file(tar) != manifest.get("sha256"):
            return ShardState(index, name, "corrupt", "sha256 mismatch")
        problem = _members_ok(tar, manifest["keys"])
        if problem:
            return ShardState(index, name, "corrupt", problem)
    return ShardState(index, name, "done", manifest=manifest)


@dataclass
class JobStatus:
    out: Path
    plan: SynthPlan
    shards: list[ShardState]
    verified: bool
    stray: list[Path] = field(default_factory=list)
    dataset_json: str = "absent"       # complete | stale | absent
    live: list[Path] = field(default_factory=list)   # temporaries of running writers

    def by_state(self, state: str) -> list[ShardState]:
        return [s for s in self.shards if s.state == state]

    @property
    def complete(self) -> bool:
        return all(s.state == "done" for s in self.shards)

    def written(self) -> int:
        return sum(s.manifest["count"] for s in self.by_state("done"))

    def drops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.by_state("done"):
            for d in s.manifest.get("dropped", []):
                out[d.get("filter", "?")] = out.get(d.get("filter", "?"), 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "planned_shards": len(self.shards),
                "planned_samples": self.plan.n_samples, "verified": self.verified,
                **{state: [s.name for s in self.by_state(state)]
                   for state in ("done", "missing", "corrupt")},
                "problems": {s.name: s.detail for s in self.shards if s.detail},
                "written_samples": self.written(), "dropped": self.drops(),
                "stray_temporaries": [p.name for p in self.stray],
                "live_temporaries": [p.name for p in self.live],
                "dataset_json": self.dataset_json, "complete": self.complete}

    def text(self, world_size: int | None = None, examples: int = 8) -> str:
        p = self.plan
        lines = [f"synth job {self.out}: mode {p.params.get('mode', 'txt2img')}, "
                 f"{p.n_samples} samples planned in {len(self.shards)} shards "
                 f"({p.samples_per_shard} per shard, {len(p.segments)} segment(s))"]
        counts = {st: len(self.by_state(st)) for st in ("done", "missing", "corrupt")}
        lines.append(f"shards: {counts['done']} done, {counts['missing']} missing, "
                     f"{counts['corrupt']} corrupt" + ("" if self.verified
                                                       else " (from manifests and sizes; "
                                                       "--checksums reads every byte)"))
        for st in ("missing", "corrupt"):
            bad = self.by_state(st)
            if bad:
                shown = ", ".join(s.name + (f" ({s.detail})" if s.detail else "")
                                  for s in bad[:examples])
                lines.append(f"  {st}: {shown}" + (f", ... {len(bad) - examples} more"
                                                   if len(bad) > examples else ""))
        if world_size:
            for r in range(world_size):
                mine = [s for s in self.shards if s.index % world_size == r]
                todo = sum(s.state != "done" for s in mine)
                lines.append(f"  rank {r}/{world_size}: {len(mine) - todo}/{len(mine)} done")
        drops = self.drops()
        lines.append(f"samples: {self.written()} written" + (
            f", {sum(drops.values())} dropped by curation ("
            + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) + ")" if drops else ""))
        if self.live:
            lines.append(f"temporary files of live writers (being written now, never delete): "
                         f"{len(self.live)}, e.g. {self.live[0].name}")
        if self.stray:
            lines.append(f"stray temporary files (interrupted writes, never read, safe to "
                         f"delete): {len(self.stray)}, e.g. {self.stray[0].name}")
        lines.append(f"dataset.json: {self.dataset_json}" + (
            "" if self.dataset_json == "complete" else
            " (written when every shard is done, by the last rank to finish or "
            "`medfake synth status OUT --finalize`)"))
        if counts["corrupt"]:
            lines.append("corrupt shards are rewritten by the job after `medfake synth status "
                         "OUT --remove-corrupt`")
        return "\n".join(lines)


def load_plan(out: Path) -> SynthPlan:
    d = read_plan_file(out)
    if "segments" not in d:
        raise ValueError(f"{out}/synth_plan.json is not a `medfake synth` plan (no segments); "
                         f"it was written by another generator")
    return SynthPlan.from_json(d)


def dataset_info(plan: SynthPlan, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``dataset.json`` of a complete job (same layout as ``dataset.finalize_dataset``)."""
    names = plan.class_names
    per_class = {c: 0 for c in names}
    shards, dropped = [], {}
    for m in manifests:
        for c, n in m["per_class"].items():
            per_class[c] += n
        shards.append({k: m[k] for k in ("name", "sha256", "count", "per_class")})
        for d in m.get("dropped", []):
            dropped[d.get("filter", "?")] = dropped.get(d.get("filter", "?"), 0) + 1
    prov: dict[str, Any] = {"generator": "diffusion", "job": plan.to_json()}
    if "dropped" in (manifests[0] if manifests else {}):
        prov["curation"] = {"dropped": sum(dropped.values()), "by_filter": dropped}
    return {"format": FORMAT, "class_names": names,
            "prompt_templates": plan.params.get("class_prompt_templates", {}),
            "image_size": int(plan.params["image_size"]),
            "channels": int(plan.params.get("channels", 1)), "provenance": prov,
            "splits": {SPLIT: {"count": sum(s["count"] for s in shards), "per_class": per_class,
                               "shards": shards}}}


def shard_states(out: Path, plan: SynthPlan, verify: bool = False, workers: int | None = None,
                 progress: bool = True, keys: bool = True) -> list[ShardState]:
    """``shard_state`` of every planned shard, read by ``workers`` threads (default: 4 x CPUs,
    at most 32: the reads are small and mostly wait on the file system), with a tqdm bar."""
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="synth-status") as pool:
        states = pool.map(lambda i: shard_state(out, plan, i, verify, keys), range(plan.n_shards),
                          chunksize=1)
        return list(tqdm(states, total=plan.n_shards, unit="shard", disable=not progress,
                         desc="status --checksums" if verify else "status", leave=False))


def job_status(out: str | Path, verify: bool = False, progress: bool = True,
               workers: int | None = None, keys: bool = True) -> JobStatus:
    """The job's state from every shard's manifest and size (``verify``: also sha256 and
    members, every byte read; ``keys=False``: manifests are not compared with the plan);
    see the module doc."""
    out = Path(out)
    plan = load_plan(out)
    shards = shard_states(out, plan, verify, workers, progress, keys)
    st = JobStatus(out, plan, shards, verify, stray_temporaries(out), live=live_temporaries(out))
    ds = out / "dataset.json"
    if ds.exists():
        want = json_bytes(dataset_info(plan, [s.manifest for s in shards])) if st.complete else b""
        st.dataset_json = "complete" if ds.read_bytes() == want else "stale"
    return st


def finalize(out: str | Path, plan: SynthPlan | None = None) -> bool:
    """Write ``dataset.json`` if every planned shard is done; True if it now describes them."""
    out = Path(out)
    plan = plan or load_plan(out)
    states = shard_states(out, plan, progress=False)
    if any(s.state != "done" for s in states):
        return False
    replace_if_different(out / "dataset.json",
                         json_bytes(dataset_info(plan, [s.manifest for s in states])))
    return True


def remove_corrupt(status: JobStatus) -> list[str]:
    """Delete corrupt shards (tar + manifest) so the next run of the job rewrites them."""
    removed = []
    for s in status.by_state("corrupt"):
        for p in (status.out / s.name, (status.out / s.name).with_suffix(".json")):
            p.unlink(missing_ok=True)
        removed.append(s.name)
    return removed


def synth_status(out: str | Path, checksums: bool = False, finalize_job: bool = False,
                 remove_corrupt_shards: bool = False, keys: bool = True,
                 progress: bool = True) -> JobStatus:
    """``medfake synth status``: the job's state from manifests and sizes (``checksums``: also
    every shard's sha256 and members; ``keys=False``: manifests not compared with the plan);
    optionally delete corrupt shards (the job rewrites them) or write ``dataset.json`` when
    every shard is done. Imports neither torch nor the backends (seconds at 10^6 samples)."""
    def status() -> JobStatus:
        return job_status(out, checksums, progress=progress, keys=keys)
    st = status()
    if remove_corrupt_shards and st.by_state("corrupt"):
        removed = remove_corrupt(st)
        log.info("removed %d corrupt shard(s): %s", len(removed), ", ".join(removed))
        st = status()
    if finalize_job and st.complete and not st.by_state("corrupt"):
        finalize(out, st.plan)
        st = status()
    return st
