"""Flags derived from job-config dataclasses, and the configs built back from parsed flags.

``add_config_args(parser, Cfg)`` adds ``--profile`` (choices: ``Cfg.profiles()``), ``--config
FILE`` (a JSON object of fields, ``Cfg.load``) and one flag per field that carries
``engine.core.config.option`` metadata: help, spelling (default ``--field-name``), choices,
metavar, ``nargs`` for tuples, ``store_true`` for a bool that defaults to False and an inverted
``--no-x`` for one that defaults to True. API-only fields get no flag. Every flag defaults to
None, so ``config_from_args`` knows what was given: the profile, then the file, then the given
flags. The field default is the one source of a default; the help shows it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from typing import Any

from ...engine.core.config import (
    MISSING,
    cli_metadata,
    field_default,
    field_types,
    has_default,
    read_json_object,
    unwrap_optional,
)

SCALARS = (int, float, str)


def flag_name(f: dataclasses.Field) -> str:
    """The option string of a CLI field (for a positional: its name)."""
    meta = cli_metadata(f) or {}
    if meta.get("positional"):
        return f.name
    if "flag" in meta:
        return meta["flag"]
    dashed = f.name.replace("_", "-")
    return f"--no-{dashed}" if f.default is True else f"--{dashed}"


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that have a flag."""
    return [f for f in dataclasses.fields(cls) if cli_metadata(f) is not None]


def profile_value(cls: type, f: dataclasses.Field) -> Any:
    """The field's value in the default profile (its default unless the profile sets it)."""
    over = cls.PROFILES[cls.DEFAULT_PROFILE]
    return over[f.name] if f.name in over else field_default(f)


def _help(cls: type, f: dataclasses.Field, meta: dict[str, Any]) -> str:
    text = meta.get("help", "")
    value = profile_value(cls, f) if has_default(f) and not meta.get("required") else MISSING
    if value not in (MISSING, None, (), "") and not isinstance(value, bool) \
            and "default" not in text.lower():
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%")


def argparse_kwargs(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """add_argument keywords for one CLI field (without the option string)."""
    meta = dict(cli_metadata(f))
    base, _ = unwrap_optional(field_types(cls)[f.name])
    kw: dict[str, Any] = {"help": _help(cls, f, meta)}
    if base is bool:
        kw["action"] = "store_false" if f.default is True else "store_true"
    else:
        origin = typing.get_origin(base)
        if origin is tuple:
            args = typing.get_args(base)
            kw["type"] = args[0]
            kw["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        elif origin is list:
            kw["type"] = typing.get_args(base)[0]
            kw["nargs"] = "+"
        elif base in SCALARS:
            kw["type"] = base
        elif "type" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {base!r} field; give it a "
                            f"type or mark it api_only()")
        for key in ("choices", "metavar", "nargs", "action", "type"):
            if key in meta:
                kw[key] = meta[key]
        if meta.get("type") is not None or kw.get("action") == "append":
            kw.pop("nargs", None)
        if "choices" in kw:
            kw["choices"] = list(kw["choices"])
    if meta.get("positional"):
        return kw
    if "choices" not in kw and "metavar" not in kw and base is not bool:
        kw["metavar"] = flag_name(f).lstrip("-").replace("-", "_").upper()
    kw["dest"] = f.name
    kw["default"] = None
    if meta.get("required"):
        kw["required"] = True
    return kw


def add_config_args(parser: argparse.ArgumentParser, cls: type, *,
                    profile_help: str | None = None) -> None:
    """``--profile``, ``--config FILE`` and a flag per CLI field of the job config ``cls``."""
    parser.add_argument("--profile", default=cls.DEFAULT_PROFILE, choices=list(cls.profiles()),
                        help=profile_help or f"named base values the other flags override "
                        f"(default: {cls.DEFAULT_PROFILE})")
    parser.add_argument("--config", metavar="FILE",
                        help=f"JSON object of {cls.__name__} fields over the profile (flags "
                        f"given override it)")
    for f in cli_fields(cls):
        parser.add_argument(flag_name(f), **argparse_kwargs(cls, f))


def given_values(cls: type, a: argparse.Namespace) -> dict[str, Any]:
    """The CLI fields given on the command line (list values as tuples for tuple fields)."""
    out = {}
    for f in cli_fields(cls):
        value = getattr(a, f.name, None)
        if value is not None:
            base, _ = unwrap_optional(field_types(cls)[f.name])
            if isinstance(value, list) and typing.get_origin(base) is tuple:
                value = tuple(value)
            out[f.name] = value
    return out


def config_from_args(cls: type, a: argparse.Namespace, *, command: str, hint: str = "",
                     **extra: Any):
    """The job config: ``--profile``, then ``--config FILE``, then the given flags, then
    ``extra``. A required field that none of them sets is one ValueError naming its flag."""
    values = read_json_object(a.config, f"{command} config") if a.config else {}
    values.update(given_values(cls, a))
    values.update(extra)
    profile = cls.PROFILES.get(a.profile, {})
    missing = [flag_name(f) for f in dataclasses.fields(cls)
               if not has_default(f) and f.name not in values and f.name not in profile]
    if missing:
        raise ValueError(f"medfake {command} needs {', '.join(missing)}{hint}")
    return cls.from_dict(values, a.profile)


def add_trust_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--trust-code`` (and its deprecated alias ``--trust-pickle``): ``what`` names the inputs
    of this command that can run code when loaded (``engine.core.trust``)."""
    parser.add_argument("--trust-code", action="store_true",
                        help=f"I trust the source of {what}: load it although it can run code "
                        f"(see docs/data.md, trust boundaries)")
    parser.add_argument("--trust-pickle", dest="trust_pickle_legacy", action="store_true",
                        help="deprecated alias of --trust-code")


def trust_code(a: argparse.Namespace) -> None:
    """Apply ``--trust-code`` to this process and the ranks it launches (``$MEDFAKE_TRUST_CODE``,
    read by ``engine.core.trust.code_trusted``); warn about the deprecated spelling."""
    from ...engine.core.trust import TRUST_CODE_ENV
    if getattr(a, "trust_pickle_legacy", False):
        logging.getLogger("medfake").warning("--trust-pickle is deprecated; use --trust-code "
                                             "(the same trust, for every input that can run code)")
    if getattr(a, "trust_code", False) or getattr(a, "trust_pickle_legacy", False):
        os.environ[TRUST_CODE_ENV] = "1"


trust_pickle = trust_code  # the old name of trust_code
