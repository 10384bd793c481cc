"""The CLIP training loop shared by pretraining and fine-tuning, with exact resume.

``train_loop`` runs optimizer steps of ``accum`` micro-batches through a ``TrainEngine``,
records telemetry, and every ``checkpoint_every`` steps (and at the end) calls
``save_checkpoint``: the engine's state plus, per rank, ``medfake_rank{r}.pt`` holding the data
position and the torch/numpy/python (and CUDA) RNG states, then ``latest`` is moved to the new
tag. ``resume_checkpoint`` restores all of it, so a resumed run continues bit for bit.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..core import distributed as D
from .engine import CheckpointDir, TrainEngine
from ..core.safe_load import load_checkpoint
from ..training.telemetry import Telemetry

log = logging.getLogger(__name__)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v = state["python"]
    random.setstate((v[0], tuple(v[1]), v[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_file(ckpt: CheckpointDir, tag: str, r: int) -> Path:
    return ckpt.path(tag) / f"medfake_rank{r}.pt"


def save_checkpoint(engine: TrainEngine, ckpt: CheckpointDir, step: int, data: dict,
                    keep: int) -> str:
    """Engine state + this rank's data position and RNG under ``step``'s tag; then ``latest``."""
    tag = ckpt.tag(step)
    engine.save(ckpt, tag)
    ckpt.path(tag).mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "data": data, "rng": _rng_state()},
               _rank_file(ckpt, tag, D.rank()))
    ckpt.commit(tag, keep)
    return tag


def resume_checkpoint(engine: TrainEngine, ckpt: CheckpointDir) -> tuple[int, dict | None]:
    """Load ``latest`` if any; return (step, this rank's data state) or (0, None)."""
    tag = ckpt.latest()
    if tag is None:
        return 0, None
    f = _rank_file(ckpt, tag, D.rank())
    if not f.is_file():
        raise ValueError(f"{ckpt.path(tag)} has no state for rank {D.rank()}: it was written by "
                         f"fewer ranks; resume with the launch that wrote it")
    engine.load(ckpt, tag)
    state = load_checkpoint(f)
    _set_rng_state(state["rng"])
    if engine.global_steps != int(state["step"]):
        raise ValueError(f"{ckpt.path(tag)}: engine step {engine.global_steps} != data step "
                         f"{state['step']}; the checkpoint is inconsistent, delete it")
    log.info("resumed from %s (step %d)", ckpt.path(tag), state["step"])
    return int(state["step"]), state["data"]


def train_loop(engine: TrainEngine, batches: Iterator, loss_of: Callable[[Any], torch.Tensor],
               *, start: int, total: int, accum: int, telemetry: Telemetry,
               ckpt: CheckpointDir | None = None, checkpoint_every: int = 0, keep: int = 2,
               data_state: Callable[[], dict] | None = None,
               skipped: Callable[[], int] | None = None,
               on_step: Callable[[int, float], None] | None = None) -> None:
    """Optimizer steps ``start+1 .. total`` of ``accum`` micro-batches each, with telemetry,
    checkpoints every ``checkpoint_every`` steps and at the end, and ``on_step(step, loss)``."""
    step = start
    while step < total:
        losses = []
        lr = engine.lr()  # the rate this step uses
        for _ in range(accum):
            t = time.perf_counter()
            batch = next(batches)
            telemetry.data_wait(time.perf_counter() - t)
            loss = loss_of(batch)
            engine.backward(loss)
            boundary = engine.step()
            losses.append(float(loss.detach()))
        if not boundary:
            raise RuntimeError("engine and loop disagree on the accumulation boundary")
        step += 1
        mean_loss = sum(losses) / len(losses)
        telemetry.step(step, mean_loss, lr, skipped() if skipped else 0)
        if ckpt is not None and (step % checkpoint_every == 0 or step == total):
            save_checkpoint(engine, ckpt, step, data_state() if data_state else {}, keep)
        if on_step is not None:
            on_step(step, mean_loss)
