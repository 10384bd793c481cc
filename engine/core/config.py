"""Job configs: one profile mechanism, and the CLI description of every field.

A job config is a dataclass that mixes in ``JobConfig`` and declares its named profiles in one
place, ``PROFILES: ClassVar[dict[str, dict]]`` (profile name -> field overrides; a nested job
config may be given as an object or as a dict of its fields)::

    Cfg.profile("test", steps=3)          the profile, fields overridden
    Cfg.profiles()                        the profile names
    Cfg.from_dict({"steps": 3}, "test")   the same from a dict: an unknown key is one ValueError
                                          naming it and the valid keys; nested dicts become the
                                          nested configs, lists become tuples where the field is
                                          a tuple
    Cfg.load("cfg.json", "test")          a JSON object of overrides over the profile
    cfg.to_dict()                         plain dicts all the way down

``DEFAULT_PROFILE`` names the profile used when none is given (``"default"`` unless a class
says otherwise); ``check()`` is called on every config these build (no-op unless overridden).

Every field states how the `medfake` command treats it, in its ``metadata``:
``option(default, "help", flag=..., choices=..., ...)`` gives it a flag (the command derives it,
``pipelines/cli/options.py``); ``api_only(default)`` marks a field set only from Python or a
``--config`` file. Standard library only: the CLI imports every job config to build its parser.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping

MISSING = dataclasses.MISSING
CLI_KEY, API_ONLY_KEY = "cli", "api_only"
_CLI_ARGS = ("flag", "choices", "metavar", "nargs", "action", "type")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
           flag: str | None = None, choices: Any = None, metavar: Any = None, nargs: Any = None,
           action: str | None = None, type: Any = None, required: bool = False,
           positional: bool = False) -> Any:
    """A dataclass field with a `medfake` flag. ``flag`` defaults to ``--field-name`` (a bool
    that defaults to True gets ``--no-field-name``); ``type``/``nargs`` follow the annotation
    unless given; ``positional`` makes it a positional argument; ``required`` a required flag."""
    meta: dict[str, Any] = {"help": help}
    for key, value in zip(_CLI_ARGS, (flag, choices, metavar, nargs, action, type)):
        if value is not None:
            meta[key] = value
    if required:
        meta["required"] = True
    if positional:
        meta["positional"] = True
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={CLI_KEY: types.MappingProxyType(meta)})


def api_only(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A dataclass field without a flag: set from Python or a ``--config`` file only."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={API_ONLY_KEY: True})


def cli_metadata(f: dataclasses.Field) -> Mapping[str, Any] | None:
    """The field's flag description, or None for an API-only (or unmarked) field."""
    return f.metadata.get(CLI_KEY)


def is_api_only(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(API_ONLY_KEY))


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def field_default(f: dataclasses.Field) -> Any:
    """The field's default value (a fresh one from ``default_factory``), or MISSING."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> its resolved annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def read_json_object(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The JSON object in ``path``: FileNotFoundError if absent, ValueError if not an object."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {p} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {p} must hold a JSON object")
    return d


def _nested_type(cls: type, name: str) -> type | None:
    base, _ = unwrap_optional(field_types(cls)[name])
    if isinstance(base, type) and dataclasses.is_dataclass(base) and issubclass(base, JobConfig):
        return base
    return None


def _is_tuple(cls: type, name: str) -> bool:
    base, _ = unwrap_optional(field_types(cls)[name])
    return base is tuple or typing.get_origin(base) is tuple


class JobConfig:
    """Mixin for job-config dataclasses: named profiles, dict/JSON loading, ``to_dict``."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"default": {}}
    DEFAULT_PROFILE: ClassVar[str] = "default"

    @classmethod
    def profiles(cls) -> tuple[str, ...]:
        return tuple(cls.PROFILES)

    @classmethod
    def profile(cls, name: str | None = None, /, **overrides: Any):
        """Profile ``name`` (default: ``DEFAULT_PROFILE``) with ``overrides``; a dict given for
        a nested config overrides the profile's nested fields. (``name`` is positional-only:
        a config may have a field called name.)"""
        name = cls.DEFAULT_PROFILE if name is None else name
        if name not in cls.PROFILES:
            raise ValueError(f"unknown {cls.__name__} profile {name!r}; choose one of "
                             f"{', '.join(cls.PROFILES)}")
        cls._check_keys(overrides)
        values = copy.deepcopy(dict(cls.PROFILES[name]))
        for key, value in overrides.items():
            nested = _nested_type(cls, key)
            if nested is not None and isinstance(value, Mapping):
                value = cls._merge_nested(nested, key, values.get(key, MISSING), value)
            values[key] = value
        for key, value in values.items():
            nested = _nested_type(cls, key)
            if nested is not None and isinstance(value, Mapping):
                values[key] = nested.from_dict(value)
            elif isinstance(value, list) and _is_tuple(cls, key):
                values[key] = tuple(value)
        missing = [f.name for f in dataclasses.fields(cls)
                   if not has_default(f) and f.name not in values]
        if missing:
            raise ValueError(f"{cls.__name__} needs {', '.join(missing)}")
        cfg = cls(**values)
        cfg.check()
        return cfg

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], profile: str | None = None):
        """Profile ``profile`` with the keys of ``d`` overridden (see ``profile``)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__}: expected a dict of fields, got {type(d).__name__}")
        return cls.profile(profile, **d)

    @classmethod
    def load(cls, path: str | os.PathLike | None, profile: str | None = None, /,
             **overrides: Any):
        """The JSON object in ``path`` (None: nothing) over the profile, then ``overrides``."""
        d = read_json_object(path, f"{cls.__name__} config") if path is not None else {}
        return cls.from_dict({**d, **overrides}, profile)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Validate the settings; raise ValueError naming the bad one."""

    @classmethod
    def _check_keys(cls, d: Mapping[str, Any]) -> None:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"valid keys: {', '.join(valid)}")

    @classmethod
    def _merge_nested(cls, nested: type, key: str, base: Any, over: Mapping[str, Any]):
        if base is MISSING:
            f = next(f for f in dataclasses.fields(cls) if f.name == key)
            base = field_default(f)
        if isinstance(base, JobConfig):
            base = base.to_dict()
        return nested.from_dict({**(base or {}), **over})
