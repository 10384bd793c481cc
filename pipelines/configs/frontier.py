"""``FrontierConfig``: ``medfake bench frontier`` (``pipelines/frontier.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only, option
from .synth import BACKEND_CHOICES

BASELINE = {"scheduler": "dpm++", "steps": 20, "cfg_cutoff": 1.0, "deep_cache_interval": 1}


@dataclass
class FrontierConfig(JobConfig):
    """A quality-cost sweep: every combination of ``schedulers`` x ``steps`` x ``cfg_cutoffs``
    x ``cache_intervals`` (plus the baseline, 20-step DPM++ with guidance on every step and no
    caching) is synthesised as a ``medfake synth`` job of ``per_class`` images per class, timed,
    and scored against two real held-out splits: the recommendation is chosen on
    ``select_split`` (val) and reported on ``eval_split`` (test); the ``downstream_top`` best
    settings on the frontier (and the baseline) also train the small CNN at k-shot over
    ``downstream_seeds``, scored on both splits."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # seconds on a micro model: what the tests run
        "test": dict(schedulers=("dpm++",), steps=(2,), cfg_cutoffs=(1.0,),
                     cache_intervals=(1, 2), per_class=2, batch_size=6, downstream_top=1,
                     downstream_seeds=(0,), cnn_steps=2, baseline_steps=2),
    }

    model_dir: str = option(help="diffusers model dir (or an ONNX/TensorRT export dir)",
                            flag="--model")
    real_dataset: str = option(help="real dataset: prompts, k-shot train images, held-out split",
                               flag="--real")
    out_dir: str = option("runs/frontier", "results dir (per-setting results are kept there: a "
                          "rerun resumes)", flag="--out")
    schedulers: tuple[str, ...] = option(("dpm++", "euler"), "schedulers to sweep")
    steps: tuple[int, ...] = option((20, 10, 6), "step counts to sweep")
    cfg_cutoffs: tuple[float, ...] = option((1.0, 0.5), "CFG truncation cutoffs to sweep")
    cache_intervals: tuple[int, ...] = option((1, 2, 3), "DeepCache intervals to sweep (1 = off)")
    per_class: int = option(100, "synthetic images per class per setting")
    guidance_scale: float = option(4.0, "classifier-free guidance scale", flag="--guidance")
    backend: str = option("torch", "backend every setting runs on", choices=BACKEND_CHOICES)
    batch_size: int = option(32, "images per backend call")
    threads: int | None = option(None, "backend threads (default: torch's)")
    seed: int = option(0, "synthesis seed")
    encoders: tuple[str, ...] = option(("pixel",), "feature spaces for FD and precision/recall "
                                       "(pixel, pixel:SIZE, clip:PATH); the first ranks settings")
    select_split: str = option("val", "real held-out split the recommendation is chosen on "
                               "(FD, recall, CNN accuracy); never the split it is reported on")
    eval_split: str = option("test", "real held-out split the results are reported on (every "
                             "setting's FD/precision/recall, the CNN accuracy of those trained)")
    speed: str = option("wall", "what ranks the settings: wall (images/s) or cpu (images per "
                        "CPU second: robust on a shared machine with --threads 1)",
                        choices=("wall", "cpu"))
    tolerance: float = option(0.05, "a setting matches the baseline when its FD is within this "
                              "fraction of the baseline's")
    recall_tolerance: float | None = option(None, "also require recall (first feature space) "
                                            "within this fraction of the baseline's (default: "
                                            "FD only)")
    downstream_top: int = option(3, "frontier settings (cheapest first) that also train the "
                                 "downstream CNN")
    downstream_seeds: tuple[int, ...] = option((0, 1, 2), "k-shot subset and CNN seeds")
    k: int = option(5, "real images per class in the downstream train set")
    cnn_steps: int = option(200, "small-CNN training steps")
    baseline_steps: int = api_only(BASELINE["steps"])

    def check(self) -> None:
        from ...engine.diffusion.sampler import SCHEDULERS
        bad = sorted(set(self.schedulers) - set(SCHEDULERS))
        if bad:
            raise ValueError(f"unknown scheduler(s) {bad}; choose from {sorted(SCHEDULERS)}")
        if any(s < 1 for s in self.steps) or any(k < 1 for k in self.cache_intervals):
            raise ValueError("--steps and --cache-intervals must be >= 1")
        if any(not 0 <= c <= 1 for c in self.cfg_cutoffs):
            raise ValueError("--cfg-cutoffs are fractions of the steps in [0, 1]")
        if self.recall_tolerance is not None and not 0 <= self.recall_tolerance <= 1:
            raise ValueError("--recall-tolerance is a fraction in [0, 1]")
        if self.select_split == self.eval_split:
            raise ValueError(f"--select-split and --eval-split are both {self.eval_split!r}: "
                             "a setting chosen on the split it is reported on is tuned on "
                             "test; choose on another held-out split (default: val)")
        if self.per_class < 2 or self.tolerance < 0 or not self.downstream_seeds:
            raise ValueError("--per-class must be >= 2, --tolerance >= 0, and at least one "
                             "--downstream-seeds")
