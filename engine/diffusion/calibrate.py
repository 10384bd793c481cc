"""Streams x threads per stream x batch size for a synthesis job, from a short measurement.

What is fastest depends on the model, the image size and the machine: on 2 cores the tiny
preset runs fastest as 2 single-thread streams, while at SD 1.5 size a one-batch job on 2
streams took 1.8x the time of one stream (issue 21). So the choice is measured, not preset:

1. Candidates: ``s`` streams (1 .. min(threads, ``MAX_AUTO_STREAMS``)) of ``threads // s``
   intra-op threads each (all threads always used), times image batches (``BATCHES`` up to the
   largest shard). A candidate's *round time* is the wall time of ``s`` concurrent UNet calls
   at that batch (doubled under classifier-free guidance), one per stream, on one model shared
   by the streams -- the way the job runs it.
2. Measurement (``calibrate``): per thread count one UNet built by ``make_unet(threads)``,
   one warm-up round, then rounds until ``MIN_MEASURE_S`` or ``MAX_ROUNDS``. Bounded: the first
   candidate (1 stream, all threads, the smallest batch) is always measured; in all,
   calibration takes ``budget_fraction`` of the job's predicted UNet time, at least
   ``min_budget_s`` (cheap settings of a small model are all measured) and at most ``budget_s``,
   and a candidate whose predicted cost (measured cost scaled linearly with the batch) does
   not fit is skipped. Larger batches are not tried once per-image time failed to improve by
   3% twice in a row. A round's time is the fastest of its repeats (load only adds time).
3. Cache: the round times are stored with ``engine.core.measured`` (kind ``calibration``, per
   model hash, machine and the caller's key: backend, size, guidance, threads), so a model is
   measured once per machine; a later job measures only candidates missing from the table.
4. Choice (``choose``): the candidate with the least predicted job time
   ``ceil(batches / s) x round`` where ``batches`` is the sum over the job's shards of
   ``ceil(shard / batch)``: a stream with no batch left in the last round idles (the tail),
   and a partial batch is charged as a full one (conservative). Never more streams than the
   job has batches. Candidates within ``TIE_TOLERANCE`` of the least count as tied and the
   largest batch among them wins: the per-batch work outside the UNet is not measured and
   only favours larger batches.

The measurement is of UNet calls only: the text encoder and VAE run once per batch, the UNet
once per step, so at any real step count it is the UNet that decides.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..core.measured import load_measured, save_measured
from .streams import MAX_AUTO_STREAMS

log = logging.getLogger(__name__)

BATCHES = (1, 2, 4, 8, 16)
MIN_MEASURE_S = 0.2      # timed rounds per candidate last at least this long ...
MAX_ROUNDS = 8           # ... or this many rounds
KIND = "calibration"
MIN_BUDGET_S = 3.0       # a small job may still spend this much (once per model and machine)
TIE_TOLERANCE = 0.05     # predictions this close count as equal: the larger batch wins

# make_unet(threads) -> run(batch): one UNet call at ``batch`` images on a model whose kernels
# use ``threads`` intra-op threads; ``run`` must be safe to call from several threads at once.
UnetFactory = Callable[[int], Callable[[int], Any]]


@dataclass(frozen=True)
class Setting:
    """``streams`` concurrent streams of ``threads`` intra-op threads each, ``batch`` images per
    sampler call."""

    streams: int
    threads: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.streams}x{self.threads}xb{self.batch}"

    @classmethod
    def parse(cls, label: str) -> Setting:
        s, t, b = label.split("x")
        return cls(int(s), int(t), int(b[1:]))


@dataclass(frozen=True)
class Choice:
    """The chosen setting, the job time it is predicted to take, and why (for the log)."""

    setting: Setting
    predicted_s: float
    why: str


def job_batches(shard_sizes: Iterable[int], batch: int) -> int:
    """Sampler calls of a job whose shards hold ``shard_sizes`` samples (batches never span
    shards)."""
    return sum(-(-n // batch) for n in shard_sizes)


def predict(setting: Setting, round_s: float, shard_sizes: list[int]) -> float:
    """Predicted UNet wall time of the job per denoising step: ``ceil(batches / streams)``
    rounds of ``round_s`` each (the tail round costs a full round)."""
    return math.ceil(job_batches(shard_sizes, setting.batch) / setting.streams) * round_s


def candidates(threads: int, shard_sizes: list[int], max_streams: int = MAX_AUTO_STREAMS,
               batch: int | None = None, streams: int | None = None) -> list[Setting]:
    """Settings worth measuring for this job, in measuring order (per stream count, batch
    ascending): batches up to the largest shard, never more streams than the job's batches.
    ``batch`` / ``streams``: fixed by the user (only the other is chosen)."""
    biggest = max(shard_sizes, default=1)
    batches = [b for b in BATCHES if b <= biggest] or [1]
    if biggest not in batches and biggest < BATCHES[-1]:
        batches.append(biggest)     # a shard of 3: batch 3 is one call per shard
    if batch is not None:
        batches = [batch]
    counts = [streams] if streams is not None else range(1, max(1, min(threads, max_streams)) + 1)
    out = []
    for s in counts:
        for b in sorted(batches):
            if s == 1 or streams is not None or s <= job_batches(shard_sizes, b):
                out.append(Setting(s, max(1, threads // s), b))
    return out


def choose(table: dict[str, float], shard_sizes: list[int], threads: int,
           max_streams: int = MAX_AUTO_STREAMS, batch: int | None = None,
           streams: int | None = None) -> Choice | None:
    """The measured setting (``table``: label -> round seconds) with the least predicted job
    time for these shards and this thread total; None when none applies."""
    allowed = set(candidates(threads, shard_sizes, max_streams, batch, streams))
    usable = [(Setting.parse(k), v) for k, v in table.items()]
    usable = [(s, v) for s, v in usable if s in allowed]
    if not usable:
        return None
    ranked = sorted(((predict(s, v, shard_sizes), s) for s, v in usable),
                    key=lambda p: (p[0], p[1].streams, -p[1].batch))
    # near-ties go to the larger batch (then fewer streams): what calibration does not measure
    # -- text encoder, VAE decode, scheduler and shard encoding, once per batch -- only
    # ever favours fewer, larger batches, and a few % is within a round's noise
    near = [p for p in ranked if p[0] <= ranked[0][0] * (1 + TIE_TOLERANCE)]
    best_t, best = min(near, key=lambda p: (-p[1].batch, p[1].streams, p[0]))
    ranked = [(best_t, best)] + [p for p in ranked if p[1] != best]
    n = sum(shard_sizes)
    others = "; ".join(f"{s.label} {t:.3g} s" for t, s in ranked[1:4])
    why = (f"calibrated: {best.streams} stream(s) x {best.threads} thread(s), batch {best.batch}"
           f" predicted {best_t:.3g} s of UNet per step for {n} image(s) in "
           f"{job_batches(shard_sizes, best.batch)} batch(es)"
           + (f" (next best: {others})" if others else ""))
    return Choice(best, best_t, why)


def run_round(run: Callable[[int], Any], streams: int, batch: int) -> None:
    """One round: ``streams`` threads each making one ``run(batch)`` call at once (the first
    error is re-raised here)."""
    if streams == 1:
        run(batch)
        return
    errors: list[BaseException] = []

    def go():
        try:
            run(batch)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            errors.append(e)
    ts = [threading.Thread(target=go) for _ in range(streams)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def measure_round(run: Callable[[int], Any], streams: int, batch: int,
                  timer: Callable[[], float] = time.perf_counter) -> float:
    """Seconds for one round (``run_round``). One warm-up round, then rounds until
    ``MIN_MEASURE_S`` or ``MAX_ROUNDS``; the fastest round counts (on a shared machine other
    work only ever slows a round down)."""
    def one_round() -> None:
        run_round(run, streams, batch)

    one_round()   # warm-up: first-call allocations and lazy initialisation
    best, start = float("inf"), timer()
    for _ in range(MAX_ROUNDS):
        t = timer()
        one_round()
        now = timer()
        best = min(best, now - t)   # the fastest round: other load only ever adds time
        if now - start >= MIN_MEASURE_S:
            break
    return best


def calibrate(make_unet: UnetFactory, shard_sizes: list[int], threads: int, model_hash: str,
              key: dict[str, Any], *, budget_s: float = 120.0, budget_fraction: float = 0.1,
              min_budget_s: float = MIN_BUDGET_S,
              steps: int = 20, timer: Callable[[], float] = time.perf_counter,
              max_streams: int = MAX_AUTO_STREAMS, batch: int | None = None,
              streams: int | None = None) -> Choice:
    """Measure (what is not cached yet, within the time bound of the module doc) and choose.
    ``key``: what besides model and machine the round times depend on (backend, image size,
    guidance); ``threads``: the job's thread total; ``steps``: UNet calls per batch (for the
    job-time prediction that sets the budget); ``batch`` / ``streams``: fixed by the user."""
    key = {**key, "threads": threads}
    table: dict[str, float] = dict((load_measured(KIND, model_hash, key) or {}).get("rounds", {}))
    cands = candidates(threads, shard_sizes, max_streams, batch, streams)
    todo = [c for c in cands if c.label not in table]
    cached = len(cands) - len(todo)
    start, deadline, measured_now = timer(), None, 0
    known = choose(table, shard_sizes, threads, max_streams, batch, streams)
    if known is not None:   # a partly cached table sets the budget before anything runs
        deadline = start + _budget(budget_s, budget_fraction * known.predicted_s * steps,
                                   min_budget_s)
    groups: dict[tuple[int, int], list[Setting]] = {}
    for c in todo:
        groups.setdefault((c.threads, c.streams), []).append(c)
    run, run_threads = None, None
    try:
        # 1 stream x all threads first; one model per thread count, released before the next
        for (n_threads, _), group in sorted(groups.items(), key=lambda g: (-g[0][0], g[0][1])):
            if run_threads != n_threads:
                run, run_threads = None, None
            last: tuple[int, float] | None = None   # (batch, round s) measured in this group
            stalls = 0
            for c in group:
                if deadline is not None:
                    left = deadline - timer()
                    ref = last or _nearest(table, c)
                    cost = (ref[1] * c.batch / ref[0] if ref else 0.0) * 2  # warm-up + a round
                    if cost > left:
                        log.info("calibration: skipping %s (about %.3g s, %.3g s left)",
                                 c.label, cost, max(left, 0.0))
                        continue
                if run is None:
                    run, run_threads = make_unet(n_threads), n_threads
                t = measure_round(run, c.streams, c.batch, timer)
                table[c.label] = t
                measured_now += 1
                if deadline is None:   # the first measurement sets the budget
                    job_s = predict(c, t, shard_sizes) * steps
                    deadline = start + _budget(budget_s, budget_fraction * job_s, min_budget_s)
                stalls = stalls + 1 if last is not None and (
                    t / c.batch >= 0.97 * (last[1] / last[0])) else 0
                last = (c.batch, t)
                if stalls >= 2:
                    break   # per-image time stopped improving twice: larger batches won't help
    finally:
        run = None
        if measured_now:
            save_measured(KIND, model_hash, key, {"rounds": table})
    choice = choose(table, shard_sizes, threads, max_streams, batch, streams)
    if choice is None:   # unreachable: the first candidate is always measured
        raise RuntimeError("calibration measured nothing")
    source = (f"measured {measured_now} setting(s) in {timer() - start:.1f} s"
              + (f", {cached} cached" if cached else "")) if measured_now else (
        f"{cached} setting(s) cached for this model and machine")
    return Choice(choice.setting, choice.predicted_s, f"{choice.why}; {source}")


def _budget(cap: float, share: float, floor: float) -> float:
    """Seconds calibration may take: the job's share, at least ``floor``, at most ``cap``."""
    return min(cap, max(share, floor))


def _nearest(table: dict[str, float], c: Setting) -> tuple[int, float] | None:
    """(batch, round s) of a measured setting like ``c`` (the same stream count first, then
    the closest batch), to predict what measuring ``c`` costs."""
    known = [(Setting.parse(k), v) for k, v in table.items()]
    if not known:
        return None
    s, v = min(known, key=lambda sv: (sv[0].streams != c.streams, abs(sv[0].batch - c.batch)))
    return s.batch, v
