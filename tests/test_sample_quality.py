"""engine/sample_quality.py: metrics against closed forms and constructed point clouds, encoders."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medfake.engine.data.format import SplitArrays
from medfake.engine.evaluation.quality import (METRIC_KEYS, frechet_distance, load_encoder,
                                               one_nn_accuracy, precision_recall, quality_report)


def _white(n: int, d: int, seed: int) -> np.ndarray:
    """n points whose sample mean is exactly 0 and sample covariance (ddof=1) exactly I."""
    z = np.random.default_rng(seed).normal(size=(n, d))
    z -= z.mean(0)
    return z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(300, 8))
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    # N <= D (Ledoit-Wolf rule): still 0 for identical sets, finite otherwise
    few = np.random.default_rng(1).normal(size=(10, 50))
    assert frechet_distance(few, few) == pytest.approx(0, abs=1e-8)
    assert 0 < frechet_distance(few, few + 1) < math.inf


def test_frechet_shifted_gaussians_closed_form():
    real = _white(500, 3, seed=0)
    synth = _white(400, 3, seed=1) * np.array([1.0, 2.0, 3.0]) + np.array([1.0, 0.0, -1.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum_i (sigma1_i - sigma2_i)^2
    # = (1 + 0 + 1) + ((1-1)^2 + (1-2)^2 + (1-3)^2) = 2 + 5 = 7
    assert frechet_distance(real, synth) == pytest.approx(7.0, rel=1e-6)
    # general covariance: tr(A) + tr(B) - 2 tr(sqrt(A^1/2 B A^1/2)) with A = I, B = R diag R^T
    # -> the same 5 for any rotation R; shift |(3, 4, 0)|^2 = 25
    rot, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    synth2 = (_white(400, 3, seed=3) * np.array([1.0, 2.0, 3.0])) @ rot.T + np.array([3, 4, 0])
    assert frechet_distance(real, synth2) == pytest.approx(25 + 5, rel=1e-6)
    assert math.isnan(frechet_distance(real, synth[:1]))
    with pytest.raises(ValueError):
        frechet_distance(real, synth[:, :2])


def test_precision_recall_on_constructed_clouds():
    real = np.c_[np.arange(10.0), np.zeros(10)]            # 0..9 on a line; k=1 radius: 1
    synth = np.c_[np.r_[np.arange(5) + 0.5, np.arange(5) + 100.0], np.zeros(10)]
    # precision: 0.5..4.5 lie inside real balls, 100..104 do not -> 5/10
    # recall: synthetic k=1 radii are all 1; reals 0..5 are within 0.5 of 0.5..4.5, 6..9 are
    # >= 1.5 away -> 6/10
    assert precision_recall(real, synth, k=1) == pytest.approx((0.5, 0.6))
    p, r = precision_recall(real, real + 0.01, k=3)
    assert p == 1.0 and r == 1.0
    assert precision_recall(real, real + 1000) == (0.0, 0.0)
    assert all(math.isnan(v) for v in precision_recall(real, synth[:1]))


def test_one_nn_accuracy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    assert one_nn_accuracy(a, b) == pytest.approx(0.5, abs=0.07)
    assert one_nn_accuracy(a, b + 50) == 1.0
    # exact copies: every point's nearest other point is its twin from the other set
    assert one_nn_accuracy(a, a.copy()) == 0.0


def _split(images: np.ndarray, labels, prefix: str) -> SplitArrays:
    n = len(images)
    return SplitArrays(images, np.asarray(labels, dtype=np.int64), [""] * n,
                       [f"{prefix}-{i}" for i in range(n)], [{}] * n)


def test_quality_report_per_class_and_overall():
    rng = np.random.default_rng(0)
    real = _split(rng.integers(0, 256, (12, 16, 16), dtype=np.uint8), [0] * 6 + [1] * 6, "r")
    synth = _split(rng.integers(0, 256, (9, 16, 16), dtype=np.uint8), [0] * 9, "s")
    rep = quality_report(real, synth, load_encoder("pixel"), ["a", "b"])
    assert rep["encoder"] == "pixel" and rep["feature_dim"] == 256
    assert set(rep["overall"]) == set(METRIC_KEYS)
    assert (rep["overall"]["n_real"], rep["overall"]["n_synthetic"]) == (12, 9)
    assert (rep["per_class"]["a"]["n_real"], rep["per_class"]["a"]["n_synthetic"]) == (6, 9)
    b = rep["per_class"]["b"]
    assert b["n_synthetic"] == 0 and math.isnan(b["frechet_distance"])
    assert math.isnan(b["one_nn_accuracy"])
    json.dumps(rep)
    with pytest.raises(ValueError, match="differ in size"):
        quality_report(real, _split(np.zeros((3, 8, 8), np.uint8), [0] * 3, "s"),
                       load_encoder("pixel"), ["a", "b"])


def test_pixel_encoder():
    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[1] = 255
    f = load_encoder("pixel:8")(img)
    assert f.shape == (2, 64) and f.dtype == np.float32
    assert f[0].max() == 0 and f[1].min() == pytest.approx(1.0)


def test_bad_encoder_specs():
    for spec in ("foo", "clip:", "pixel:x", "torchscript"):
        with pytest.raises(ValueError, match="encoder"):
            load_encoder(spec)
    with pytest.raises(FileNotFoundError):
        load_encoder("torchscript:/nonexistent/enc.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
def test_torchscript_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFAKE_TRUST_CODE", "1")  # --trust-code: TorchScript runs code
    mod = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2),
                                               torch.nn.Flatten()))
    mod.save(str(tmp_path / "enc.pt"))
    enc = load_encoder(f"torchscript:{tmp_path / 'enc.pt'}")
    f = enc(np.full((3, 16, 16), 255, np.uint8))
    assert f.shape == (3, 12)
    np.testing.assert_allclose(f, 1.0)   # grayscale replicated to 3 channels, scaled to [0, 1]
    (tmp_path / "junk.pt").write_bytes(b"not a module")
    with pytest.raises(ValueError, match="TorchScript"):
        load_encoder(f"torchscript:{tmp_path / 'junk.pt'}")


def test_clip_encoder_from_a_pretrain_dir(tmp_path):
    from medfake.engine.clip.model import create_clip
    from medfake.engine.core.safe_load import save_weights
    model = create_clip("medfake-micro")[0]
    save_weights(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "clip_config.json").write_text(json.dumps({"model": "medfake-micro"}))
    enc = load_encoder(f"clip:{tmp_path}")
    assert enc.name == "clip:medfake-micro" and enc.metric == "cosine"
    f = enc(np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8))
    assert f.shape[0] == 4 and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_encoder(f"clip:{tmp_path / 'missing'}")
