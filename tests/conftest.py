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


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small phantom world (public + hospital datasets) shared by the tests that read data."""
    from medfake.engine.phantoms import PhantomConfig, make_phantom_world
    out = tmp_path_factory.mktemp("world")
    return make_phantom_world(out, PhantomConfig(n_public_per_class=40, n_train_per_class=12,
                                                 n_val_per_class=4, n_test_per_class=10,
                                                 samples_per_shard=32))
