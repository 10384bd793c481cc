"""The import job's configuration, its validation, and class names / prompt templates."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..core.config import JobConfig, cli_metadata, option

SOURCES = ("imagefolder", "medmnist", "csv", "dicom")
RESIZE_MODES = ("crop", "pad")
SLICE_MODES = ("all", "middle")
SPLITS = ("train", "val", "test")


def comma_list(text: str) -> list[str]:
    """``"a,b,c"`` -> ``["a", "b", "c"]`` (the ``--class-names`` flag)."""
    return text.split(",")


def _flag(name: str) -> str:
    meta = cli_metadata(next(f for f in dataclasses.fields(ImportConfig) if f.name == name))
    return (meta or {}).get("flag", "--" + name.replace("_", "-"))


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"import setting {name} ({_flag(name)}) is {value!r}; allowed: {allowed}")


@dataclass
class ImportConfig(JobConfig):
    """One import: ``source`` format, ``src`` path, ``out`` dataset directory, and options.

    ``size`` None keeps the source size when all images share one square size (else it asks
    for one). ``channels`` None picks 1 for all-grayscale sources, else 3. ``val_fraction`` and
    ``test_fraction`` apply when the source has no splits of its own (realised as one fold of
    round(1 / fraction) stratified, patient-grouped folds). ``class_names`` orders / names the
    classes (required-ish for integer labels), ``templates`` are caption templates with a
    ``{cls}`` placeholder, ``modality`` the word used in default captions. ``window`` and
    ``slices`` are for DICOM (see ``engine/importers/dicom.py``). ``patient_regex`` extracts a
    patient id from image file names (first group, or the group named ``patient``).

    Patient identity (no patient in two splits, ever): a file's patient is its CSV patient
    column, its DICOM PatientID (else PatientName), or its ``patient_regex`` match; failing
    those, the user's ``group_by`` key (``folder``: the file's parent folder is one patient;
    ``dicom:KEYWORD``: a DICOM attribute such as ``dicom:AccessionNumber``; ``column:NAME``: a
    CSV column). Files with none of these are refused when medfake splits the data, unless
    ``unknown_patients_to`` places them all in one split. Splits given by the source itself
    (MedMNIST's official splits, a CSV split column) are kept and checked per known patient.

    Burned-in text: DICOM files quarantined by ``dicom.burned_in_risk`` are left out and listed
    by position in the import summary unless ``accept_burned_in_risk``; with ``detect_text``,
    any image (DICOM or not) in which ``textdetect.TextDetector`` finds text is quarantined too
    (never cleared by the flag).
    """

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    source: str = option(help="source format", flag="--from", choices=SOURCES, required=True)
    src: str = option(help="class-folder tree (imagefolder, dicom), .npz file or .csv file",
                      positional=True)
    out: str = option(help="output dataset directory", required=True)
    size: int | None = option(None, "output size (default: the source's, if uniform)")
    resize: str = option("crop", "fit to a square by centre crop or padding",
                         choices=RESIZE_MODES)
    channels: int | None = option(None, "default: 1 if all grayscale", choices=(1, 3))
    val_fraction: float = option(0.1, "val fraction (no source split)", flag="--val")
    test_fraction: float = option(0.1, "test fraction (no source split)", flag="--test")
    seed: int = option(0, "split seed")
    class_names: list[str] | None = option(
        None, "comma-separated class names in label order", type=comma_list)
    templates: list[str] | None = option(
        None, "caption template with {cls}, repeatable (e.g. 'a CT image of a {cls} lesion')",
        flag="--template", action="append")
    modality: str | None = option(None, "modality word for default captions (e.g. CT, MRI)")
    window: str = option("auto", "DICOM: auto, file, abdomen, liver, lung, mediastinum, brain, "
                         "bone, or LEVEL,WIDTH")
    slices: str = option("all", "DICOM series / multi-frame: every slice, or the middle one",
                         choices=SLICE_MODES)
    patient_regex: str | None = option(
        None, "regex whose first group is the patient id in file names")
    group_by: str | None = option(
        None, "patient key for files without a patient id: folder (parent folder = one "
        "patient), dicom:KEYWORD (e.g. dicom:AccessionNumber) or column:NAME (a CSV column)")
    unknown_patients_to: str | None = option(
        None, "put every file without a patient id into this one split (e.g. train)",
        choices=SPLITS)
    accept_burned_in_risk: bool = option(
        False, "also import the DICOM files quarantined for possible burned-in text (US, SC, "
        "XC, OT, secondary capture; no BurnedInAnnotation=NO): I have checked their pixels and "
        "take responsibility that they identify no one")
    detect_text: bool = option(
        False, "also run the offline text detector (pip install 'medfake[ocr]') on every "
        "image; images where it finds text are quarantined (slow: ~1 s per image on a CPU)")
    salt_file: str | None = option(
        None, "file holding the secret salt for pseudonyms (default: $MEDFAKE_DEID_SALT_FILE, "
        "else a per-user mode-600 secret in the medfake cache; $MEDFAKE_DEID_SALT is accepted "
        "but warned against)")
    samples_per_shard: int = option(1000, "images per output shard")

    def __post_init__(self) -> None:
        from .dicom import parse_window
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
        if self.group_by is not None:
            _check_group_by(self.group_by, self.source)
        if self.unknown_patients_to is not None and self.unknown_patients_to not in SPLITS:
            raise _bad("unknown_patients_to", self.unknown_patients_to, ", ".join(SPLITS))
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise _bad("class_names", self.class_names, "distinct names")

    def public(self) -> dict[str, Any]:
        """The settings that shape the output, without paths (they may name patients)."""
        d = asdict(self)
        for k in ("src", "out", "salt_file", "patient_regex"):
            d.pop(k)
        return d


def _check_group_by(spec: str, source: str) -> None:
    kind, _, arg = spec.partition(":")
    allowed = "folder, dicom:KEYWORD (e.g. dicom:AccessionNumber) or column:NAME"
    if source == "medmnist":
        raise _bad("group_by", spec, "nothing for --from medmnist (its splits are official)")
    if kind == "folder" and not arg:
        return
    if kind == "column" and arg.strip():
        if source != "csv":
            raise _bad("group_by", spec, f"{allowed}; column:NAME only with --from csv")
        return
    if kind == "dicom" and arg:
        from pydicom.datadict import tag_for_keyword
        if tag_for_keyword(arg) is None:
            raise _bad("group_by", spec, f"{allowed}; {arg!r} is not a DICOM keyword")
        if source not in ("dicom", "csv"):
            raise _bad("group_by", spec, f"{allowed}; dicom:KEYWORD only for DICOM files")
        return
    raise _bad("group_by", spec, allowed)


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
