"""Lazy package exports (PEP 562) for the engine's subpackages.

Each subpackage's ``__init__`` maps the public names it exports to the modules that define them;
a name is imported on first access. So ``from medfake.engine.data import DatasetInfo`` loads only
``data/reader.py``, and the `medfake` command, which imports configs to build its parser, starts
without torch.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package``, exporting each ``name -> module`` lazily."""
    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return sorted(exports), __getattr__
