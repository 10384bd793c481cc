"""Training engines for CLIP models: plain PyTorch (one process) or DeepSpeed ZeRO 1/2/3.

Both engines share one interface (``TrainEngine``): ``forward`` under the run's precision,
``backward`` (scaled for gradient accumulation), ``step`` (an optimizer step at each
accumulation boundary, with clipping and the cosine-with-warmup schedule), ``save``/``load`` of
a checkpoint tag directory and ``full_state_dict`` (consolidated fp32 weights).

DeepSpeed specifics handled here:

* open_clip's 0-dim ``logit_scale`` crashes ZeRO's flattening in ``deepspeed.initialize``
  (0.19.8): 0-dim parameters are reshaped to one element first (``reshape_scalar_params``) and
  ``to_stock_state_dict`` reshapes them back, so exported weights load into stock open_clip
  with ``strict=True``.
* The optimizer is torch AdamW passed as a client optimizer (``zero_allow_untested_optimizer``),
  which avoids DeepSpeed's JIT-built fused/CPU Adam ops (2-3 min builds on CPU).
* Config: a preset ``presets/deepspeed/zero{1,2,3}.json`` or any user JSON; batch sizes,
  accumulation, clipping and precision always come from the command line (a JSON that says
  otherwise is refused, naming the key).

Checkpoint layout (``CheckpointDir``): ``ROOT/<tag>/`` per checkpoint and ``ROOT/latest``
naming the last complete one, written atomically by rank 0 after every rank has finished
writing; an interrupted save is never pointed to.
"""
from __future__ import annotations

import abc
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.atomic import atomic_write_bytes, fsync_dir
from ..core.distributed import barrier, import_deepspeed, rank
from ..core.errors import DatasetError
from ..core.trust import sign_checkpoint, verify_checkpoint
from ..training.accel import Precision

log = logging.getLogger(__name__)

DS_PRESET_DIR = Path(__file__).parents[1] / "presets" / "deepspeed"
PRECISIONS = ("fp32", "bf16", "fp16")
TORCH_STATE = "torch_state.pt"
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class EngineConfig:
    """Optimisation settings common to both engines."""

    backend: str = "torch"          # "torch" (single process) or "deepspeed"
    zero_stage: int | None = None   # DeepSpeed preset 1/2/3 (None: 2, or the --ds-config's)
    ds_config: str | None = None    # user DeepSpeed JSON
    precision: str = "fp32"         # fp32 | bf16 | fp16 (fp16 needs CUDA)
    micro_batch: int = 64           # per rank
    grad_accum: int = 1
    grad_clip: float = 1.0          # max global grad norm; 0 disables
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: int = 50
    total_steps: int = 200


# ----------------------------------------------------------------------------- shared pieces

def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's rule: no weight decay on gains, biases, norms and ``logit_scale``;
    frozen parameters are left out."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("every parameter is frozen; relax --freeze")
    return [g for g in ({"params": no_decay, "weight_decay": 0.0},
                        {"params": decay, "weight_decay": weight_decay}) if g["params"]]


def make_adamw(groups: list[dict], cfg: EngineConfig) -> torch.optim.Optimizer:
    """torch AdamW, fused (one kernel per step, ~5x faster than foreach on CPU) when the
    parameters allow it."""
    kw = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, ValueError) as e:
        log.debug("fused AdamW unavailable (%s); using foreach", e)
        return torch.optim.AdamW(groups, foreach=True, **kw)


def reshape_scalar_params(model: nn.Module) -> list[str]:
    """Replace every 0-dim parameter by a 1-element one (same value); return their names."""
    names = []
    for mod_name, mod in model.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is not None and p.ndim == 0:
                mod._parameters[pname] = nn.Parameter(p.detach().reshape(1).clone(),
                                                      requires_grad=p.requires_grad)
                names.append(f"{mod_name}.{pname}" if mod_name else pname)
    return names


def to_stock_state_dict(sd: dict[str, torch.Tensor], shapes: dict[str, torch.Size]
                        ) -> dict[str, torch.Tensor]:
    """``sd`` as the stock model with parameter ``shapes`` (its ``state_dict`` shapes) expects
    it: no ``module.`` prefix, fp32, 1-element tensors back to 0-dim where the stock model has
    a scalar, ``logit_scale`` clamped to [0, ln 100] (training clamps the temperature in the
    loss, see ``clip_logits_scale``). Unknown or missing keys raise ValueError."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k not in shapes:
            raise ValueError(f"weight {k!r} is not part of the model; wrong --model?")
        v = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
        if v.shape != shapes[k] and v.numel() == shapes[k].numel():
            v = v.reshape(shapes[k])
        out[k] = v.contiguous()
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise ValueError(f"the weights lack {len(missing)} tensor(s) of the model, e.g. "
                         f"{missing[0]!r}; wrong --model?")
    if "logit_scale" in out:
        out["logit_scale"] = out["logit_scale"].clamp(0.0, LOGIT_SCALE_MAX)
    return out


def clip_logits_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """The temperature as open_clip_train keeps it: exp(logit_scale) at most 100.

    Clamped in the loss rather than in the parameter, because ZeRO keeps the master copy of a
    parameter in optimizer partitions that an in-place clamp on the module would not reach."""
    return logit_scale.clamp(max=100.0)


# ----------------------------------------------------------------------------- checkpoints

class CheckpointDir:
    """``ROOT/<tag>/`` checkpoints plus ``ROOT/latest``; tags are ``step%08d``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def tag(step: int) -> str:
        return f"step{step:08d}"

    def latest(self) -> str | None:
        """The tag ``ROOT/latest`` names, None if there is no pointer; an empty or corrupt
        pointer, or one naming a missing checkpoint, raises ``DatasetError`` saying the fix."""
        f = self.root / "latest"
        if not f.is_file():
            return None
        try:
            tag, readable = f.read_text().strip(), True
        except (OSError, UnicodeDecodeError) as e:
            tag, readable = f"<unreadable: {type(e).__name__}>", False
        if not readable or not tag or "/" in tag or tag in (".", "..") or not tag.isprintable():
            tags = sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and p.name.startswith("step"))
            raise DatasetError(f"{f} is empty or corrupt ({tag!r}); it must name a checkpoint "
                               f"directory of {self.root}" + (
                                   f" (the newest is {tags[-1]}): write that name into it"
                                   if tags else "") + ", or delete it to start over")
        if not (self.root / tag).is_dir():
            raise FileNotFoundError(f"{f} names checkpoint {tag!r}, which is missing; delete "
                                    f"{f} to start over or restore the directory")
        return tag

    def path(self, tag: str) -> Path:
        return self.root / tag

    def commit(self, tag: str, keep: int) -> None:
        """Sign ``tag`` (``engine.core.trust.sign_checkpoint``) and point ``latest`` at it
        (rank 0, after all ranks wrote), then drop old tags."""
        barrier()
        if rank() == 0:
            sign_checkpoint(self.path(tag))
            fsync_dir(self.root / tag)            # the tag's files are durable ...
            atomic_write_bytes(self.root / "latest", tag.encode())   # ... before the pointer
            tags = sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and p.name.startswith("step"))
            for old in tags[:-keep] if keep > 0 else []:
                if old != tag:
                    shutil.rmtree(self.root / old, ignore_errors=True)
        barrier()


# ----------------------------------------------------------------------------- engines

class TrainEngine(abc.ABC):
    """Interface shared by ``TorchEngine`` and ``DeepSpeedEngine``."""

    module: nn.Module
    device: torch.device
    input_dtype: torch.dtype = torch.float32
    global_steps: int = 0

    @abc.abstractmethod
    def forward(self, *args: Any, **kw: Any) -> Any:
        ...

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        ...

    @abc.abstractmethod
    def step(self) -> bool:
        """Count one micro-batch; at an accumulation boundary clip, step, schedule and return
        True."""
        ...

    @abc.abstractmethod
    def lr(self) -> float:
        ...

    @abc.abstractmethod
    def save(self, ckpt: CheckpointDir, tag: str) -> None:
        ...

    @abc.abstractmethod
    def load(self, ckpt: CheckpointDir, tag: str) -> None:
        ...

    @abc.abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Consolidated fp32 weights (a collective under DeepSpeed: call on every rank)."""
        ...


class TorchEngine(TrainEngine):
    """Single-process AdamW + LambdaLR with autocast (bf16; fp16 with a GradScaler on CUDA)."""

    def __init__(self, model: nn.Module, groups: list[dict], cfg: EngineConfig,
                 device: torch.device):
        self.cfg, self.device = cfg, device
        self.module = model.to(device)
        self.precision = Precision({"fp32": "no"}.get(cfg.precision, cfg.precision), device)
        self.optimizer = make_adamw(groups, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(cfg.warmup, cfg.total_steps))
        self.params = [p for g in groups for p in g["params"]]
        self.micro_steps = 0

    def forward(self, *args: Any, **kw: Any) -> Any:
        with self.precision.autocast():
            return self.module(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.cfg.grad_accum
        (self.precision.scaler.scale(loss) if self.precision.scaler else loss).backward()

    def step(self) -> bool:
        self.micro_steps += 1
        if self.micro_steps % self.cfg.grad_accum:
            return False
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_steps += 1
        return True

    def lr(self) -> float:
        return float(self.optimizer.param_groups[-1]["lr"])

    def save(self, ckpt: CheckpointDir, tag: str) -> None:
        d = ckpt.path(tag)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.precision.state_dict(), "global_steps": self.global_steps,
                    "micro_steps": self.micro_steps}, d / TORCH_STATE)

    def load(self, ckpt: CheckpointDir, tag: str) -> None:
        from ..core.safe_load import load_checkpoint
        f = ckpt.path(tag) / TORCH_STATE
        if not f.is_file():
            raise ValueError(f"{ckpt.path(tag)} is not a single-process checkpoint (no "
                             f"{TORCH_STATE}); resume it with the launcher and --deepspeed "
                             f"settings that wrote it")
        state = load_checkpoint(f)
        self.module.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        self.global_steps, self.micro_steps = int(state["global_steps"]), int(state["micro_steps"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float() if v.is_floating_point() else v.detach()
                for k, v in self.module.state_dict().items()}


def load_ds_config(cfg: EngineConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for ``cfg``: preset or user JSON plus the command-line settings."""
    if cfg.ds_config:
        path = Path(cfg.ds_config)
        if not path.is_file():
            raise FileNotFoundError(f"--ds-config {path} does not exist")
        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--ds-config {path} is not valid JSON ({e})") from e
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        if cfg.zero_stage is not None and cfg.zero_stage != stage:
            raise ValueError(f"--zero {cfg.zero_stage} contradicts zero_optimization.stage="
                             f"{stage} in {path}; drop one of them")
    else:
        stage = 2 if cfg.zero_stage is None else cfg.zero_stage
        if stage not in (1, 2, 3):
            raise ValueError(f"--zero must be 1, 2 or 3 (got {stage}); use --ds-config for more")
        ds = json.loads((DS_PRESET_DIR / f"zero{stage}.json").read_text())
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"the DeepSpeed config has a {section!r} section; medfake uses torch "
                             f"AdamW with a cosine schedule (--lr, --weight-decay, --warmup): "
                             f"remove it")
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": float(cfg.grad_clip),
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
    }
    for key, value in ours.items():
        if key in ds and ds[key] != value:
            raise ValueError(f"the DeepSpeed config sets {key}={ds[key]!r} but the command line "
                             f"gives {value!r} (--batch-size, --grad-accum, --grad-clip, "
                             f"--precision); remove {key} from the JSON")
    ds.update(ours)
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 1 << 30)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


class DeepSpeedEngine(TrainEngine):
    """``deepspeed.initialize`` around the model, torch AdamW and a LambdaLR schedule."""

    def __init__(self, model: nn.Module, cfg: EngineConfig, device: torch.device,
                 world_size: int):
        deepspeed = import_deepspeed()
        self.cfg, self.device = cfg, device
        self.ds_config = load_ds_config(cfg, world_size)
        self.zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.scalar_params = reshape_scalar_params(model)
        groups = param_groups(model, cfg.weight_decay)
        optimizer = make_adamw(groups, cfg)
        schedule = cosine_with_warmup(cfg.warmup, cfg.total_steps)
        # DeepSpeed reads LOCAL_RANK throughout (ZeRO-3 even in forward), also in a single
        # process started without a launcher
        os.environ.setdefault("LOCAL_RANK", "0")
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(device), optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
        self.module = self.engine.module
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            cfg.precision, torch.float32)

    def forward(self, *args: Any, **kw: Any) -> Any:
        return self.engine(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            self.global_steps = int(self.engine.global_steps)
        return boundary

    def lr(self) -> float:
        return float(self.engine.get_lr()[-1])

    def save(self, ckpt: CheckpointDir, tag: str) -> None:
        self.engine.save_checkpoint(str(ckpt.root), tag=tag, save_latest=False)

    def load(self, ckpt: CheckpointDir, tag: str) -> None:
        """DeepSpeed's loader unpickles the files (code can run): only a checkpoint this user
        signed (``CheckpointDir.commit``) or one trusted with ``--trust-code`` is read."""
        if (ckpt.path(tag) / TORCH_STATE).is_file():
            raise ValueError(f"{ckpt.path(tag)} was written by the single-process trainer; "
                             f"resume it without a launcher and without --deepspeed")
        verify_checkpoint(ckpt.path(tag))
        path, _ = self.engine.load_checkpoint(str(ckpt.root), tag=tag)
        if path is None:
            raise ValueError(f"DeepSpeed could not load {ckpt.path(tag)} (written with another "
                             f"ZeRO stage or world size?); resume with the same launch")
        self.global_steps = int(self.engine.global_steps)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        from deepspeed import zero
        from deepspeed.utils import safe_get_full_fp32_param
        sd: dict[str, torch.Tensor] = {}
        for name, p in self.module.named_parameters():
            full = safe_get_full_fp32_param(p)  # collective; None for frozen/plain parameters
            if full is None:
                with zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                    full = p.detach().clone()
            sd[name] = full.detach().float().cpu()
        for name, b in self.module.state_dict().items():
            if name not in sd:
                sd[name] = b.detach().cpu()
        return sd


def build_engine(model: nn.Module, cfg: EngineConfig, device: torch.device,
                 world_size: int) -> TrainEngine:
    """A ``TorchEngine`` or ``DeepSpeedEngine`` for ``model`` (weight-decay groups per
    ``param_groups``)."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; choose one of {PRECISIONS}")
    if cfg.grad_accum < 1:
        raise ValueError("--grad-accum must be at least 1")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if cfg.backend == "torch":
        if world_size > 1:
            raise ValueError("the single-process engine cannot run on several ranks; add "
                             "--deepspeed (launched runs use DeepSpeed by default)")
        return TorchEngine(model, param_groups(model, cfg.weight_decay), cfg, device)
    if cfg.backend == "deepspeed":
        return DeepSpeedEngine(model, cfg, device, world_size)
    raise ValueError(f"unknown engine backend {cfg.backend!r}")
