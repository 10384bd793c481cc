"""What a farm installs: the built wheel and sdist hold every module and preset, and the wheel,
installed non-editable into its own target, imports every module and runs ``medfake doctor`` and
the ``--profile test`` chain from a directory outside the checkout.

The editable install every other test uses maps ``medfake`` onto the checkout, so it cannot see a
module that the wheel leaves out; these tests can. They build offline (``--no-build-isolation``,
the venv's own setuptools, as pinned in constraints.txt).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engine", "kernels", "export", "pipelines")
SHIPPED = (".py", ".json", ".yaml")
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info",
                                "runs", ".pytest_cache", ".benchmarks", "*.tar", "*.onnx")


def _source_files() -> list[str]:
    """Every module and data file of the four layers, relative to the package root."""
    files = [p.relative_to(ROOT).as_posix() for layer in LAYERS
             for p in (ROOT / layer).rglob("*")
             if p.is_file() and p.suffix in SHIPPED and "__pycache__" not in p.parts]
    assert any(f.startswith("engine/diffusion/backends/") for f in files)  # once left out
    return sorted(files + ["__init__.py"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist built from a copy of the checkout (the checkout stays untouched)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(src)], check=True, cwd=tmp)
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                    "b.build_sdist(sys.argv[1])", str(dist)], check=True, cwd=src,
                   stdout=subprocess.DEVNULL)
    wheel, = dist.glob("medfake-*.whl")
    sdist, = dist.glob("medfake-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_and_sdist_hold_every_module_and_preset(built):
    expected = _source_files()
    in_wheel = set(zipfile.ZipFile(built["wheel"]).namelist())
    missing = [f for f in expected if f"medfake/{f}" not in in_wheel]
    assert not missing, f"wheel lacks {missing}"
    with tarfile.open(built["sdist"]) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = [f for f in expected if f not in in_sdist]
    assert not missing, f"sdist lacks {missing}"
    # Nothing of the checkout's other folders is installed as a top-level package.
    tops = {n.split("/", 1)[0] for n in in_wheel}
    assert tops <= {"medfake", *[n for n in tops if n.endswith((".dist-info", ".data"))]}, tops


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> dict[str, str]:
    """The wheel installed (no deps, non-editable) into a target dir; env to run it from."""
    target = tmp_path_factory.mktemp("target")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(built["wheel"])], check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    return {"target": str(target), "bin": str(target / "bin" / "medfake"), **{"env": env}}


def _run(args: list[str], installed, cwd: Path, timeout: int = 900) -> str:
    p = subprocess.run(args, cwd=cwd, env=installed["env"], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_installed_wheel_imports_every_module_outside_the_checkout(installed, tmp_path):
    code = ("import importlib, pkgutil, medfake, sys\n"
            "assert medfake.__file__.startswith(sys.argv[1]), medfake.__file__\n"
            "names = [m.name for m in pkgutil.walk_packages(medfake.__path__, 'medfake.')]\n"
            "for n in names:\n"
            "    m = importlib.import_module(n)\n"
            "    assert m.__file__.startswith(sys.argv[1]), (n, m.__file__)\n"
            "print(len(names))\n")
    n = int(_run([sys.executable, "-c", code, installed["target"]], installed, tmp_path).strip())
    expected = [f for f in _source_files() if f.endswith(".py") and f != "__init__.py"]
    assert n == len(expected)


def test_installed_wheel_runs_doctor_and_the_test_chain(installed, tmp_path):
    out = _run([installed["bin"], "doctor"], installed, tmp_path)
    assert "torch" in out and "onnx" in out
    # The console script must resolve to the wheel's copy, not the checkout.
    _run([installed["bin"], "run", "--profile", "test", "--out-root", str(tmp_path / "runs")],
         installed, tmp_path, timeout=1800)
    runs = list((tmp_path / "runs").glob("*/results.json"))
    assert runs and (runs[0].parent / "report.html").is_file()
