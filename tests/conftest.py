"""Shared fixtures: every test session gets its own medfake cache, so nothing leaks between runs."""
from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session", autouse=True)
def medfake_cache(tmp_path_factory):
    """Point MEDFAKE_CACHE at a per-session directory (generator/phantom caches live there)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("medfake-cache")
    mp.setenv("MEDFAKE_CACHE", str(path))
    logging.getLogger("medfake").setLevel(logging.INFO)
    yield path
    mp.undo()


@pytest.fixture(autouse=True)
def _untrusted_by_default(monkeypatch):
    """No test inherits trust from another: a CLI call with --trust-code sets
    $MEDFAKE_TRUST_CODE in this process (os.environ, not monkeypatch), so the variables are
    removed before and after every test."""
    import os
    names = ("MEDFAKE_TRUST_CODE", "MEDFAKE_TRUST_PICKLE")
    for name in names:
        os.environ.pop(name, None)
    yield
    for name in names:
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small phantom world (public + hospital datasets) shared by the tests that read data."""
    from medfake.engine.data.phantoms import PhantomConfig, make_phantom_world
    out = tmp_path_factory.mktemp("world")
    return make_phantom_world(out, PhantomConfig(n_public_per_class=40, n_train_per_class=12,
                                                 n_val_per_class=4, n_test_per_class=10,
                                                 samples_per_shard=32))


# ---------------------------------------------------------------- real-size models

_RESOURCE_ROWS: list[tuple[str, float, float]] = []


@pytest.fixture
def record_resources(request):
    """Wall time and peak RSS (this process plus its children, sampled every 0.2 s) of a test,
    reported in the terminal summary: the figures the real-size tests are budgeted by."""
    import threading
    import time

    import psutil

    me, peak, stop = psutil.Process(), [0], threading.Event()

    def rss() -> int:
        total = me.memory_info().rss
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss())

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    yield
    stop.set()
    t.join()
    _RESOURCE_ROWS.append((request.node.nodeid, time.perf_counter() - t0, peak[0] / 2**30))


def pytest_terminal_summary(terminalreporter):
    if _RESOURCE_ROWS:
        terminalreporter.section("real-size tests: wall time and peak RSS")
        for nodeid, wall, gib in _RESOURCE_ROWS:
            terminalreporter.write_line(f"{wall:7.1f} s  {gib:5.1f} GiB  {nodeid}")


@pytest.fixture(scope="session")
def realsize_model():
    """``realsize_model(preset)``: a random-weight real-size model dir (published architecture:
    ``sd15``, ``sd21``, ``sd15-inpaint``), built once per machine.

    Kept under ``$MEDFAKE_TEST_MODELS`` (default ``~/.cache/medfake/test-models``), outside the
    per-session cache, keyed by preset content and library versions (``cached_model``)."""
    import os
    from pathlib import Path

    from medfake.engine.diffusion.sd_model import cached_model
    root = os.environ.get("MEDFAKE_TEST_MODELS",
                          str(Path.home() / ".cache" / "medfake" / "test-models"))
    return lambda preset: cached_model(preset, seed=0, root=root)
