"""Several denoising streams over one loaded model: batches run concurrently, results in order.

On a CPU, one ONNX Runtime session with N intra-op threads spends much of a small UNet call
synchronising its threads; N concurrent calls of one thread each keep every core busy instead
(measured: `python bench/synthesis_interleaved.py`). A stream is a ``Sampler`` (it owns the
scheduler, which is stateful) over the model's one backend: ONNX Runtime sessions and PyTorch
modules in eval mode are safe to call from several threads and both release the GIL while
computing, so the weights are loaded once.

Determinism is unchanged: a batch's images depend only on its prompts and seeds, not on which
stream ran it or what ran beside it.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_AUTO_STREAMS = 4
# CPU runtimes whose jobs run concurrent streams. Not OpenVINO: its throughput mode (several
# OpenVINO streams in one process) crashed the test process later (SIGSEGV, 2026-12-02, on an
# AVX-512 EPYC), so it runs one stream of all the threads, as before.
STREAM_BACKENDS = ("onnx",)


def resolve_streams(requested: int | None, backend: str, device: str, threads: int,
                    n_batches: int | None = None) -> int:
    """Streams for a job: ``requested`` when given (>= 1); otherwise one per thread for ONNX
    Runtime on a CPU (up to ``MAX_AUTO_STREAMS``), else 1 (a GPU is fed by one
    stream; PyTorch eager on a CPU is bound by Python, not by its threads).

    The automatic count never exceeds ``n_batches``, the job's batches when known: a stream
    without a batch idles while holding its share of the threads (measured at SD 1.5 size, a
    one-batch job on 2 streams took 1.8x the time of one stream of 2 threads)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--streams must be >= 1, got {requested}")
        return requested
    if backend in STREAM_BACKENDS and device == "cpu":
        n = max(1, min(threads, MAX_AUTO_STREAMS))
        return max(1, min(n, n_batches)) if n_batches is not None else n
    return 1


def threads_per_stream(threads: int, streams: int) -> int:
    """Intra-op threads of each stream so that all streams together use ``threads``."""
    return max(1, threads // streams)


class SamplerStreams:
    """Runs ``fn(sampler, item)`` for each item on whichever stream is free.

    ``map`` yields results in input order and keeps at most ``len(samplers) + 1`` items in
    flight (one queued, so no stream idles while the caller handles a result): memory stays
    bounded. ``busy_seconds`` is the summed time the streams spent inside
    ``fn``; ``busy_fraction(wall)`` divides it by ``streams * wall``.
    """

    def __init__(self, samplers: list[Any]):
        if not samplers:
            raise ValueError("need at least one sampler")
        self.samplers = list(samplers)
        self.busy_seconds = 0.0
        self._lock = threading.Lock()
        self._free: deque[Any] = deque(self.samplers)
        self._pool = ThreadPoolExecutor(len(self.samplers), thread_name_prefix="stream")

    @property
    def n(self) -> int:
        return len(self.samplers)

    def _run(self, fn: Callable[[Any, T], R], item: T) -> R:
        with self._lock:
            sampler = self._free.popleft()
        t = time.perf_counter()
        try:
            return fn(sampler, item)
        finally:
            dt = time.perf_counter() - t
            with self._lock:
                self.busy_seconds += dt
                self._free.append(sampler)

    def map(self, fn: Callable[[Any, T], R], items: Iterable[T]) -> Iterator[R]:
        if self.n == 1:   # no thread hop: exceptions and profiles stay on the caller's thread
            for item in items:
                yield self._run(fn, item)
            return
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(self._pool.submit(self._run, fn, item))
                if len(pending) > self.n:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def busy_fraction(self, wall_seconds: float) -> float:
        return self.busy_seconds / (self.n * wall_seconds) if wall_seconds > 0 else 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "SamplerStreams":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
