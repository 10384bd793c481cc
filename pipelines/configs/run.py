"""``RunConfig``: ``medfake run``, the whole chain (``pipelines/run.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only, option
from ...engine.data.phantom_config import PhantomConfig
from .train_clip import ClipTrainConfig
from .train_generator import GeneratorTrainConfig


@dataclass
class RunConfig(JobConfig):
    """The chain's settings. Profiles: ``embedded``, the documented run (<= 15 min on 2 cores),
    and ``test``, the CI-size chain."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "embedded": {},
        "test": dict(name="test",
                     phantoms=dict(n_public_per_class=120, n_train_per_class=20,
                                   n_val_per_class=5, n_test_per_class=20),
                     generator=GeneratorTrainConfig.profile("test"),
                     clip=ClipTrainConfig.profile("test"), synth_per_class=16, synth_steps=4,
                     seeds=(0, 1), cnn_steps=20),
    }
    DEFAULT_PROFILE: ClassVar[str] = "embedded"

    name: str = option("embedded", "run name: the run dir is OUT_ROOT/NAME (default: the "
                       "profile's name)")
    out_root: str = option("runs", "directory holding the run dirs")
    phantoms: PhantomConfig = api_only(default_factory=PhantomConfig)
    generator: GeneratorTrainConfig = api_only(default_factory=GeneratorTrainConfig)
    clip: ClipTrainConfig = api_only(default_factory=ClipTrainConfig)
    synth_per_class: int = api_only(300)
    synth_steps: int = api_only(20)
    guidance_scale: float = api_only(4.0)
    scheduler: str = api_only("dpm++")
    synth_backend: str = api_only("auto")      # fastest runnable: ONNX Runtime on a CPU machine
    k_shot: int = api_only(5)
    seeds: tuple[int, ...] = api_only((0, 1, 2))
    cnn_steps: int = api_only(200)
