"""The fixed plan of a synthesis job: which samples exist, in which shard, on which rank.

A job is identified by its parameters (everything that changes an image) and planned as a list
of *segments*. A segment adds ``count[c]`` samples to class ``c``, numbered from ``start[c]``;
its samples are interleaved across classes (round ``j`` holds sample ``start[c] + j`` of every
class that still has one), so every shard holds a class mix, and it is cut into shards of
``samples_per_shard`` starting at shard ``first_shard``. ``--extend`` appends a segment after
the last shard, so finished shards stay valid. Sample ``i`` of class ``name`` has key
``syn_{name}_{i:06d}``, prompt ``templates[name][i % len]`` and seed ``derive_seed(seed, key)``:
nothing depends on ranks, batches or resumes. Shard contents are computed on demand, so memory
does not grow with the size of the job.

The plan is stored in ``synth_plan.json`` (job parameters + ``segments``), created once
atomically by whichever rank comes first; every other rank checks it is asking for the same job.
Ranks take a static share of the shards (``i % world_size == rank``): no coordinator.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..core.seeding import derive_seed
from .files import create_once, json_bytes, replace_if_different

PLAN_FILE = "synth_plan.json"
QUANTITY_KEYS = ("per_class", "per_real")   # may grow with --extend
SEED_RANGE = 1 << 62


class PlanMismatchError(ValueError):
    """The output directory holds a job planned with other parameters."""


def sample_key(class_name: str, index: int) -> str:
    return f"syn_{class_name}_{index:06d}"


def sample_seed(job_seed: int, key: str) -> int:
    return derive_seed(job_seed, key) % SEED_RANGE


@dataclass(frozen=True)
class PlannedSample:
    key: str
    cls: int
    index: int        # the sample's number within its class
    prompt: str
    seed: int


@dataclass(frozen=True)
class Segment:
    """``count[c]`` samples of class ``c`` numbered from ``start[c]``, from shard ``first_shard``."""

    first_shard: int
    start: tuple[int, ...]
    count: tuple[int, ...]

    @property
    def n_samples(self) -> int:
        return sum(self.count)

    def n_shards(self, per_shard: int) -> int:
        return -(-self.n_samples // per_shard)

    def _before_round(self, j: int) -> int:
        return sum(min(n, j) for n in self.count)

    def iter_from(self, pos: int) -> Iterator[tuple[int, int]]:
        """``(class, index)`` of this segment's samples from position ``pos`` on."""
        lo, hi = 0, max(self.count, default=0)
        while lo < hi:   # the round holding position pos: last j with _before_round(j) <= pos
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._before_round(mid) <= pos else (lo, mid - 1)
        j, skip = lo, pos - self._before_round(lo)
        while j < max(self.count, default=0):
            for c, n in enumerate(self.count):
                if j < n:
                    if skip:
                        skip -= 1
                        continue
                    yield c, self.start[c] + j
            j += 1


class SynthPlan:
    """A job's parameters and segments; shard ``i``'s samples via ``shard_samples(i)``."""

    def __init__(self, params: Mapping[str, Any], segments: list[Segment]):
        self.params = dict(params)
        self.segments = list(segments)
        self.class_names: list[str] = list(self.params["class_names"])
        self.samples_per_shard = int(self.params["samples_per_shard"])
        self.seed = int(self.params["seed"])
        self._templates = self.params.get("prompt_templates") or {}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SynthPlan":
        segs = [Segment(s["first_shard"], tuple(s["start"]), tuple(s["count"]))
                for s in d["segments"]]
        return cls({k: v for k, v in d.items() if k != "segments"}, segs)

    def to_json(self) -> dict[str, Any]:
        return {**self.params, "segments": [asdict(s) for s in self.segments]}

    @property
    def n_shards(self) -> int:
        last = self.segments[-1]
        return last.first_shard + last.n_shards(self.samples_per_shard)

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.segments)

    def totals(self) -> tuple[int, ...]:
        """Planned samples per class."""
        last = self.segments[-1]
        return tuple(s + n for s, n in zip(last.start, last.count))

    def prompt(self, cls: int, index: int) -> str:
        name = self.class_names[cls]
        options = self._templates.get(name) or [f"a medical image of {name}"]
        return options[index % len(options)]

    def sample(self, cls: int, index: int) -> PlannedSample:
        key = sample_key(self.class_names[cls], index)
        return PlannedSample(key, cls, index, self.prompt(cls, index), sample_seed(self.seed, key))

    def _locate(self, shard: int) -> tuple[Segment, int, int]:
        """(segment, first position in it, number of samples) of ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"shard {shard} outside the plan's 0..{self.n_shards - 1}")
        seg = next(s for s in reversed(self.segments) if s.first_shard <= shard)
        pos = (shard - seg.first_shard) * self.samples_per_shard
        return seg, pos, min(self.samples_per_shard, seg.n_samples - pos)

    def shard_size(self, shard: int) -> int:
        return self._locate(shard)[2]

    def shard_samples(self, shard: int) -> list[PlannedSample]:
        seg, pos, n = self._locate(shard)
        out = []
        for c, i in seg.iter_from(pos):
            out.append(self.sample(c, i))
            if len(out) == n:
                break
        return out

    def shard_keys(self, shard: int) -> list[str]:
        """The keys of ``shard`` (what ``shard_samples`` holds, without prompts and seeds)."""
        seg, pos, n = self._locate(shard)
        names, out = self.class_names, []
        for c, i in seg.iter_from(pos):
            out.append(sample_key(names[c], i))
            if len(out) == n:
                break
        return out

    def rank_shards(self, rank: int, world_size: int) -> list[int]:
        """The static share of rank ``rank``: shards ``i`` with ``i % world_size == rank``."""
        return list(range(rank, self.n_shards, world_size))


# Recorded in the plan but not part of the job's identity: where the model and the real data
# were read from (``lineage``, what the memorization audit compares with). A moved model dir
# with the same weights is the same job.
NON_IDENTITY_KEYS = ("segments", "lineage")


def _identity(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in (*QUANTITY_KEYS, *NON_IDENTITY_KEYS)}


def _describe_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    short = lambda v: (s if len(s := json.dumps(v)) <= 40 else s[:37] + "...")  # noqa: E731
    return ", ".join(f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in keys)


def read_plan_file(out: Path) -> dict[str, Any]:
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no {PLAN_FILE}: it is not a `medfake synth` output "
                                f"directory (or no rank has started yet).")
    return json.loads(path.read_text())


def claim_plan_file(out: Path, job: Mapping[str, Any]) -> None:
    """Store ``job`` in ``out/synth_plan.json`` (atomic create) or check it equals the stored one.

    For generators whose job has no segments (GAN sampling, classic augmentation)."""
    out = Path(out)
    if create_once(out / PLAN_FILE, json_bytes(dict(job))):
        return
    old = read_plan_file(out)
    if old != dict(job):
        raise PlanMismatchError(
            f"{out} already holds a synthesis job with different parameters "
            f"({_describe_diff(old, job)}). Use a new --out directory, or re-run with the "
            f"original parameters to resume.")


def open_plan(out: Path, params: Mapping[str, Any], counts: tuple[int, ...],
              extend: bool = False) -> SynthPlan:
    """The job's plan in ``out``: created if absent, checked against ``params`` if present,
    grown by a segment of ``counts - planned`` when ``extend`` and more samples are asked for.

    Raises ``PlanMismatchError`` for other parameters, or more samples without ``extend``,
    or fewer samples than planned."""
    out = Path(out)
    fresh = SynthPlan(params, [Segment(0, (0,) * len(counts), tuple(counts))])
    if sum(counts) == 0:
        raise ValueError("the job plans no samples: check --per-class / --per-real and that the "
                         "real dataset's train split has images of every class")
    if create_once(out / PLAN_FILE, json_bytes(fresh.to_json())):
        return fresh
    stored = read_plan_file(out)
    if "segments" not in stored or _identity(stored) != _identity(params):
        raise PlanMismatchError(
            f"{out} already holds a synthesis job with different parameters "
            f"({_describe_diff(_identity(stored), _identity(params))}). Use a new --out "
            f"directory, or re-run with the original parameters to resume.")
    old = SynthPlan.from_json(stored)
    planned = old.totals()
    if tuple(counts) == planned:
        return old
    fewer = [old.class_names[c] for c, (n, p) in enumerate(zip(counts, planned)) if n < p]
    if fewer:
        raise PlanMismatchError(
            f"{out} already plans more samples of {', '.join(fewer)} ({dict(zip(old.class_names, planned))})"
            f" than asked for ({dict(zip(old.class_names, counts))}); finished shards are never "
            f"removed. Ask for at least the planned counts, or use a new --out directory.")
    if not extend:
        raise PlanMismatchError(
            f"{out} holds a job of {old.n_samples} samples ({dict(zip(old.class_names, planned))});"
            f" you asked for {sum(counts)} ({dict(zip(old.class_names, counts))}). Re-run with "
            f"--extend to add the difference as new shards after the existing ones (same "
            f"parameters, finished shards stay valid), or use a new --out directory.")
    grown = SynthPlan(params, old.segments + [Segment(
        old.n_shards, planned, tuple(n - p for n, p in zip(counts, planned)))])
    replace_if_different(out / PLAN_FILE, json_bytes(grown.to_json()))
    return grown


# ----------------------------------------------------------------------------- ranks

@dataclass(frozen=True)
class RankInfo:
    """This process's share of the job. ``source``: cli, torchrun/env, slurm, slurm-array, single."""

    rank: int
    world_size: int
    source: str


def _env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    if key not in env:
        if default is None:
            raise ValueError(f"environment variable {key} is required but not set")
        return default
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task, count = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    first, step = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0), _env_int(env, "SLURM_ARRAY_TASK_STEP", 1)
    index, rest = divmod(task - first, step)
    if rest or not 0 <= index < count:
        raise ValueError(f"SLURM array task {task} (min {first}, step {step}, count {count}) does "
                         f"not map to a rank 0..{count - 1}; use a regular array such as "
                         f"--array=0-{count - 1}, or pass --rank/--world-size")
    return index, count


def resolve_rank(rank: int | None = None, world_size: int | None = None,
                 environ: Mapping[str, str] | None = None) -> RankInfo:
    """``--rank/--world-size`` if given; else the launcher's environment: torchrun (``RANK``,
    ``WORLD_SIZE``) or an srun step (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``), combined
    with a SLURM array (``SLURM_ARRAY_TASK_ID``/``_COUNT``, ``_MIN``, ``_STEP``) when both are
    present (array task a, process p of w: rank a*w + p); else rank 0 of 1."""
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError("--rank and --world-size go together")
        info = RankInfo(int(rank), int(world_size), "cli")
    else:
        from ..core.distributed import detect_env
        env = dict(os.environ if environ is None else environ)
        inner = detect_env(env)
        array = _slurm_array(env)
        if array is None:
            info = (RankInfo(inner.rank, inner.world_size, inner.launcher)
                    if inner.launcher != "none" else RankInfo(0, 1, "single"))
        elif inner.launcher == "none":
            info = RankInfo(array[0], array[1], "slurm-array")
        else:
            info = RankInfo(array[0] * inner.world_size + inner.rank,
                            array[1] * inner.world_size, f"slurm-array+{inner.launcher}")
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"rank {info.rank} is outside 0..{info.world_size - 1} (world size "
                         f"{info.world_size}, from {info.source})")
    return info


def plan_samples(cfg, class_names: list[str], templates: dict[str, list[str]]) -> list[dict]:
    """The ordered samples of a ``per_class`` job as dicts (key, cls, prompt, seed), with the
    same keys and seeds as ``medfake synth`` (used by the GAN and classic generators)."""
    plan = []
    for i in range(cfg.per_class):  # classes interleaved: every shard holds a class mix
        for cls, name in enumerate(class_names):
            prompts = templates.get(name) or [f"a medical image of {name}"]
            key = sample_key(name, i)
            plan.append({"key": key, "cls": cls, "prompt": prompts[i % len(prompts)],
                         "seed": sample_seed(cfg.seed, key)})
    return plan


def check_plan(out: Path, job: dict) -> None:
    """Store or check a generator's job in ``out/synth_plan.json`` (see ``claim_plan_file``)."""
    claim_plan_file(Path(out), job)
