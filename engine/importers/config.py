"""The import job's configuration, its validation, and class names / prompt templates."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from .dicom import parse_window
from .imaging import RESIZE_MODES

SOURCES = ("imagefolder", "medmnist", "csv", "dicom")
SLICE_MODES = ("all", "middle")
SPLITS = ("train", "val", "test")
_FLAGS = {"source": "--from", "val_fraction": "--val", "test_fraction": "--test",
          "templates": "--template"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"import setting {name} ({_flag(name)}) is {value!r}; allowed: {allowed}")


@dataclass
class ImportConfig:
    """One import: ``source`` format, ``src`` path, ``out`` dataset directory, and options.

    ``size`` None keeps the source size when all images share one square size (else it asks
    for one). ``channels`` None picks 1 for all-grayscale sources, else 3. ``val_fraction`` and
    ``test_fraction`` apply when the source has no splits of its own (realised as one fold of
    round(1 / fraction) stratified, patient-grouped folds). ``class_names`` orders / names the
    classes (required-ish for integer labels), ``templates`` are caption templates with a
    ``{cls}`` placeholder, ``modality`` the word used in default captions. ``window`` and
    ``slices`` are for DICOM (see ``engine/importers/dicom.py``). ``patient_regex`` extracts a
    patient id from image file names (first group, or the group named ``patient``).
    """

    source: str
    src: str
    out: str
    size: int | None = None
    resize: str = "crop"
    channels: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    class_names: list[str] | None = None
    templates: list[str] | None = None
    modality: str | None = None
    window: str = "auto"
    slices: str = "all"
    patient_regex: str | None = None
    salt_file: str | None = None
    samples_per_shard: int = 1000

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise _bad("source", self.source, ", ".join(SOURCES))
        if self.size is not None and not 8 <= self.size <= 4096:
            raise _bad("size", self.size, "an integer from 8 to 4096, or omitted")
        if self.resize not in RESIZE_MODES:
            raise _bad("resize", self.resize, ", ".join(RESIZE_MODES))
        if self.channels not in (None, 1, 3):
            raise _bad("channels", self.channels, "1, 3, or omitted (auto)")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 0.5:
                raise _bad(name, v, "a fraction from 0 to 0.5")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise _bad("val_fraction", self.val_fraction,
                       "val + test below 0.9 (train needs images)")
        if self.slices not in SLICE_MODES:
            raise _bad("slices", self.slices, ", ".join(SLICE_MODES))
        if self.samples_per_shard < 1:
            raise _bad("samples_per_shard", self.samples_per_shard, "an integer >= 1")
        parse_window(self.window)
        for t in self.templates or []:
            if "{cls}" not in t:
                raise _bad("templates", t, "text containing the placeholder {cls}, e.g. "
                                          "'a CT image of a {cls} lesion'")
        if self.patient_regex is not None:
            try:
                rx = re.compile(self.patient_regex)
            except re.error as e:
                raise _bad("patient_regex", self.patient_regex, f"a valid regex ({e})") from None
            if rx.groups < 1:
                raise _bad("patient_regex", self.patient_regex,
                           "a regex with a group capturing the patient id, e.g. '^(P\\d+)_'")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise _bad("class_names", self.class_names, "distinct names")

    def public(self) -> dict[str, Any]:
        """The settings that shape the output, without paths (they may name patients)."""
        d = asdict(self)
        for k in ("src", "out", "salt_file", "patient_regex"):
            d.pop(k)
        return d


def slug(name: str) -> str:
    """A class name usable in sample keys and file names: ``[A-Za-z0-9_-]`` only."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip()).strip("_")
    return s or "class"


def class_phrase(name: str) -> str:
    """The words used for a class in captions."""
    return re.sub(r"[_\s]+", " ", name).strip()


def _article(word: str) -> str:
    if word[:1].isupper() and (len(word) == 1 or word[1:2].isupper() or word[1:2] == "-"):
        return "an" if word[0] in "AEFHILMNORSX" else "a"  # spelled-out acronyms: an MRI, a CT
    return "an" if word[:1].lower() in "aeiou" else "a"


def default_templates(modality: str) -> list[str]:
    """Three caption templates for a modality word (``{cls}`` is the class phrase)."""
    return [f"{_article(modality)} {modality} image of {{cls}}",
            f"{modality} image showing {{cls}}", f"{{cls}}, {modality}"]


def prompt_templates(names: list[str], phrases: list[str], modality: str,
                     templates: list[str] | None) -> dict[str, list[str]]:
    """``{class name: [caption, ...]}`` from the user's templates or the defaults."""
    tpl = templates or default_templates(modality)
    return {n: [t.replace("{cls}", p) for t in tpl] for n, p in zip(names, phrases)}
