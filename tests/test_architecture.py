"""The layers point down only, checked on the source (AST, every import, also inside functions).

- ``kernels`` imports nothing of medfake; ``engine`` only ``kernels``; ``export`` only ``engine`` and
  ``kernels``; ``pipelines`` anything.
- Inside ``engine`` the subpackages have a fixed order (``ENGINE_ORDER``, lowest first): a module
  may import from its own subpackage or a lower one, never a higher one.
- No module imports another module's underscore name.

A violation fails naming the file, line and import. docs/architecture.md describes the layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "engine", "export", "pipelines")
ALLOWED = {"kernels": {"kernels"}, "engine": {"kernels", "engine"},
           "export": {"kernels", "engine", "export"}, "pipelines": set(LAYERS)}
ENGINE_ORDER = ("core", "data", "importers", "training", "diffusion", "clip", "evaluation",
                "synth", "baselines")


def _module(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ["medfake", *(parts[:-1] if parts[-1] == "__init__" else parts)]


def imports(path: Path):
    """(line, target module parts, imported name or None) for every medfake import in ``path``."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "medfake":
                target = node.module.split(".")
            else:
                continue
            for a in node.names:
                yield node.lineno, target, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "medfake":
                    yield node.lineno, a.name.split("."), None


def violations() -> list[str]:
    out = []
    files = [p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")
             if "__pycache__" not in p.parts]
    known = {tuple(_module(p)) for p in files}
    for path in files:
        mod = _module(path)
        layer = mod[1]
        where = f"{path.relative_to(ROOT)}"
        for line, target, name in imports(path):
            if name and tuple(target + [name]) in known:   # `from pkg import module`
                target, name = target + [name], None
            shown = ".".join(target) + (f".{name}" if name else "")
            if len(target) < 2 or target[1] not in LAYERS:
                if target != ["medfake"]:
                    out.append(f"{where}:{line}: imports {shown}, outside the four layers")
                continue
            if target[1] not in ALLOWED[layer]:
                out.append(f"{where}:{line}: {layer} imports {shown} ({layer} may import "
                           f"only {', '.join(sorted(ALLOWED[layer]))})")
            if layer == "engine" and target[1] == "engine" and len(mod) > 3 and len(target) > 2:
                src, dst = mod[2], target[2]
                if src in ENGINE_ORDER and dst in ENGINE_ORDER and \
                        ENGINE_ORDER.index(dst) > ENGINE_ORDER.index(src):
                    out.append(f"{where}:{line}: engine.{src} imports {shown}, a higher "
                               f"subpackage (order: {' < '.join(ENGINE_ORDER)})")
            private = name if name and name.startswith("_") and name != "__version__" else None
            private = private or next((p for p in target[1:] if p.startswith("_")
                                       and p != "__init__"), None)
            if private and target != mod:
                out.append(f"{where}:{line}: imports the private name {private} from "
                           f"{'.'.join(target)}")
    return out


def test_imports_point_down_only():
    found = violations()
    assert not found, "import rule violations:\n" + "\n".join(found)


def test_every_engine_module_sits_in_an_ordered_subpackage():
    loose = [p.name for p in (ROOT / "engine").glob("*.py") if p.name != "__init__.py"]
    subs = sorted(p.name for p in (ROOT / "engine").iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file())
    assert not loose, f"modules directly in engine/: {loose}"
    assert subs == sorted(ENGINE_ORDER), subs


def test_the_checker_catches_each_kind_of_violation(tmp_path, monkeypatch):
    """The rules above can fail: plant one violation of each kind and see them named."""
    import sys
    fake = tmp_path
    for layer in LAYERS:
        (fake / layer).mkdir()
    (fake / "engine" / "core").mkdir()
    (fake / "engine" / "synth").mkdir()
    (fake / "kernels" / "k.py").write_text("from ..engine.core import paths\n")
    (fake / "engine" / "core" / "c.py").write_text("def f():\n    from ..synth.plan import x\n")
    (fake / "engine" / "synth" / "plan.py").write_text("from ...pipelines.synth import run\n"
                                                        "from ..core.c import _hidden\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    found = "\n".join(violations())
    assert "kernels imports medfake.engine.core.paths" in found
    assert "engine.core imports medfake.engine.synth.plan.x, a higher subpackage" in found
    assert "engine imports medfake.pipelines.synth.run" in found
    assert "private name _hidden" in found
