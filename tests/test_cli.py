"""The CLI: bad input ends in one clear line and exit code 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest


def medfake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medfake.pipelines.cli", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["data", "info", "/nonexistent/ds"], "does not exist"),
    (["model", "init", "--preset", "huge", "--out", "/tmp/x"], "unknown diffusion preset 'huge'"),
    (["synth", "--model", "/nonexistent/m", "--real", "/nonexistent/ds", "--out", "/tmp/y"],
     "does not exist"),
])
def test_bad_input_gives_one_clear_error(args, expected):
    r = medfake(*args)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr


def test_model_dir_of_wrong_shape(tmp_path, small_world):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.bin").write_bytes(b"x")
    _, hospital = small_world
    r = medfake("synth", "--model", str(tmp_path / "notamodel"), "--real", str(hospital),
                "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "model_index.json" in r.stderr and "Traceback" not in r.stderr


def test_data_commands(tmp_path):
    r = medfake("data", "phantoms", "--out", str(tmp_path / "w"), "--public-per-class", "2",
                "--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1")
    assert r.returncode == 0, r.stderr
    r = medfake("data", "info", str(tmp_path / "w" / "hospital"), "--verify")
    assert r.returncode == 0 and "verify: OK" in r.stdout and "test" in r.stdout
