"""The memorization audit compares each synthetic source with what its generator learned from.

A generator trained on the public corpus that copies it must be flagged, although the copies are
nowhere near the hospital train split (the reference the audit used before).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from medfake.engine.data.format import Sample
from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.engine.data.writer import DatasetWriter
from medfake.engine.evaluation.quality import load_encoder
from medfake.pipelines.experiment import audit_source
from medfake.pipelines.lineage import dataset_lineage


def _planted(small_world, tmp_path, n_exact=4, n_noised=4, n_novel=8):
    """A 'diffusion' dataset whose records name a model trained on the public corpus, holding
    exact and lightly noised copies of public images plus novel (random-blob) images."""
    public, hospital = small_world
    model = tmp_path / "model"
    model.mkdir()
    (model / "medfake_train.json").write_text(json.dumps({"complete": True,
                                                          "corpus": str(public)}))
    pub = load_split(public, "train")
    info = DatasetInfo.load(hospital)
    rng = np.random.default_rng(0)
    out = tmp_path / "planted"
    prov = {"generator": "diffusion", "job": {"lineage": {
        "model_dir": str(model), "real_dataset": str(hospital), "mode": "txt2img",
        "conditioned": False}}}
    planted = []
    with DatasetWriter(out, info.class_names, info.prompt_templates, prov, info.image_size, 1,
                       8) as w:
        for i in range(n_exact + n_noised):
            j = int(rng.integers(len(pub)))
            img = pub.images[j].astype(np.int16)
            if i >= n_exact:
                img = img + rng.integers(-2, 3, img.shape)
            key = f"copy{i:02d}"
            planted.append(key)
            w.add("train", Sample(key, np.clip(img, 0, 255).astype(np.uint8),
                                  int(pub.labels[j]), pub.captions[j], {"source": "synthetic"}))
        for i in range(n_novel):
            yy, xx = np.mgrid[:info.image_size, :info.image_size]
            cy, cx, r = rng.uniform(8, 24, 3)
            img = (40 + 150 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
                   + rng.normal(0, 20, yy.shape))
            w.add("train", Sample(f"novel{i:02d}", np.clip(img, 0, 255).astype(np.uint8),
                                  i % 3, "novel", {"source": "synthetic"}))
    return out, planted


def test_planted_copies_of_the_generators_corpus_are_flagged(small_world, tmp_path):
    public, hospital = small_world
    syn, planted = _planted(small_world, tmp_path)
    lin = dataset_lineage(syn)
    assert [r.dataset for r in lin.references] == [str(public.resolve())]
    train = load_split(hospital, "train")
    m = audit_source("planted", syn, train, load_encoder("pixel"), tmp_path / "a")
    assert (tmp_path / "a" / "memorization" / "planted_pairs.png").is_file()
    assert m["reference"] == "the generator's training data"
    assert m["sources"][0]["role"] == "generator training corpus"
    flagged = {f["synthetic_key"] for f in m["flagged"]}
    assert set(planted) <= flagged, f"missed copies: {set(planted) - flagged}"
    assert not any(k.startswith("novel") for k in flagged)
    assert all(f["real_key"].startswith("public/") for f in m["flagged"])

    # The old reference (the hospital train split, which this generator never saw) misses them.
    from medfake.engine.evaluation.memorization import audit_memorization
    old = audit_memorization(load_split(syn, "train"), train, load_encoder("pixel"))
    assert len({f["synthetic_key"] for f in old.flagged} & set(planted)) < len(planted)


def test_unrecorded_generator_falls_back_and_says_so(small_world, tmp_path):
    _, hospital = small_world
    syn, _ = _planted(small_world, tmp_path)
    (tmp_path / "model" / "medfake_train.json").unlink()
    m = audit_source("s", syn, load_split(hospital, "train"), load_encoder("pixel"), tmp_path)
    assert m["reference"].startswith("the real train split (fallback")
    assert "no medfake training record" in m["why"]


def test_eval_memorization_cli_reads_the_reference_from_the_records(small_world, tmp_path,
                                                                    capsys):
    from medfake.pipelines.cli import main
    syn, planted = _planted(small_world, tmp_path)
    main(["eval", "memorization", "--synthetic", str(syn), "--out", str(tmp_path / "m")])
    s = json.loads((tmp_path / "m" / "memorization.json").read_text())
    assert s["reference"] == "the generator's training data"
    assert s["n_flagged"] >= len(planted)
    (tmp_path / "model" / "medfake_train.json").unlink()
    with pytest.raises(SystemExit) as e:
        main(["eval", "memorization", "--synthetic", str(syn), "--out", str(tmp_path / "m2")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Pass --real DIR" in err and len(err.strip().splitlines()) == 1
