"""Rank program for tests/test_clip_deepspeed.py, started by ``torchrun --nproc_per_node 2``.

``python clip_dist_worker.py OUT DATA`` runs, in one process group (each part is one check):

1. ``equiv_zero{2,3}.pt``: two optimizer steps of ZeRO-2 and ZeRO-3 on a fixed batch of 16
   split 8 + 8 over the ranks (losses averaged over ranks, consolidated weights);
2. ``zero3/``: an uninterrupted ZeRO-3 pretraining run;
3. ``zero2/``: the same run with ZeRO-2;
4. ``killed/``: the ZeRO-2 run again, with rank 0 killed by SIGKILL after step 5 (the
   launcher then stops rank 1), which the test resumes through the CLI.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import open_clip
import torch
import torch.distributed as dist

from medfake.engine.clip.engine import EngineConfig, build_engine, clip_logits_scale
from medfake.engine.clip.model import create_clip
from medfake.engine.core.seeding import seed_everything
from medfake.pipelines.train_clip import ClipTrainConfig, _session, pretrain_clip

MODEL = "medfake-micro"
KILL_AFTER = 5


def run_cfg(zero: int):
    """The pretraining settings of parts 2-4 (the test's CLI resume repeats them)."""
    return ClipTrainConfig.profile("test", steps=8, zero=zero, checkpoint_every=4,
                                   tensorboard=True, log_every=4)


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randint(1, 400, (16, 16), generator=g)


def two_steps(backend: str, zero: int | None, rank: int, world: int
              ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Two optimizer steps on this rank's share of ``fixed_batch``: (global losses, weights)."""
    seed_everything(0)
    model = create_clip(MODEL)[0]
    cfg = EngineConfig(backend=backend, zero_stage=zero, micro_batch=16 // world, lr=1e-3,
                       warmup=1, total_steps=10, grad_clip=1.0)
    engine = build_engine(model, cfg, torch.device("cpu"), world)
    loss_fn = open_clip.ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, rank=rank,
                                 world_size=world)
    images, tokens = fixed_batch()
    share = slice(rank * 16 // world, (rank + 1) * 16 // world)
    losses = []
    for _ in range(2):
        o = engine.forward(images[share], tokens[share])
        loss = loss_fn(o["image_features"], o["text_features"], clip_logits_scale(o["logit_scale"]))
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
    return losses, engine.full_state_dict()


def main(out: Path, data: str) -> None:
    env, _, _ = _session(ClipTrainConfig.profile("test", deepspeed=True))
    for zero in (2, 3):
        losses, sd = two_steps("deepspeed", zero, env.rank, env.world_size)
        if env.rank == 0:
            torch.save({"losses": losses, "weights": sd}, out / f"equiv_zero{zero}.pt")
    pretrain_clip([data], out / "zero3", run_cfg(3))
    pretrain_clip([data], out / "zero2", run_cfg(2))

    def kill(step: int, loss: float) -> None:
        if step == KILL_AFTER and env.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    pretrain_clip([data], out / "killed", run_cfg(2), on_step=kill)
    raise SystemExit("rank 0 should have been killed")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), sys.argv[2])
