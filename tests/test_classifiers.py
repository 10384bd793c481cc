"""engine/classifiers.py: every arch builds and trains, local weights load (and wrong ones are
refused clearly), the shared transforms keep shape and dtype."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medfake.engine.evaluation.classifiers import (CLASSIFIER_ARCHS, SmallCNN, create_classifier,
                                                   predict_proba, train_classifier)
from medfake.engine.data.augmentation import augmentation, image_transforms
from medfake.engine.core.safe_load import UnsafeWeightsError, save_weights


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _toy(n: int = 16, size: int = 32, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: dark vs bright noisy squares."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    shape = (n, size, size, 3) if rgb else (n, size, size)
    base = np.where(y == 1, 180, 60).reshape(-1, *[1] * (len(shape) - 1))
    return (base + rng.integers(-30, 30, shape)).clip(0, 255).astype(np.uint8), y


def _loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    p = predict_proba(model, x)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def test_small_cnn_is_the_liver_lesion_architecture():
    m = create_classifier("small-cnn", 3)
    assert isinstance(m, SmallCNN)
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    pools = [l for l in m.features if isinstance(l, torch.nn.MaxPool2d)]
    dense = [l for l in m.head if isinstance(l, torch.nn.Linear)]
    drop = [l for l in m.head if isinstance(l, torch.nn.Dropout)]
    assert (len(convs), len(pools), len(dense)) == (6, 3, 2)
    assert drop[0].p == 0.5 and dense[-1].out_features == 3


@pytest.mark.parametrize("arch", CLASSIFIER_ARCHS)
def test_each_arch_trains_and_predicts(arch):
    x, y = _toy()
    torch.manual_seed(0)
    before = create_classifier(arch, 2)
    model = train_classifier(x, y, steps=8 if arch == "small-cnn" else 4, batch=8, arch=arch,
                             seed=0)
    assert not model.training
    p = predict_proba(model, x)
    assert p.shape == (16, 2) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    if arch == "small-cnn":   # no batch norm: eval-mode loss reflects the few steps
        assert _loss(model, x, y) < _loss(before, x, y)
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                       before.state_dict().values())]
    assert any(changed)


def test_timm_archs_accept_large_grayscale_and_rgb():
    for arch in ("resnet18", "efficientnetv2"):
        m = create_classifier(arch, 4, in_ch=1).eval()
        with torch.no_grad():
            assert m(torch.zeros(1, 1, 256, 256)).shape == (1, 4)
    x, y = _toy(n=4, rgb=True)
    p = predict_proba(train_classifier(x, y, steps=1, batch=4), x)
    assert p.shape == (4, 2)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="small-cnn, resnet18, efficientnetv2"):
        create_classifier("vgg", 2)


def test_local_weights_round_trip_resets_head(tmp_path):
    src = create_classifier("resnet18", 5, in_ch=3)
    path = save_weights(src.state_dict(), tmp_path / "r18.safetensors")
    m = create_classifier("resnet18", 2, in_ch=1, weights=str(path))
    assert m.fc.out_features == 2
    torch.testing.assert_close(m.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    # RGB stem summed/averaged to one input channel by timm's adapt_input_conv
    assert m.conv1.weight.shape[1] == 1
    small = create_classifier("small-cnn", 3)
    p2 = save_weights(small.state_dict(), tmp_path / "small.safetensors")
    again = create_classifier("small-cnn", 4, weights=str(p2))
    torch.testing.assert_close(again.features[2].weight, small.features[2].weight)
    assert again.head[4].out_features == 4
    # train_classifier passes weights through
    x, y = _toy(n=4)
    assert predict_proba(train_classifier(x, y, steps=1, batch=4, weights=str(p2)), x).shape \
        == (4, 2)


def test_pickled_weights_need_trust(tmp_path, monkeypatch):
    small = create_classifier("small-cnn", 2)
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(UnsafeWeightsError):
        create_classifier("small-cnn", 2, weights=str(path))
    monkeypatch.setenv("MEDFAKE_TRUST_PICKLE", "1")
    m = create_classifier("small-cnn", 2, weights=str(path))
    torch.testing.assert_close(m.features[0].weight, small.features[0].weight)


def test_wrong_arch_weights_name_file_and_arch(tmp_path):
    path = save_weights(create_classifier("small-cnn", 2).state_dict(), tmp_path / "s.safetensors")
    for arch in ("resnet18", "efficientnetv2"):
        with pytest.raises(ValueError, match=rf"{path}.*{arch}"):
            create_classifier(arch, 2, weights=str(path))
    # same arch, other image size: the dense layer does not fit
    with pytest.raises(ValueError, match="small-cnn"):
        create_classifier("small-cnn", 2, image_size=64, weights=str(path))


@pytest.mark.parametrize("warp", ["elastic", "affine", "either", None])
def test_transforms_keep_shape_and_dtype(warp):
    torch.manual_seed(0)
    for ch, size in ((1, 32), (3, 64)):
        img = torch.randint(0, 256, (ch, size, size), dtype=torch.uint8)
        out = image_transforms(size, warp=warp)(img)
        assert out.shape == img.shape and out.dtype == torch.uint8
    assert augmentation(32)(img[:1, :32, :32]).shape == (1, 32, 32)
    with pytest.raises(ValueError):
        image_transforms(32, warp="swirl")


def test_transforms_are_random_but_seedable():
    img = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
    t = image_transforms(32)
    torch.manual_seed(1)
    a = t(img)
    torch.manual_seed(1)
    assert torch.equal(a, t(img))
    assert not all(torch.equal(a, t(img)) for _ in range(3))
