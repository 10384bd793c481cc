"""The input errors every layer raises and the CLI prints as one line (``medfake: error: ...``).

``DatasetError`` is a ``ValueError``; ``DiskFullError`` is both a ``DatasetError`` and an
``OSError``, so a full disk reads as one clear line and is still an OS error to callers.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset directory or shard is missing, malformed or corrupt; the message says the fix."""


class DiskFullError(DatasetError, OSError):
    """The disk (or quota) filled up while writing; everything written before is intact.

    Both a ``DatasetError`` (the CLI prints it as one line) and an ``OSError``."""


class UntrustedCodeError(ValueError):
    """An input that can run code when loaded (pickle, TorchScript, a foreign DeepSpeed
    checkpoint) was given without ``--trust-code``; the message names the safe alternative."""
