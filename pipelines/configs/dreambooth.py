"""``DreamBoothConfig``: ``medfake finetune dreambooth`` (``pipelines/dreambooth.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...engine.core.config import JobConfig, api_only, option


@dataclass(frozen=True)
class DreamBoothConfig(JobConfig):
    """Everything that determines the fine-tuned model (``device`` aside).

    Defaults suit the tiny embedded generator on a CPU (prior preservation on; lr and steps
    picked on the hospital validation split). ``profile("sd15")`` is the DreamBooth paper's
    recipe for a real SD 1.5 on a GPU (add ``use_8bit_adam`` when bitsandbytes is installed).
    ``image_size`` 0 means the real dataset's size; ``k`` 0 means the whole split.
    """

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "sd15": dict(image_size=512, num_class_images=200, class_image_steps=30,
                     class_image_guidance=7.5, class_image_batch=4, steps=800, batch_size=1,
                     lr=5e-6, snr_gamma=None, mixed_precision="fp16",
                     instance_format="{token} {prompt}", gradient_checkpointing=True),
    }

    k: int = option(5, "real images per class (0: whole split)")
    kshot_seed: int = option(0, "seed of the k-shot subset")
    split: str = api_only("train")
    tokens: tuple[str, ...] = option(
        (), "one rare identifier per class (default sks ohwx phol)")  # () = DEFAULT_TOKENS
    instance_format: str = option("{prompt} {token}", "instance prompt")  # see the module doc
    prior_preservation: bool = option(True, "disable prior preservation", flag="--no-prior")
    num_class_images: int = option(50, "prior-preservation images per class",
                                   flag="--class-images")
    prior_loss_weight: float = option(1.0, "prior-preservation loss weight",
                                      flag="--prior-weight")
    class_image_steps: int = api_only(20)
    class_image_guidance: float = api_only(4.0)
    class_image_batch: int = api_only(16)
    steps: int = option(600, "optimisation steps")
    batch_size: int = option(4, "instance images per step (plus as many class images)")
    lr: float = option(1e-4, "learning rate")  # chosen on validation among 2e-5 ... 2e-4
    text_encoder_lr: float | None = api_only(None)    # None: lr
    warmup_steps: int = api_only(0)
    weight_decay: float = api_only(1e-2)
    train_text_encoder: bool = option(False, "fine-tune the text encoder too")
    lora_rank: int = option(0, "> 0: LoRA adapters of this rank (peft); 0: full fine-tune")
    lora_alpha: float | None = api_only(None)         # None: lora_rank (scale 1)
    snr_gamma: float | None = api_only(5.0)           # Min-SNR-gamma weighting; None = plain MSE
    hflip: bool = api_only(True)
    max_grad_norm: float = api_only(1.0)
    inpaint_full_mask_prob: float = api_only(0.25)
    image_size: int = option(0, "training resolution (0: the real dataset's)")
    checkpoint_every: int = option(100, "steps between checkpoints")
    seed: int = option(0, "training seed")
    mixed_precision: str = option("no", "no, fp16 (CUDA) or bf16", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = option(False, "recompute activations to save memory")
    use_8bit_adam: bool = option(False, "bitsandbytes AdamW8bit (CUDA)")
    device: str = option("auto", "auto (default), cpu, cuda, cuda:N")
