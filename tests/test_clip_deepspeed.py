"""DeepSpeed CLIP training with 2 processes on CPU (gloo): ZeRO-2/3, kill -9 + resume, export.

One ``torchrun`` launch of ``clip_dist_worker.py`` runs every 2-rank part (see its docstring);
the killed run is then resumed by the ``deepspeed`` launcher through the CLI. A fresh
``TORCH_EXTENSIONS_DIR`` shows that no DeepSpeed op is JIT-compiled on the way.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

from medfake.engine.clip.model import register_presets
from medfake.engine.data.writer import DatasetWriter
from medfake.engine.data.format import Sample
from medfake.pipelines.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).parent))
import clip_dist_worker as worker  # noqa: E402

BIN = Path(sys.executable).parent
CLASSES = ["cyst", "metastasis", "hemangioma"]
TEMPLATES = {c: [f"a CT image of a liver {c}", f"abdominal CT showing a liver {c}"]
             for c in CLASSES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(ext_dir: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ext_dir),
            "PYTHONUNBUFFERED": "1"}


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float().reshape(-1) - b[k].float().reshape(-1)).abs().max().item()
               for k in a)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """37 captioned samples in shards of 16, 16 and 5: the two ranks get 21 and 16 samples."""
    root = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(0)
    with DatasetWriter(root, CLASSES, TEMPLATES, {"source": "test"}, 32,
                       samples_per_shard=16) as w:
        for i in range(37):
            c = i % 3
            im = rng.integers(0, 40, (32, 32)).astype(np.uint8)
            y0, x0 = [(2, 2), (2, 18), (18, 10)][c]
            im[y0:y0 + 12, x0:x0 + 12] = 220
            w.add("train", Sample(f"s{i:04d}", im, c, TEMPLATES[CLASSES[c]][i % 2]))
    return root


@pytest.fixture(scope="module")
def dist_run(uneven, tmp_path_factory):
    """The 2-rank torchrun launch: (output dir, completed process, extensions dir)."""
    out = tmp_path_factory.mktemp("dist")
    ext = out / "torch_extensions"
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(Path(worker.__file__)), str(out), str(uneven)],
        env=launch_env(ext), capture_output=True, text=True, timeout=900)
    return out, proc, ext


def test_two_ranks_8_each_equal_one_rank_16(dist_run):
    """ZeRO-2 and ZeRO-3 over 2 ranks x 8 samples (ClipLoss local_loss + gather_with_grad)
    give the loss and the weights after two AdamW steps of one process with batch 16."""
    out, proc, _ = dist_run
    assert (out / "equiv_zero3.pt").exists(), proc.stderr[-3000:]
    ref_losses, ref = worker.two_steps("torch", None, rank=0, world=1)
    for zero in (2, 3):
        got = torch.load(out / f"equiv_zero{zero}.pt", weights_only=True)
        assert np.allclose(got["losses"], ref_losses, rtol=0, atol=1e-5), (zero, got["losses"])
        assert got["losses"][1] < got["losses"][0]
        assert max_diff(got["weights"], ref) < 1e-5


def test_zero2_zero3_runs_on_uneven_shards(dist_run):
    """Both 2-rank runs finish (equal batches on ranks with 21 and 16 samples: no hang), log
    per-rank telemetry, agree with each other, and build no DeepSpeed extension."""
    out, proc, ext = dist_run
    assert (out / "zero2" / "model.safetensors").exists(), proc.stderr[-3000:]
    for run in ("zero2", "zero3"):
        log = [json.loads(line) for line in (out / run / "train_log.jsonl").read_text().split("\n")
               if line]
        assert [r["step"] for r in log] == [4, 8]
        assert log[-1]["samples_seen"] == 8 * 8 * 2
        assert len(log[-1]["samples_per_s_per_rank"]) == 2 and log[-1]["samples_per_s"] > 0
        assert all(0 <= s <= 1 for s in log[-1]["data_stall_per_rank"])
        assert any((out / run / "tensorboard").iterdir())
        meta = json.loads((out / run / "clip_config.json").read_text())
        assert meta["finished"] and meta["settings"]["world_size"] == 2
    z2 = load_file(out / "zero2" / "model.safetensors")
    z3 = load_file(out / "zero3" / "model.safetensors")
    assert max_diff(z2, z3) < 1e-4  # same math, different reduction order
    assert not ext.exists() or not any(ext.iterdir())


def test_kill9_then_resume_equals_uninterrupted(dist_run, uneven):
    """Rank 0 is SIGKILLed after step 5 (checkpoint at 4); the same command through the
    ``deepspeed`` launcher resumes and ends with the uninterrupted run's weights."""
    out, proc, ext = dist_run
    killed = out / "killed"
    assert proc.returncode != 0 and "should have been killed" not in proc.stderr
    assert (killed / "checkpoints" / "latest").read_text() == "step00000004"
    assert not (killed / "model.safetensors").exists()
    cfg = worker.run_cfg(2)
    res = subprocess.run(
        [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
         "--module", "medfake.pipelines.cli", "train", "clip", "--stage", "pretrain",
         "--data", str(uneven), "--out", str(killed), "--profile", "test",
         "--steps", str(cfg.steps), "--zero", "2",
         "--checkpoint-every", str(cfg.checkpoint_every), "--resume", "require"],
        env=launch_env(ext), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and "(deepspeed, master" in res.stderr
    uninterrupted = load_file(out / "zero2" / "model.safetensors")
    assert max_diff(load_file(killed / "model.safetensors"), uninterrupted) <= 1e-5
    assert not ext.exists() or not any(ext.iterdir())


def test_export_zero3_checkpoint_loads_into_stock_open_clip(dist_run, tmp_path, capsys):
    """`medfake export clip` consolidates ZeRO-3 shards (zero_to_fp32) into a state dict that
    stock open_clip loads strictly, with a 0-dim logit_scale; latest equals the final weights."""
    out, proc, _ = dist_run
    register_presets()
    for tag, name in ((None, "final.safetensors"), ("step00000004", "step4.pt")):
        cli_main(["export", "clip", str(out / "zero3"), "--out", str(tmp_path / name)]
                 + (["--tag", tag] if tag else []))
        assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / name)
    sd = load_file(tmp_path / "final.safetensors")
    stock = open_clip.create_model("medfake-micro", pretrained=None)
    stock.load_state_dict(sd, strict=True)
    assert stock.logit_scale.ndim == 0
    assert max_diff(sd, load_file(out / "zero3" / "model.safetensors")) == 0.0
    step4 = torch.load(tmp_path / "step4.pt", weights_only=True)
    stock.load_state_dict(step4, strict=True)
    assert max_diff(step4, sd) > 0  # an earlier state
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "clip", str(tmp_path / "empty"), "--out", str(tmp_path / "x.pt")])
    assert e.value.code == 2


def test_launcher_detection():
    from medfake.engine.core.distributed import detect_env
    assert detect_env({}).launcher == "none" and not detect_env({}).is_distributed
    tr = detect_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                     "MASTER_ADDR": "n0", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"})
    assert (tr.launcher, tr.rank, tr.world_size, tr.local_rank, tr.master_port) == \
        ("torchrun", 1, 4, 1, 29500)
    ds = detect_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "CROSS_RANK": "0",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert ds.launcher == "deepspeed" and ds.is_distributed and ds.is_main
    sl = detect_env({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4",
                     "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234",
                     "SLURM_STEP_TASKS_PER_NODE": "2(x2)"})
    assert (sl.launcher, sl.rank, sl.world_size, sl.local_rank, sl.local_world_size) == \
        ("slurm", 3, 4, 1, 2)
    assert sl.master_addr == "gpu07" and sl.master_port == 21234
    # an sbatch script (no srun step) is one process, not rank 0 of a job waiting for peers
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).launcher == "none"


def test_deepspeed_config_presets_and_conflicts(tmp_path):
    from medfake.engine.clip.engine import EngineConfig, load_ds_config
    cfg = EngineConfig(backend="deepspeed", zero_stage=3, micro_batch=8, grad_accum=2,
                       grad_clip=0.5, precision="bf16")
    ds = load_ds_config(cfg, world_size=4)
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 64
    assert ds["bf16"]["enabled"] and ds["gradient_clipping"] == 0.5
    assert ds["zero_allow_untested_optimizer"]
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 1},
                                "train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu"):
        load_ds_config(EngineConfig(ds_config=str(user), micro_batch=8), 1)
    with pytest.raises(ValueError, match="contradicts"):
        load_ds_config(EngineConfig(ds_config=str(user), zero_stage=2), 1)
    user.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="optimizer"):
        load_ds_config(EngineConfig(ds_config=str(user)), 1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA"):
            load_ds_config(EngineConfig(precision="fp16"), 1)
