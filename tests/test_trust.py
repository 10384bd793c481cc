"""One trust rule for inputs that can run code: a malicious TorchScript file and a malicious
DeepSpeed checkpoint never run without --trust-code; medfake's own signed checkpoints need no
flag; anything changed, unsigned or signed under another user's key does."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from medfake.engine.clip.engine import CheckpointDir, DeepSpeedEngine
from medfake.engine.clip.loop import resume_checkpoint
from medfake.engine.core.errors import UntrustedCodeError
from medfake.engine.core.trust import MANIFEST, sign_checkpoint, verify_checkpoint


class _Evil:
    """Unpickling this writes ``marker``: the proof that a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


class _FakeDeepSpeed:
    """Stands in for ``deepspeed.DeepSpeedEngine``: ``load_checkpoint`` reads the model states
    with DeepSpeed's own loader (``TorchCheckpointEngine.load``: ``torch.load(weights_only=
    False)``), as the real engine does."""

    global_steps = 1

    def load_checkpoint(self, root: str, tag: str):
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
            TorchCheckpointEngine,
        )
        path = Path(root) / tag / "mp_rank_00_model_states.pt"
        TorchCheckpointEngine().load(str(path), map_location="cpu")
        return str(path), {}


def _ds_engine() -> DeepSpeedEngine:
    eng = object.__new__(DeepSpeedEngine)  # no deepspeed.initialize: only load() is exercised
    eng.engine = _FakeDeepSpeed()
    eng.global_steps = 0
    return eng


def _checkpoint(root: Path, payload: object) -> CheckpointDir:
    ckpt = CheckpointDir(root)
    d = ckpt.path(ckpt.tag(1))
    d.mkdir(parents=True)
    torch.save(payload, d / "mp_rank_00_model_states.pt")
    rng = {"torch": torch.get_rng_state(), "python": [3, list(range(625)), None],
           "numpy": ["MT19937", [0] * 624, 0, 0, 0.0]}
    torch.save({"step": 1, "data": {}, "rng": rng}, d / "medfake_rank0.pt")
    (root / "latest").write_text(ckpt.tag(1))
    return ckpt


def test_malicious_deepspeed_checkpoint_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    foreign = _checkpoint(tmp_path / "foreign", {"module": _Evil(marker)})
    with pytest.raises(UntrustedCodeError, match="no medfake signature.*--trust-code"):
        resume_checkpoint(_ds_engine(), foreign)
    assert not marker.exists()

    # medfake's own checkpoint resumes without a flag (the fake loader reads clean states) ...
    own = _checkpoint(tmp_path / "own", {"module": {"w": torch.ones(2)}})
    sign_checkpoint(own.path("step00000001"))
    monkeypatch.setattr("medfake.engine.clip.loop._set_rng_state", lambda s: None)
    assert resume_checkpoint(_ds_engine(), own)[0] == 1
    # ... but not once a file was swapped after the save,
    d = own.path("step00000001")
    torch.save({"module": _Evil(marker)}, d / "mp_rank_00_model_states.pt")
    with pytest.raises(UntrustedCodeError, match="changed after it was saved"):
        resume_checkpoint(_ds_engine(), own)
    (d / "extra.pt").write_bytes(b"x")
    sign_foreign = tmp_path / "other-user-cache"
    # nor when it is signed under another user's (machine's) key
    with pytest.MonkeyPatch.context() as mp:   # not monkeypatch.undo(): that would also
        mp.setenv("MEDFAKE_CACHE", str(sign_foreign))   # undo conftest's trust reset
        sign_checkpoint(d)
    with pytest.raises(UntrustedCodeError, match="another user's or machine's key"):
        resume_checkpoint(_ds_engine(), own)
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(UntrustedCodeError, match="unreadable"):
        verify_checkpoint(d)
    assert not marker.exists()

    # The gate is what protects: with --trust-code the same checkpoint's pickle runs.
    monkeypatch.setenv("MEDFAKE_TRUST_CODE", "1")
    resume_checkpoint(_ds_engine(), foreign)
    assert marker.read_text() == "pwned"


def test_commit_signs_what_the_ranks_wrote(tmp_path):
    ckpt = CheckpointDir(tmp_path)
    d = ckpt.path(ckpt.tag(3))
    d.mkdir()
    (d / "mp_rank_00_model_states.pt").write_bytes(b"states")
    ckpt.commit(ckpt.tag(3), keep=2)
    verify_checkpoint(d)  # signed: no error
    (d / "mp_rank_00_model_states.pt").write_bytes(b"other")
    with pytest.raises(UntrustedCodeError):
        verify_checkpoint(d)


def test_torchscript_is_never_loaded_without_trust(tmp_path, monkeypatch):
    from medfake.engine.evaluation.quality import TorchScriptEncoder, load_encoder

    class Feat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    path = tmp_path / "enc.pt"
    torch.jit.save(torch.jit.script(Feat()), str(path))
    calls = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    with pytest.raises(UntrustedCodeError, match="TorchScript program.*--trust-code"):
        load_encoder(f"torchscript:{path}")
    assert calls == [], "torch.jit.load must never see an untrusted file"
    enc = TorchScriptEncoder(path, trust_code=True)
    assert calls and enc(torch.zeros(2, 8, 8, dtype=torch.uint8).numpy()).shape == (2, 3)


def test_cli_refuses_torchscript_encoder_in_one_line(tmp_path, small_world, capsys):
    from medfake.pipelines.cli import main

    _, hospital = small_world
    bad = tmp_path / "enc.pt"
    bad.write_bytes(b"PK\x03\x04 not even a zip, never opened")
    with pytest.raises(SystemExit) as e:
        main(["eval", "quality", "--real", str(hospital), "--synthetic", str(hospital),
              "--encoder", f"torchscript:{bad}", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    assert "TorchScript program" in err and "--trust-code" in err
    assert not (tmp_path / "q" / "quality.json").exists()


def test_export_of_a_foreign_zero_checkpoint_never_unpickles(tmp_path, monkeypatch):
    from medfake.pipelines.export_clip import checkpoint_state_dict

    marker = tmp_path / "pwned"
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    d = ckpt.path(ckpt.tag(2))
    d.mkdir(parents=True)
    torch.save({"optimizer_state_dict": _Evil(marker)},
               d / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UntrustedCodeError, match="no medfake signature"):
        checkpoint_state_dict(ckpt, ckpt.tag(2))
    assert not marker.exists()
