"""Metrics, SmallCNN, and the CLIP pretrain / resume / fine-tune / evaluate jobs (tiny scale)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from medfake.engine.evaluation.classifiers import SmallCNN, predict_proba, train_classifier
from medfake.engine.clip.model import create_clip, register_presets
from medfake.engine.data.writer import DatasetWriter
from medfake.engine.data.format import Sample
from medfake.engine.data.reader import load_split
from medfake.engine.evaluation.metrics import bootstrap_ci, classification_metrics, mean_std
from safetensors.torch import load_file

from medfake.engine.evaluation.clip_classify import ZeroShotClassifier
from medfake.pipelines.train_clip import (ClipClassifier, ClipTrainConfig, evaluate_classifier,
                                          finetune_classifier, pretrain_clip, zero_shot_eval)

CLASSES = ["cyst", "metastasis", "hemangioma"]
TEMPLATES = {c: [f"a CT image of a liver {c}", f"abdominal CT showing a liver {c}"]
             for c in CLASSES}


def _toy_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Trivially separable: class c is a bright square in a class-specific quadrant."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            im = rng.integers(0, 40, (32, 32)).astype(np.uint8)
            y0, x0 = [(2, 2), (2, 18), (18, 10)][c]
            im[y0:y0 + 12, x0:x0 + 12] = 220
            imgs.append(im)
            labels.append(c)
    return np.stack(imgs), np.asarray(labels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is as fast and avoids oversubscribing the
    (shared, 2-core) machine, where 2 threads per process made these tests 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrained(shard_dir, tmp_path_factory):
    """A finished test-profile pretraining run: (model.safetensors path, config)."""
    cfg = ClipTrainConfig.profile("test")
    return pretrain_clip([shard_dir], tmp_path_factory.mktemp("pre") / "run", cfg), cfg


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Random-noise captioned dataset: 3 train shards of 16, a test split of 12."""
    root = tmp_path_factory.mktemp("clipdata")
    imgs, labels = _toy_images(16, seed=1)
    rng = np.random.default_rng(0)
    with DatasetWriter(root, CLASSES, TEMPLATES, {"source": "test"}, 32,
                       samples_per_shard=16) as w:
        for i in rng.permutation(len(labels)):
            c = int(labels[i])
            w.add("train", Sample(f"s{i:04d}", imgs[i], c, TEMPLATES[CLASSES[c]][i % 2]))
        timgs, tlabels = _toy_images(4, seed=2)
        for i, (im, c) in enumerate(zip(timgs, tlabels)):
            w.add("test", Sample(f"t{i:04d}", im, int(c), TEMPLATES[CLASSES[c]][0]))
    return root


def test_metrics_hand_checked():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1],
                      [.1, .6, .3], [.1, .2, .7], [.5, .2, .3]])
    m = classification_metrics(y, probs, CLASSES)
    # predictions: 0 1 1 1 2 0 -> 4/6 correct; recalls 1/2, 2/2, 1/2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["sensitivity"] == pytest.approx({"cyst": .5, "metastasis": 1., "hemangioma": .5})
    # negatives predicted as the class: cyst 1 of 4, metastasis 1 of 4, hemangioma 0 of 4
    assert m["specificity"] == pytest.approx({"cyst": .75, "metastasis": .75, "hemangioma": 1.})
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # OvR AUCs by hand: cyst: pos scores .8,.2 vs neg .1,.1,.1,.5 -> (4 + 3)/8 = .875;
    # metastasis: pos .8,.6 vs .1,.7,.2,.2 -> (4 + 3)/8; hemangioma: pos .7,.3 vs .1,.1,.1,.3
    # -> (4 + 3.5)/8
    assert m["macro_auc"] == pytest.approx((.875 + .875 + 7.5 / 8) / 3)


def test_auc_nan_when_class_missing_and_mean_std():
    m = classification_metrics(np.array([0, 1]), np.eye(3)[[0, 1]], CLASSES)
    assert math.isnan(m["macro_auc"]) and math.isnan(m["sensitivity"]["hemangioma"])
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    assert mean_std([0.3]) == (0.3, 0.0)


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    probs[np.arange(150), y[:150]] += 1.0  # ~80% accurate
    point = classification_metrics(y, probs, CLASSES)
    for name in ("accuracy", "macro_auc"):
        lo, hi = bootstrap_ci(y, probs, name, n=100, seed=1)
        assert lo < point[name] < hi and hi - lo < 0.2
    assert bootstrap_ci(y, probs, "accuracy", n=50, seed=1) == bootstrap_ci(
        y, probs, "accuracy", n=50, seed=1)  # seeded


def test_small_cnn_learns_separable_toy_set():
    x, y = _toy_images(10, seed=0)
    model = train_classifier(x, y, steps=30, batch=16, lr=2e-3, seed=0, width=8)
    assert isinstance(model, SmallCNN)
    xt, yt = _toy_images(10, seed=5)
    probs = predict_proba(model, xt)
    assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == yt).mean() >= 0.9
    # augmented training runs and is deterministic for a seed (quadrant toy classes are not
    # flip-invariant, so only determinism is checked here)
    a = predict_proba(train_classifier(x, y, steps=2, batch=8, seed=3, augment=True, width=8), xt)
    b = predict_proba(train_classifier(x, y, steps=2, batch=8, seed=3, augment=True, width=8), xt)
    assert np.allclose(a, b)


def test_pretrain_checkpoint_loads_in_stock_open_clip(shard_dir, pretrained):
    final, cfg = pretrained
    assert final.name == "model.safetensors"
    register_presets()
    stock = open_clip.create_model(cfg.model, pretrained=None)
    stock.load_state_dict(load_file(final), strict=True)
    log = [json.loads(line) for line in (final.parent / "train_log.jsonl").read_text().split("\n")
           if line]
    assert [r["step"] for r in log] == [6] and all(r["samples_per_s"] > 0 for r in log)
    assert 0 <= log[-1]["data_stall"] <= 1 and len(log[-1]["samples_per_s_per_rank"]) == 1
    # a second call finds the finished run and does not train again
    calls = []
    assert pretrain_clip([shard_dir], final.parent, cfg,
                         on_step=lambda s, l: calls.append(s)) == final and not calls
    with pytest.raises(ValueError, match="other settings"):
        pretrain_clip([shard_dir], final.parent, replace(cfg, lr=cfg.lr * 2))


def test_resume_after_interruption_is_exact(shard_dir, tmp_path, pretrained):
    """Interrupted after the step-3 checkpoint and resumed, the run ends with exactly the
    weights of the uninterrupted ``pretrained`` run (same settings): data position, optimizer,
    schedule and RNG all continue."""
    cfg = ClipTrainConfig.profile("test")
    out = tmp_path / "run"
    seen: list[int] = []

    def killer(step: int, loss: float) -> None:
        seen.append(step)
        assert math.isfinite(loss)
        if step == 4:
            raise KeyboardInterrupt  # stands in for a kill after the step-3 checkpoint

    with pytest.raises(KeyboardInterrupt):
        pretrain_clip([shard_dir], out, cfg, on_step=killer)
    assert (out / "checkpoints" / "latest").read_text() == "step00000003" and seen == [1, 2, 3, 4]
    assert not (out / "model.safetensors").exists()
    resumed: list[int] = []
    final = pretrain_clip([shard_dir], out, cfg, on_step=lambda s, l: resumed.append(s))
    assert resumed == [4, 5, 6]
    reference, got = load_file(pretrained[0]), load_file(final)
    assert max((reference[k] - got[k]).abs().max().item() for k in reference) == 0.0
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain_clip([shard_dir], tmp_path / "fresh", replace(cfg, resume="require"))


def test_finetune_and_evaluate_both_arms(shard_dir, pretrained):
    final, cfg = pretrained
    train, test = load_split(shard_dir, "train"), load_split(shard_dir, "test")
    for init in (final, None):
        model = finetune_classifier(init, train, CLASSES, TEMPLATES, cfg)
        assert isinstance(model, ClipClassifier)
        m = evaluate_classifier(model, test, CLASSES, n_bootstrap=50)
        for key in ("accuracy", "balanced_accuracy", "macro_auc", "sensitivity",
                    "specificity", "confusion_matrix", "accuracy_ci95"):
            assert key in m
        assert 0 <= m["accuracy"] <= 1 and sum(map(sum, m["confusion_matrix"])) == len(test)
    zs = zero_shot_eval(final, test, CLASSES, TEMPLATES)
    assert set(zs["sensitivity"]) == set(CLASSES)
    assert zero_shot_eval(final.parent, test, CLASSES, TEMPLATES) == zs  # run dir works too


def test_finetune_modes_and_freezing(shard_dir, pretrained):
    """linear-probe trains only the head; image:1 freezing keeps all but the last layer group;
    contrastive tunes both towers and classifies zero-shot with the tuned text tower."""
    final, cfg = pretrained
    train, test = load_split(shard_dir, "train"), load_split(shard_dir, "test")
    start = load_file(final)
    probe = finetune_classifier(final, train, CLASSES, TEMPLATES,
                                replace(cfg, ft_mode="linear-probe"))
    assert all(torch.equal(v, start[f"visual.{k}"]) for k, v in probe.visual.state_dict().items())
    part = finetune_classifier(final, train, CLASSES, TEMPLATES, replace(cfg, ft_freeze=("image:1",)))
    vis = part.visual.state_dict()
    assert torch.equal(vis["conv1.weight"], start["visual.conv1.weight"])  # locked
    assert not torch.equal(vis["proj"], start["visual.proj"])  # last group trained
    con = finetune_classifier(final, train, CLASSES, TEMPLATES, replace(cfg, ft_mode="contrastive"))
    assert isinstance(con, ZeroShotClassifier)
    assert 0 <= evaluate_classifier(con, test, CLASSES, n_bootstrap=20)["accuracy"] <= 1
    with pytest.raises(ValueError, match="contrastive"):
        finetune_classifier(final, train, CLASSES, TEMPLATES, replace(cfg, ft_freeze=("text",)))


def test_zero_shot_head_reproduces_clip_logits():
    torch.manual_seed(0)
    clip, _, pre_eval, tok = create_clip("medfake-micro")
    from medfake.pipelines.train_clip import zero_shot_weights
    w = zero_shot_weights(clip, tok, CLASSES, TEMPLATES)
    clf = ClipClassifier(clip, w, clip.logit_scale.exp().item()).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = clip.logit_scale.exp() * torch.nn.functional.normalize(clip.encode_image(x), dim=-1) @ w.T
        assert torch.allclose(clf(x), ref, atol=1e-5)
