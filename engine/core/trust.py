"""One trust rule for every input that can execute code when loaded.

Inputs that can run code: pickled weights (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pkl``;
read with ``torch.load(weights_only=True)`` once trusted), TorchScript files (``torch.jit.load``
deserialises and later runs a program), and DeepSpeed checkpoints (DeepSpeed's loader unpickles
its files with full pickle). Each is refused with ``UntrustedCodeError`` unless the user trusts
it: ``--trust-code`` on the command line (``--trust-pickle`` is its deprecated alias), which
sets ``$MEDFAKE_TRUST_CODE=1`` for the process and the ranks it launches
(``$MEDFAKE_TRUST_PICKLE=1`` is still honoured). Safetensors, ``.npz`` with
``allow_pickle=False`` and medfake's own ``torch.load(weights_only=True)`` state files never run
code and need no trust.

Checkpoints medfake wrote itself need no flag: ``sign_checkpoint`` records, at save time, the
sha256 of every file of a checkpoint directory in ``medfake_manifest.json`` with an HMAC-SHA256
over that list under a per-user key (``<cache>/secrets/checkpoint_key``, mode 0600, see
``paths.secret_file``). ``verify_checkpoint`` accepts a directory only when the HMAC verifies
under this user's key and every file present is listed with its hash. "From another machine"
therefore means: not signed with this user's key -- a checkpoint copied from a colleague, a
download, one written before signing existed, or one changed after it was saved. Nodes sharing
one home directory share the key, so a multi-node run resumes its own checkpoints; copying the
key to another machine extends the trust to it on purpose.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
from pathlib import Path

from .atomic import atomic_write_json, sha256_file
from .errors import UntrustedCodeError
from .paths import secret_file

log = logging.getLogger(__name__)

TRUST_CODE_ENV = "MEDFAKE_TRUST_CODE"
LEGACY_TRUST_ENV = "MEDFAKE_TRUST_PICKLE"  # set by the deprecated --trust-pickle
TRUST_FLAG = "--trust-code"
MANIFEST = "medfake_manifest.json"
KEY_NAME = "checkpoint_key"


def code_trusted(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else whether the process was started with ``--trust-code``."""
    if explicit is not None:
        return bool(explicit)
    return os.environ.get(TRUST_CODE_ENV) == "1" or os.environ.get(LEGACY_TRUST_ENV) == "1"


def require_trust(path: str | os.PathLike, what: str, fix: str,
                  explicit: bool | None = None) -> None:
    """Raise ``UntrustedCodeError`` for ``path`` (``what`` it is, ``fix`` the safe
    alternative) unless code is trusted. Call it before the file is opened by any loader."""
    if code_trusted(explicit):
        log.info("loading %s (%s) under %s", path, what, TRUST_FLAG)
        return
    raise UntrustedCodeError(f"{path} is {what}, which can run arbitrary code when loaded. "
                             f"{fix}, or pass {TRUST_FLAG} if you trust its source.")


def _key() -> bytes:
    return secret_file(KEY_NAME).read_bytes().strip()


def _listing(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}


def _mac(files: dict[str, str]) -> str:
    blob = json.dumps(files, sort_keys=True).encode()
    return hmac.new(_key(), b"medfake-checkpoint\x1f" + blob, hashlib.sha256).hexdigest()


def sign_checkpoint(d: str | os.PathLike) -> Path:
    """Write ``d/medfake_manifest.json``: sha256 of every file under ``d`` and their HMAC under
    this user's key (see the module docstring). Call once all files of the checkpoint exist."""
    d = Path(d)
    files = _listing(d)
    path = d / MANIFEST
    atomic_write_json(path, {"format": 1, "files": files, "host": socket.gethostname(),
                             "hmac": _mac(files)})
    return path


def verify_checkpoint(d: str | os.PathLike, explicit: bool | None = None) -> None:
    """Refuse (``UntrustedCodeError``) to let a code-executing loader read checkpoint ``d``
    unless this user signed it and no file changed since, or code is trusted."""
    d = Path(d)
    if code_trusted(explicit):
        log.info("resuming %s without checking its signature (%s)", d, TRUST_FLAG)
        return
    why = _unsigned_reason(d)
    if why:
        raise UntrustedCodeError(
            f"checkpoint {d} {why}. Its files are unpickled when it is loaded, which can run "
            f"arbitrary code, so medfake loads only checkpoints it signed itself for this user "
            f"(medfake_manifest.json). Pass {TRUST_FLAG} if you trust its source.")


def _unsigned_reason(d: Path) -> str | None:
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        listed = dict(manifest["files"])
        mac = str(manifest["hmac"])
    except FileNotFoundError:
        return ("has no medfake signature (written elsewhere, by another tool, or before "
                "checkpoints were signed)")
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable medfake_manifest.json"
    if not hmac.compare_digest(mac, _mac(listed)):
        return "is signed with another user's or machine's key"
    for rel, digest in _listing(d).items():
        if rel not in listed:
            return f"holds {rel}, a file added after it was saved"
        if listed[rel] != digest:
            return f"holds {rel}, changed after it was saved"
    return None
