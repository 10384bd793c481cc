"""engine/memorization.py and the `medfake eval` commands (on the small phantom world)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medfake.engine.data.format import SplitArrays
from medfake.engine.data.reader import load_split
from medfake.engine.evaluation.memorization import audit_memorization, distance_histogram, pair_grid
from medfake.pipelines.cli import main


def _synthetic(train: SplitArrays) -> SplitArrays:
    """An exact copy of train[3], a lightly noised copy of train[5], two unrelated images."""
    noisy = (train.images[5].astype(int) + np.random.default_rng(0).integers(-2, 3,
             train.images[5].shape)).clip(0, 255).astype(np.uint8)
    size = train.images.shape[1:]
    images = np.stack([train.images[3], noisy, np.zeros(size, np.uint8),
                       np.full(size, 255, np.uint8)])
    keys = ["syn-copy", "syn-noisy", "syn-black", "syn-white"]
    return SplitArrays(images, np.array([0, 0, 1, 1]), [""] * 4, keys, [{}] * 4)


@pytest.fixture(scope="module")
def train(small_world):
    return load_split(small_world[1], "train")


def test_copies_are_flagged_with_their_real_key(train):
    syn = _synthetic(train)
    audit = audit_memorization(syn, train)
    assert audit.space == "pixel" and audit.metric == "rms"
    assert audit.threshold_rule.startswith("1/3 of the median")
    assert audit.threshold == pytest.approx(np.median(audit.reference) / 3)
    assert len(audit.reference) == len(train)
    flagged = audit.flagged
    assert [f["synthetic_key"] for f in flagged] == ["syn-copy", "syn-noisy"]  # closest first
    assert flagged[0]["real_key"] == train.keys[3]
    assert flagged[0]["distance"] == pytest.approx(0, abs=1e-6)
    assert flagged[1]["real_key"] == train.keys[5] and 0 < flagged[1]["distance"] < 0.02
    # the unrelated images are far beyond every training image's nearest neighbour
    assert audit.distances[2:].min() > audit.reference.max()
    js = audit.to_json()
    json.dumps(js)
    assert js["n_flagged"] == 2 and js["n_synthetic"] == 4 and js["n_real_train"] == len(train)
    assert js["distance_quantiles"]["min"] == pytest.approx(0, abs=1e-6)
    assert set(js["flagged"][0]) == {"synthetic_key", "real_key", "distance"}


def test_user_threshold_and_pair_grid(train, tmp_path):
    syn = _synthetic(train)
    audit = audit_memorization(syn, train, threshold=0.0)
    assert audit.threshold_rule == "user"
    assert [f["synthetic_key"] for f in audit.flagged] == ["syn-copy"]   # <= 0: exact copies
    s = 32 * 2   # 32x32 images upscaled 2x to >= 64 px cells
    grid = pair_grid(audit, syn, train)
    assert grid.shape == (s, 2 * s + 2, 3) and grid.dtype == np.uint8
    # synthetic left, its nearest real right: for the exact copy the halves are equal
    assert np.array_equal(grid[:, :s], grid[:, s + 2:])
    unrelated = syn.subset([2, 3])
    none = audit_memorization(unrelated, train)
    assert none.flagged == []
    grid = pair_grid(none, unrelated, train, max_pairs=1)   # no flag: the closest pair
    assert grid.shape == (s, 2 * s + 2, 3)
    assert pair_grid(none, unrelated, train).shape == (2 * s + 2, 2 * s + 2, 3)
    png = distance_histogram(audit, tmp_path / "h.png")
    assert Image.open(png).size[0] > 100


def test_audit_input_errors(train):
    with pytest.raises(ValueError, match="at least 2 real"):
        audit_memorization(_synthetic(train), train.subset([0]))


def test_eval_cli_smoke(small_world, tmp_path, capsys):
    public, hospital = (str(p) for p in small_world)
    main(["eval", "quality", "--real", hospital, "--synthetic", public, "--out", str(tmp_path)])
    q = json.loads((tmp_path / "quality.json").read_text())
    assert q["encoder"] == "pixel" and q["real_split"] == "test"
    assert set(q["per_class"]) == set(json.loads((small_world[1] / "dataset.json").read_text())
                                      ["class_names"])
    assert q["overall"]["n_real"] == len(load_split(hospital, "test"))
    main(["eval", "memorization", "--real", hospital, "--synthetic", public, "--out",
          str(tmp_path / "m"), "--threshold", "0.01"])
    m = json.loads((tmp_path / "m" / "memorization.json").read_text())
    assert m["threshold"] == 0.01 and m["threshold_rule"] == "user"
    for name in ("memorization_pairs.png", "memorization_hist.png"):
        Image.open(tmp_path / "m" / name).load()
    capsys.readouterr()
    for bad in (["--encoder", "nope"], ["--split", "nosuch"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "quality", "--real", hospital, "--synthetic", public, "--out",
                  str(tmp_path), *bad])
        assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["eval", "memorization", "--real", str(tmp_path / "missing"), "--synthetic",
              public, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "unknown encoder 'nope'" in err and "no split 'nosuch'" in err
    assert "does not exist" in err
