"""``ClipTrainConfig``: ``medfake train clip`` (``pipelines/train_clip.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only, option

FT_MODES = ("zeroshot-head", "linear-probe", "contrastive")
AUGMENT_CHOICES = ("none", "openclip", "classic", "skin")  # engine.clip.data.AUGMENTS (torch)


@dataclass
class ClipTrainConfig(JobConfig):
    """Pretraining (``steps`` ...) and fine-tuning (``ft_*``) settings; batch sizes are per rank.
    Profiles: ``default`` (alias ``embedded``) and ``test``."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "embedded": {},
        "test": dict(model="medfake-micro", steps=6, batch_size=8, warmup=2, shuffle_buffer=16,
                     workers=0, checkpoint_every=3, ft_steps=10, ft_batch=8, tensorboard=False),
    }

    model: str = option("medfake-tiny", "open_clip model or medfake preset")
    split: str = api_only("train")            # split of each dataset used for pretraining
    steps: int = option(200, "pretrain: optimizer steps (ignored when --epochs > 0)")
    epochs: int = option(0, "pretrain: epochs of sum(dataset sizes) samples (overrides --steps)")
    batch_size: int = option(64, "pretrain: micro-batch per rank")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(5e-4, "pretrain: peak learning rate")
    weight_decay: float = api_only(0.1)
    grad_clip: float = api_only(1.0)          # max global grad norm (0 disables)
    warmup: int = api_only(50)
    seed: int = api_only(0)
    shuffle_buffer: int = option(2000, "pretrain: sample shuffle buffer (must exceed n_classes x "
                                 "shard size if shards are class-pure)")
    workers: int = option(1, "pretrain: data worker processes per rank (0: in-process)")
    resampled: bool = option(False, "pretrain: draw shards with replacement (multi-node)")
    augment: str = option("openclip", "pretrain augmentation (skin: crop, flips, rotation, "
                          "elastic, brightness/contrast)", choices=AUGMENT_CHOICES)
    precision: str = option("fp32", "fp32 (default), bf16, or fp16 (CUDA only)",
                            choices=("fp32", "bf16", "fp16"))
    deepspeed: bool = option(False, "train through DeepSpeed even in one process (launched runs "
                             "always do)")
    zero: int | None = option(None, "DeepSpeed ZeRO stage preset (engine/presets/deepspeed/"
                              "zeroN.json)", choices=(1, 2, 3))
    ds_config: str | None = option(None, "DeepSpeed JSON config instead of a preset")
    checkpoint_every: int = option(100, "pretrain: steps between checkpoints")
    keep_checkpoints: int = api_only(2)
    resume: str = option("auto", "pretrain: auto (default) continues --out's latest checkpoint "
                         "if any; require fails without one; never refuses an --out holding a "
                         "run", choices=("auto", "require", "never"))
    log_every: int = option(10, "pretrain: steps between telemetry records")
    tensorboard: bool = option(True, "pretrain: JSONL log only (no TensorBoard)")
    ft_mode: str = option("zeroshot-head", "finetune: head from class-prompt embeddings "
                          "(default), linear probe on a frozen image tower, or contrastive "
                          "image-prompt training", flag="--finetune-mode", choices=FT_MODES)
    ft_freeze: tuple[str, ...] = option(
        (), "finetune: lock image[:N] or text[:N] (all but the last N groups/layers); "
        "repeatable", flag="--freeze", action="append", metavar="TOWER[:N]")
    ft_steps: int = option(150, "finetune: steps per seed")
    ft_batch: int = api_only(32)
    ft_lr: float = api_only(3e-4)
    ft_weight_decay: float = api_only(0.05)
    ft_augment: str = api_only("classic")
    mix: tuple[str, ...] = option(
        (), "pretrain: add a source drawn with relative WEIGHT (repeatable; --data dirs "
        "together have weight 1), e.g. --mix real:0.1", action="append", metavar="DIR:WEIGHT")
