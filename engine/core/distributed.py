"""Launcher detection and process-group setup shared by medfake's distributed trainers.

``detect_env()`` reads the environment a launcher left behind and returns a ``DistEnv``:

* ``torchrun`` (``TORCHELASTIC_RUN_ID``), the ``deepspeed`` launcher (``CROSS_RANK``) or any
  launcher exporting ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (``env``);
* SLURM job steps started by ``srun`` (``SLURM_PROCID`` + ``SLURM_STEP_NUM_TASKS``); the master
  address is the first host of ``SLURM_STEP_NODELIST`` (``scontrol show hostnames`` when
  available) and the port ``MASTER_PORT`` or one derived from the job id;
* otherwise a single process (``none``).

``init_process_group(env)`` starts ``torch.distributed`` with NCCL when CUDA is available and gloo
otherwise. A single process that still needs a process group (DeepSpeed without a launcher)
gets a world of one on an in-process store, so no port is opened.

``prepare_deepspeed_comm()`` hands the process group to DeepSpeed. On its CPU accelerator
DeepSpeed would JIT-compile the ``deepspeed_shm_comm`` extension (~110 s on 2 cores) when its
comm backend is created; that extension only serves ``inference_all_reduce`` (tensor-parallel
inference), never training collectives, so it is marked unavailable unless
``MEDFAKE_DS_SHM_COMM=1``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SHM_COMM_ENV = "MEDFAKE_DS_SHM_COMM"


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``launcher`` is one of none, torchrun, deepspeed,
    slurm, env."""

    launcher: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(environ: dict, key: str, default: int) -> int:
    try:
        return int(environ.get(key, default))
    except ValueError as e:
        raise ValueError(f"environment variable {key}={environ[key]!r} is not an integer") from e


def _slurm_master(nodelist: str) -> str:
    """First host of a SLURM nodelist (``node[01-04],gpu7`` -> ``node01``)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                                 capture_output=True, text=True, timeout=30).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise ValueError(f"cannot parse SLURM nodelist {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def detect_env(environ: dict | None = None) -> DistEnv:
    """The ``DistEnv`` described by ``environ`` (default ``os.environ``); never modifies it."""
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in env
                    else "deepspeed" if "CROSS_RANK" in env else "env")
        world = _int(env, "WORLD_SIZE", 1)
        return DistEnv(launcher, _int(env, "RANK", 0), world, _int(env, "LOCAL_RANK", 0),
                       _int(env, "LOCAL_WORLD_SIZE", _int(env, "LOCAL_SIZE", world)),
                       env.get("MASTER_ADDR"), _int(env, "MASTER_PORT", 0) or None)
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        # Only srun job steps: a batch script also has SLURM_PROCID=0 and SLURM_NTASKS but is
        # a single process, which must not wait for peers.
        world = _int(env, "SLURM_STEP_NUM_TASKS", 1)
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        addr = env.get("MASTER_ADDR") or (_slurm_master(nodelist) if world > 1 else "127.0.0.1")
        port = _int(env, "MASTER_PORT", 0) or 20000 + _int(env, "SLURM_JOB_ID", 0) % 20000
        per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE", ""))  # e.g. "4(x2)"
        local_world = int(per_node.group()) if per_node else world
        return DistEnv("slurm", _int(env, "SLURM_PROCID", 0), world,
                       _int(env, "SLURM_LOCALID", 0), local_world, addr, port)
    return DistEnv()


def backend_for_device() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device_index(env: DistEnv, device_count: int) -> int:
    """The CUDA device (index among the visible ones) of the process ``env`` describes: its
    local rank (torchrun/deepspeed ``LOCAL_RANK``, srun ``SLURM_LOCALID``) modulo the visible
    devices. A launcher that already narrowed ``CUDA_VISIBLE_DEVICES`` to one GPU per process
    (SLURM ``--gpus-per-task``, array tasks) leaves one device, so every rank takes index 0.
    More local ranks than devices share them round-robin (logged as a warning)."""
    if device_count < 1:
        raise ValueError("no CUDA device to map ranks to")
    if env.local_world_size > device_count > 1 or (env.local_rank >= device_count > 1):
        log.warning("%d local ranks share %d visible GPUs: local rank %d uses GPU %d",
                    env.local_world_size, device_count, env.local_rank,
                    env.local_rank % device_count)
    return env.local_rank % device_count


def cuda_device_index(environ: dict | None = None) -> int | None:
    """This process's CUDA device index from the launcher's environment, or None without
    CUDA. Every GPU path (torch, ONNX Runtime's ``device_id``, TensorRT) uses this one."""
    if not torch.cuda.is_available():
        return None
    return local_device_index(detect_env(environ), torch.cuda.device_count())


def device_for(env: DistEnv) -> torch.device:
    """``cuda:LOCAL_RANK`` (see ``local_device_index``) when CUDA is available, and selects
    it as the current device; else CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device_index(env, torch.cuda.device_count()))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def job_device(environ: dict | None = None) -> torch.device:
    """The device this process should compute on (``device_for`` of the detected launcher)."""
    return device_for(detect_env(environ))


def init_process_group(env: DistEnv, timeout_s: float = 1800.0) -> None:
    """Start ``torch.distributed`` for ``env`` (idempotent).

    A distributed env uses ``env://`` rendezvous (SLURM's variables are exported as
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT first, as DeepSpeed expects them too);
    a single process gets a world of one on an in-process ``HashStore``.
    """
    if dist.is_initialized():
        return
    backend = backend_for_device()
    timeout = timedelta(seconds=timeout_s)
    if not env.is_distributed:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
        return
    if env.launcher == "slurm":
        for key, value in (("RANK", env.rank), ("WORLD_SIZE", env.world_size),
                           ("LOCAL_RANK", env.local_rank), ("MASTER_ADDR", env.master_addr),
                           ("MASTER_PORT", env.master_port)):
            os.environ.setdefault(key, str(value))
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise ValueError(f"{env.launcher} launch without MASTER_ADDR/MASTER_PORT; start with "
                         f"torchrun, deepspeed or srun, or export both variables")
    log.info("init %s process group: rank %d of %d (%s, master %s:%s)", backend, env.rank,
             env.world_size, env.launcher, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
    dist.init_process_group(backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=timeout)


def import_deepspeed():
    """``import deepspeed`` with its log handler on stderr (it binds stdout, and warns while
    importing), so commands keep stdout for their results; DeepSpeed INFO logs are muted."""
    if "deepspeed" not in sys.modules:
        with contextlib.redirect_stdout(sys.stderr):
            importlib.import_module("deepspeed")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return sys.modules["deepspeed"]


def prepare_deepspeed_comm() -> None:
    """Give the running process group to DeepSpeed without building its CPU shm extension."""
    deepspeed = import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and os.environ.get(SHM_COMM_ENV) != "1":
        import deepspeed.ops
        # A documented-mutable dict (deepspeed/ops/__init__.py): build_shm_op() returns None
        # for an op marked incompatible, and collectives stay on the gloo process group.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def gather_floats(values: list[float]) -> list[list[float]]:
    """All ranks' ``values`` (same length everywhere), as a list per rank; local when alone."""
    if world_size() == 1:
        return [list(values)]
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [o.cpu().tolist() for o in out]


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` from rank ``src`` on every rank (identity when alone)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
