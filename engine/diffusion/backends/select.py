"""``--backend auto`` on a CPU: the fastest backend and precision that passes the quality gate,
by measurement on this machine.

Candidates (those this machine can run): ``torch/fp32``, ``onnx/fp32``, ``openvino/fp32``, and
where the CPU has native bf16 (``capabilities.cpu_bf16`` / ``openvino_bf16``) ``torch/bf16`` and
``openvino/bf16``; never bf16 on a CPU without it (emulated bf16 is slower than fp32). A
``precision`` other than ``auto`` keeps only the candidates at that precision.

For each candidate, one short measurement at the job's shape (its UNet batch, CFG doubling
included, and image size; all the given threads):

1. before loading: an estimate of its peak memory (weight files x a per-runtime factor + the
   activations); a candidate whose estimate exceeds ``MemAvailable`` is not loaded;
2. the image-difference gate (``engine.diffusion.precision_check``): ``GATE_PROMPTS`` /
   ``GATE_SEEDS`` sampled with ``GATE_STEPS`` DDIM steps at the job's size, against the
   images of the first fp32 candidate measured (the reference);
3. ``calls`` timed UNet calls after one warm-up: the median seconds per call;
4. the peak resident memory seen while it was loaded and ran (sampled every 20 ms);
5. for the runtime whose jobs run concurrent streams (ONNX Runtime) with more than one
   thread: ``calls`` timed rounds (after one warm-up) of ``threads`` concurrent
   single-thread UNet calls on the calibration probe (``unet_probe``), the way a calibrated
   job runs them; a round's time over ``threads`` is its seconds per call, and the candidate's
   time is the better of the two. Without it a small model is misjudged: on the tiny preset
   ONNX Runtime's lead is two single-thread streams (83.7 img/s on two, 40.3 on one), which a
   one-stream measurement does not see (it picked OpenVINO fp32, 0.64x end to end). This
   assumes the job has at least ``threads`` batches (a calibrated job never runs more streams
   than batches).

Results are cached per candidate with ``core.measured`` (model hash + machine + shape +
threads), so each is measured once per machine; a candidate whose measured peak exceeds the
``MemAvailable`` of the moment is passed over at every choice. The choice and its reasons are
logged and returned (``Choice.why``). Measuring costs about ``len(candidates) * (
GATE_STEPS + calls + 1)`` UNet calls, plus the stream rounds; ``worth_measuring`` says when a
job is large enough
to pay for that (callers fall back to the static order, ``onnx`` > ``torch``, below it).
"""
from __future__ import annotations

import gc
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core import capabilities as cap
from ...core.measured import load_measured, save_measured

log = logging.getLogger(__name__)

KIND = "backend_speed"
GATE_PROMPTS = ["a medical image", "a CT image of a lesion"]
GATE_SEEDS = [0, 1]
GATE_STEPS = 4
CALLS = 3
# peak memory / weight bytes while loading and running (measured on the tiny and SD 1.5-size
# presets would refine these; they only have to keep a candidate that cannot fit from loading)
LOAD_FACTOR = {"torch": 1.3, "onnx": 2.0, "openvino": 2.5}
# a job with fewer UNet calls than this many times the measurement's would spend more time
# measuring than a better choice could save
WORTH_FACTOR = 10


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


@dataclass
class Measurement:
    """One candidate's row: None fields were not measured (``excluded`` says why)."""

    candidate: Candidate
    seconds_per_call: float | None = None
    peak_bytes: int | None = None
    estimate_bytes: int | None = None
    diff: dict[str, float] | None = None
    passed: bool | None = None
    excluded: str | None = None
    cached: bool = False

    def as_result(self) -> dict[str, Any]:
        return {"seconds_per_call": self.seconds_per_call, "peak_bytes": self.peak_bytes,
                "diff": self.diff, "passed": self.passed, "excluded": self.excluded}


@dataclass
class Choice:
    backend: str
    precision: str
    why: str
    rows: list[Measurement] = field(default_factory=list)


Timer = Callable[[Candidate, Callable[[], Any]], float]


def perf_timer(candidate: Candidate, fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes (``time.perf_counter``)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def mem_available() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (None where there is none)."""
    from .memory import proc_kib_field
    return proc_kib_field("/proc/meminfo", "MemAvailable")


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakRss:
    """The largest RSS growth over the starting RSS while the block runs (sampled)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def native_bf16(backend: str) -> bool:
    return cap.openvino_bf16() if backend == "openvino" else cap.cpu_bf16().available


def candidates(precision: str = "auto") -> tuple[list[Candidate], list[str]]:
    """The CPU candidates this machine can run at ``precision`` (``auto``: both), and one
    sentence per candidate left out."""
    from . import BACKENDS
    out, skipped = [], []
    for backend in ("torch", "onnx", "openvino"):
        why = BACKENDS[backend].unavailable()
        precisions = ("fp32",) if backend == "onnx" else ("fp32", "bf16")
        for p in precisions:
            if precision not in ("auto", p):
                continue
            c = Candidate(backend, p)
            if why:
                skipped.append(f"{c.label}: {why}")
            elif p == "bf16" and not native_bf16(backend):
                skipped.append(f"{c.label}: no native bf16 on this CPU")
            else:
                out.append(c)
    if precision == "bf16" and not out:
        raise cap.CapabilityError("--backend auto --precision bf16: no backend can run bf16 "
                                  "natively on this CPU (no AVX512_BF16/AMX). Use --precision "
                                  "fp32 (or auto) here.")
    return out, skipped


def _weight_bytes(path: Path) -> int:
    exts = (".safetensors", ".bin", ".onnx", ".data", ".onnx_data", ".pt")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in exts
               or p.name.endswith("_data"))


def estimate_peak_bytes(path: str, cand: Candidate, unet_batch: int, latent_hw: tuple[int, int]
                        ) -> int:
    """Rough peak memory of ``cand`` on ``path`` before loading it: weight files x
    ``LOAD_FACTOR`` plus activations (the largest self-attention score matrix, 8 heads, and
    640-channel feature maps x 40 live tensors, fp32, at the UNet batch)."""
    tokens = latent_hw[0] * latent_hw[1]
    acts = unet_batch * 4 * (8 * tokens * tokens + 40 * 640 * tokens)
    return int(_weight_bytes(Path(path)) * LOAD_FACTOR[cand.backend]) + acts


def worth_measuring(job_unet_calls: int, n_candidates: int, calls: int = CALLS,
                    stream_candidates: int = 0) -> bool:
    """Whether a job of ``job_unet_calls`` UNet calls pays for measuring ``n_candidates``, of
    which ``stream_candidates`` also time stream rounds (each about one call's work)."""
    cost = n_candidates * (GATE_STEPS + calls + 1) + stream_candidates * (calls + 1)
    return job_unet_calls >= WORTH_FACTOR * cost


def _gate_images(model, job) -> Any:
    from ..sampler import SamplerConfig
    scfg = SamplerConfig("ddim", GATE_STEPS, 4.0 if job.guidance else 1.0, "", job.height,
                         job.width)
    return model.sampler(scfg).generate(GATE_PROMPTS, GATE_SEEDS, output="float")


def _unet_seconds(model, cand: Candidate, job, calls: int, timer: Timer) -> float:
    import torch
    b = model.backend
    f = b.vae_scale_factor
    n = job.component_batch("unet")
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(n, b.unet_in_channels, job.height // f, job.width // f, generator=g)
    ids = model.tokenizer([GATE_PROMPTS[0]] * n, padding="max_length", truncation=True,
                          max_length=model.tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    text = b.encode_text(ids)
    t = torch.tensor(500.0)
    b.unet(lat, t, text)   # warm-up (first-call allocation, lazy compilation)
    return statistics.median(timer(cand, lambda: b.unet(lat, t, text)) for _ in range(calls))


def _stream_seconds(export_dir: str, cand: Candidate, job, threads: int, calls: int,
                    timer: Timer) -> float:
    """Seconds per UNet call when ``threads`` single-thread streams call at once (step 5 of
    the module doc): the median of ``calls`` rounds after a warm-up, over ``threads``."""
    from ..calibrate import run_round
    from .ort_backend import unet_probe
    run = unet_probe(export_dir, 1, job.height, job.width, job.guidance)

    def one_round() -> None:
        run_round(run, threads, job.batch)
    one_round.streams = threads   # type: ignore[attr-defined]  # for timers that care
    one_round()   # warm-up
    return statistics.median(timer(cand, one_round) for _ in range(calls)) / threads


def _key(cand: Candidate, job, threads: int | None, calls: int) -> dict[str, Any]:
    from ..precision_check import DEFAULT_BOUND
    key = {"candidate": cand.label, "unet_batch": job.component_batch("unet"),
           "height": job.height, "width": job.width, "threads": threads, "calls": calls,
           "gate": {"steps": GATE_STEPS, "seeds": GATE_SEEDS, "prompts": GATE_PROMPTS,
                    "bound": str(DEFAULT_BOUND)}}
    if _streams_measured(cand, threads):
        key["stream_rounds"] = threads
    return key


def _streams_measured(cand: Candidate, threads: int | None) -> bool:
    from ..streams import STREAM_BACKENDS
    return cand.backend in STREAM_BACKENDS and (threads or 1) > 1


def measure(path: str, model_hash: str, cands: list[Candidate], job, *, prepare=None,
            threads: int | None = None, calls: int = CALLS, timer: Timer = perf_timer,
            available: int | None = None, allow_measure: bool = True) -> list[Measurement]:
    """One ``Measurement`` per candidate (cached ones are read, the rest measured and cached;
    see the module doc; ``allow_measure=False``: the rest stay empty rows). A candidate that
    fails to load or run is a row saying why."""
    from ..precision_check import DEFAULT_BOUND, compare_images
    from . import BACKENDS
    available = mem_available() if available is None else available
    f_lat = (job.height // 8, job.width // 8)   # SD's VAE factor (an estimate only)
    rows, reference = [], None
    todo = []
    from .manifest import MANIFEST_NAME
    is_export = (Path(path) / MANIFEST_NAME).is_file()
    for c in cands:
        if c.backend == "torch" and is_export:
            rows.append(Measurement(c, excluded="the model is an export dir; torch runs the "
                                    "diffusers dir"))
            continue
        hit = load_measured(KIND, model_hash, _key(c, job, threads, calls))
        if hit is not None and (hit.get("passed") is not None or hit.get("excluded")):
            rows.append(Measurement(c, hit.get("seconds_per_call"), hit.get("peak_bytes"),
                                    None, hit.get("diff"), hit.get("passed"),
                                    hit.get("excluded"), cached=True))
        else:
            rows.append(Measurement(c))
            todo.append(len(rows) - 1)
    if not todo or not allow_measure:
        return rows
    # the gate needs reference images: the first fp32 candidate measured now provides them
    todo.sort(key=lambda i: rows[i].candidate.precision != "fp32")
    for i in todo:
        row, c = rows[i], rows[i].candidate
        row.estimate_bytes = estimate_peak_bytes(path, c, job.component_batch("unet"), f_lat)
        if available is not None and row.estimate_bytes > available:
            row.excluded = (f"estimated peak {row.estimate_bytes / 2**30:.1f} GiB > "
                            f"{available / 2**30:.1f} GiB available")
            continue   # not cached: memory may be free next time
        log.info("--backend auto: measuring %s (%d UNet call(s) at batch %d, %dx%d)", c.label,
                 calls, job.component_batch("unet"), job.height, job.width)
        import torch
        torch_threads = torch.get_num_threads()
        if threads:   # torch computes on the process's threads, the runtimes on their own
            torch.set_num_threads(threads)
        try:
            with _PeakRss() as peak:
                model = BACKENDS[c.backend].load(path, prepare=prepare, job=job,
                                                 precision=c.precision, threads=threads)
                images = _gate_images(model, job)
                row.seconds_per_call = _unet_seconds(model, c, job, calls, timer)
                export_dir = str(getattr(model.backend, "export_dir", ""))
                del model
                gc.collect()
                if _streams_measured(c, threads):
                    row.seconds_per_call = min(row.seconds_per_call, _stream_seconds(
                        export_dir, c, job, threads, calls, timer))
            gc.collect()
        except (cap.CapabilityError, RuntimeError, ValueError, OSError, MemoryError) as e:
            # not cached: the cause (memory, a missing export) may be gone next time
            row.excluded = f"failed: {type(e).__name__}: {e}".splitlines()[0][:200]
            gc.collect()
            continue
        finally:
            torch.set_num_threads(torch_threads)
        row.peak_bytes = peak.growth
        if c.precision == "fp32" and reference is None:
            reference = images
        if reference is None:   # the fp32 rows came from the cache: make the reference now
            reference = _reference_images(path, rows, job, prepare, threads)
        if reference is None:
            row.excluded = "not gated: no fp32 reference could be sampled"
            continue
        diff = compare_images(reference, images)
        row.diff, row.passed = diff.as_dict(), diff.passes(DEFAULT_BOUND)
        save_measured(KIND, model_hash, _key(c, job, threads, calls), row.as_result())
    return rows


def _reference_images(path: str, rows: list[Measurement], job, prepare, threads):
    """The gate's images on the first fp32 candidate that loads (None if none does)."""
    from . import BACKENDS
    for r in rows:
        c = r.candidate
        if c.precision != "fp32" or (r.excluded and not r.cached):
            continue
        try:
            model = BACKENDS[c.backend].load(path, prepare=prepare, job=job, precision="fp32",
                                             threads=threads)
            images = _gate_images(model, job)
            del model
            gc.collect()
            return images
        except (cap.CapabilityError, RuntimeError, ValueError, OSError, MemoryError) as e:
            log.warning("--backend auto: %s could not sample the gate's reference: %s",
                        c.label, e)
    return None


def _row_text(r: Measurement) -> str:
    if r.excluded:
        return f"{r.candidate.label}: {r.excluded}"
    gate = ("" if r.diff is None else
            f", gate {'pass' if r.passed else 'FAIL'} (mean diff {r.diff['mean_abs']:.4f})")
    mem = "" if r.peak_bytes is None else f", peak +{r.peak_bytes / 2**20:.0f} MiB"
    return f"{r.candidate.label}: {r.seconds_per_call:.3f} s/call{gate}{mem}" + (
        " (cached)" if r.cached else "")


def choose(path: str, model_hash: str, job, *, precision: str = "auto", prepare=None,
           threads: int | None = None, calls: int = CALLS, timer: Timer = perf_timer,
           available: int | None = None, allow_measure: bool = True) -> Choice | None:
    """The fastest candidate that passed the gate and fits in memory (see the module doc);
    None when ``allow_measure`` is False and some candidate has no cached measurement."""
    cands, skipped = candidates(precision)
    rows = measure(path, model_hash, cands, job, prepare=prepare, threads=threads,
                   calls=calls, timer=timer, available=available, allow_measure=allow_measure)
    if not allow_measure and any(r.seconds_per_call is None and not r.excluded for r in rows):
        return None
    available = mem_available() if available is None else available
    ok = []
    for r in rows:
        if r.excluded or not r.passed or r.seconds_per_call is None:
            continue
        if available is not None and r.peak_bytes is not None and r.peak_bytes > available:
            r.excluded = (f"measured peak {r.peak_bytes / 2**30:.1f} GiB > "
                          f"{available / 2**30:.1f} GiB available now")
            continue
        ok.append(r)
    report = "; ".join([_row_text(r) for r in rows] + skipped)
    if not ok:
        raise cap.CapabilityError(f"--backend auto found no backend that runs this job here "
                                  f"({report}). Pick one with --backend torch|onnx|openvino.")
    best = min(ok, key=lambda r: r.seconds_per_call)
    why = (f"fastest measured of those passing the precision gate at UNet batch "
           f"{job.component_batch('unet')}, {job.height}x{job.width} ({report})")
    log.info("--backend auto: %s, %s", best.candidate.label, why)
    return Choice(best.candidate.backend, best.candidate.precision, why, rows)
