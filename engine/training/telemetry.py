"""Training telemetry: loss, lr, samples/s (total and per rank) and data-stall fraction.

Every ``log_every`` optimizer steps (and at the last one) each rank's counters since the last
record are gathered (a small all-gather: every rank must call ``step`` at the same steps) and
rank 0 appends one JSON line to ``train_log.jsonl`` and writes the same scalars to TensorBoard
(``tensorboard/``). The data-stall fraction is the share of wall time a rank spent waiting for
its next batch. Rank 0 shows a tqdm bar.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..core.distributed import gather_floats

log = logging.getLogger(__name__)

JSONL_NAME, TB_DIR = "train_log.jsonl", "tensorboard"


class Telemetry:
    """Counters for one training run; ``out_dir`` None keeps only the progress bar."""

    def __init__(self, out_dir: Path | None, total_steps: int, start_step: int, desc: str,
                 is_main: bool, samples_per_step: int, log_every: int = 10,
                 steps_per_epoch: int = 0, tensorboard: bool = True, progress: bool = True):
        self.out_dir, self.is_main = out_dir, is_main
        self.total, self.log_every = total_steps, max(1, log_every)
        self.samples_per_step, self.steps_per_epoch = samples_per_step, steps_per_epoch
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step",
                        disable=not (is_main and progress), leave=False)
        self.jsonl = None
        self.tb = None
        if is_main and out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(out_dir / JSONL_NAME, "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / TB_DIR))
        self.records: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.stall = 0.0
        self.samples = 0
        self.loss_sum = 0.0
        self.n_loss = 0

    def data_wait(self, seconds: float) -> None:
        """Add time spent waiting for a batch."""
        self.stall += seconds

    def step(self, step: int, loss: float, lr: float, skipped: int = 0) -> dict | None:
        """Record optimizer step ``step`` (1-based); returns the record when one was written."""
        self.samples += self.samples_per_step
        self.loss_sum += loss
        self.n_loss += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step % self.log_every and step != self.total:
            return None
        wall = time.perf_counter() - self.t0
        per_rank = gather_floats([self.samples, wall, self.stall, self.loss_sum, self.n_loss,
                                  float(skipped)])
        self._reset()
        if not self.is_main:
            return None
        n = sum(r[4] for r in per_rank)
        rec = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4) if self.steps_per_epoch else None,
            "samples_seen": step * self.samples_per_step * len(per_rank),
            "loss": sum(r[3] for r in per_rank) / max(1.0, n),
            "lr": lr,
            "samples_per_s": sum(r[0] for r in per_rank) / max(1e-9, max(r[1] for r in per_rank)),
            "samples_per_s_per_rank": [r[0] / max(1e-9, r[1]) for r in per_rank],
            "data_stall": sum(r[2] for r in per_rank) / max(1e-9, sum(r[1] for r in per_rank)),
            "data_stall_per_rank": [r[2] / max(1e-9, r[1]) for r in per_rank],
            "interval_s": max(r[1] for r in per_rank),
            "skipped_samples": int(sum(r[5] for r in per_rank)),
            "time": time.time(),
        }
        self.records.append(rec)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for key in ("loss", "lr", "samples_per_s", "data_stall"):
                self.tb.add_scalar(f"train/{key}", rec[key], step)
            for r, v in enumerate(rec["samples_per_s_per_rank"]):
                self.tb.add_scalar(f"rank{r}/samples_per_s", v, step)
                self.tb.add_scalar(f"rank{r}/data_stall", rec["data_stall_per_rank"][r], step)
        return rec

    def close(self) -> None:
        self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
