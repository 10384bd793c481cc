"""``ExperimentConfig``: ``medfake experiment NAME`` (``pipelines/experiment.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only
from ..protocols import CONTROL


@dataclass
class ExperimentConfig(JobConfig):
    """Everything an experiment needs; JSON keys are these field names (see docs/evaluation.md).
    The CLI takes them from ``--config FILE`` over ``--profile``: ``default`` (the documented
    sizes) or ``test`` (a tiny world, classic augmentation as the synthetic source, a few steps:
    well under a minute per protocol)."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "test": dict(phantoms={"n_public_per_class": 40, "n_train_per_class": 12,
                               "n_val_per_class": 4, "n_test_per_class": 10,
                               "samples_per_shard": 32},
                     synthetic={"classic": {"kind": "classic"}}, synthetic_per_class=20,
                     generator_profile="test", steps=12, batch=16, seeds=[0, 1], k=2,
                     k_values=[1, "all"], ratios=[1, 5], clip_profile="test", n_bootstrap=100),
    }

    real: str | None = api_only(None)           # real dataset dir; None: the embedded hospital
    control: str | None = api_only(None)        # generator's training corpus; None: embedded public
    phantoms: dict[str, Any] = api_only(default_factory=dict)   # PhantomConfig overrides
    synthetic: dict[str, Any] = api_only(default_factory=lambda: {
        "diffusion": {"kind": "diffusion", "model": "embedded", "sample": {"backend": "auto"}}})
    synthetic_per_class: int = api_only(200)    # images per class each generator spec writes
    generator_profile: str = api_only("default")  # model "embedded": the cached embedded generator
    classifiers: list[str] = api_only(default_factory=lambda: ["small-cnn"])
    classifier_weights: dict[str, str] = api_only(default_factory=dict)  # arch -> local file
    steps: int = api_only(300)
    batch: int = api_only(64)
    lr: float = api_only(1e-3)
    width: int = api_only(16)
    seeds: list[int] = api_only(default_factory=lambda: [0, 1, 2, 3, 4])
    k: int = api_only(5)                        # real per class (all protocols but few-shot-sweep)
    k_values: list[Any] = api_only(default_factory=lambda: [1, 2, 5, 10, 20, "all"])
    synth_per_real: list[float] = api_only(default_factory=lambda: [0, 10])
    per_real: float = api_only(10)              # extra per real image (substitution, ...)
    transforms: list[bool] = api_only(default_factory=lambda: [False, True])
    augment: bool = api_only(False)             # transforms in the other protocols
    ratios: list[float] = api_only(default_factory=lambda: [1, 2, 5, 10, 20])
    test_split: str = api_only("test")
    clip_profile: str = api_only("embedded")
    clip: dict[str, Any] = api_only(default_factory=dict)       # ClipTrainConfig overrides
    encoder: str = api_only("pixel")            # sample quality / memorization feature space
    quality: bool = api_only(True)
    memorization_threshold: float | None = api_only(None)
    n_bootstrap: int = api_only(1000)

    def check(self) -> None:
        from ...engine.data.phantom_config import PhantomConfig
        from ...engine.evaluation.classifiers import CLASSIFIER_ARCHS
        ok = (*CLASSIFIER_ARCHS, "clip")
        bad = [c for c in self.classifiers if c not in ok]
        if bad or not self.classifiers:
            raise ValueError(f"experiment config: classifiers {bad or '[]'} not known; choose "
                             f"from {', '.join(ok)}")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError("experiment config: seeds must be a non-empty list of integers")
        for k in [*self.k_values, self.k]:
            if not (k == "all" or (isinstance(k, int) and k >= 1)):
                raise ValueError(f"experiment config: k value {k!r} must be an integer >= 1 or "
                                 f"\"all\"")
        for name, s in self.synthetic.items():
            if name == CONTROL or not name:
                raise ValueError(f"experiment config: synthetic source name {name!r} is reserved")
            if not isinstance(s, (str, dict)) or (isinstance(s, dict) and "kind" not in s):
                raise ValueError(f"experiment config: synthetic source {name!r} must be a dataset "
                                 f"dir or a generator spec with a 'kind'")
        try:
            PhantomConfig.from_dict(self.phantoms)
            self.clip_config()
        except ValueError as e:
            raise ValueError(f"experiment config: bad 'phantoms' or 'clip' key: {e}") from None
        if self.n_bootstrap < 10 or self.steps < 1 or self.batch < 1:
            raise ValueError("experiment config: n_bootstrap >= 10, steps >= 1, batch >= 1")

    def clip_config(self):
        from .train_clip import ClipTrainConfig
        return ClipTrainConfig.profile(self.clip_profile, **self.clip)
