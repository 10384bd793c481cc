"""The two embedded worlds (docs/worlds.md) and the control drawn from each world's corpus."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from medfake.engine.data.corpus_control import ControlCorpus, corpus_world, draw_per_class
from medfake.engine.data.format import SplitArrays
from medfake.engine.data.phantoms import CLASS_NAMES, PhantomConfig, make_phantom_world
from medfake.engine.data.phantoms_general import (
    _KINDS,
    _POOLS,
    _PREFIX,
    _TARGETS,
    CORPUS_KINDS,
    GENERAL_PROMPT_TEMPLATES,
    TARGET_FRACTION,
    kind_counts,
)
from medfake.engine.data.reader import DatasetInfo, load_split

# a class name, its plural or its adjective ("cystic", "metastatic", "hemangiomatous")
CLASS_WORD = re.compile(r"cyst|metasta|h(a)?emangiom|hepatic", re.IGNORECASE)
SMALL = dict(n_public_per_class=4, n_train_per_class=3, n_val_per_class=1, n_test_per_class=2,
             seed=3, samples_per_shard=5)
GEN = {**SMALL, "samples_per_shard": 200}  # few shards: fewer fsyncs


def _sha(path) -> str:
    return hashlib.sha256((path / "dataset.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    cfg = PhantomConfig(world="general", corpus_size=600, **GEN)
    return make_phantom_world(tmp_path_factory.mktemp("general"), cfg)


def test_near_world_is_byte_identical_to_before_the_general_world(tmp_path):
    """dataset.json (which holds every shard's sha256) as written by the code before the
    ``general`` world existed (commit f34c80d), and the same embedded-world cache key."""
    from medfake.engine.core.seeding import derive_seed
    cfg = PhantomConfig(**SMALL)
    public, hospital = make_phantom_world(tmp_path, cfg)
    assert _sha(public) == "1c4d549542ab03b579b59850447b46c984ec1c5d284df96662de9dde11576663"
    assert _sha(hospital) == "b9cc598176bf96939672c6bd20f74f3e19f2a4b767f3cdf7f72d4622d029862f"
    assert corpus_world(DatasetInfo.load(public)) == "near"
    assert "world" not in DatasetInfo.load(public).provenance
    cfg_pub4 = PhantomConfig(seed=3, n_public_per_class=4)
    assert derive_seed(json.dumps(cfg_pub4.identity(), sort_keys=True)) % 10**10 == 4313945343


def test_general_world_is_deterministic_and_says_so(general, tmp_path):
    cfg = PhantomConfig(world="general", corpus_size=600, **GEN)
    again = make_phantom_world(tmp_path, cfg)
    for a, b in zip(general, again):
        assert _sha(a) == _sha(b)
    public, hospital = general
    for d in general:
        assert DatasetInfo.load(d).provenance["world"] == "general"
        assert DatasetInfo.load(d).provenance["config"]["corpus_size"] == 600
    info = DatasetInfo.load(public)
    assert info.class_names == CORPUS_KINDS and not set(CORPUS_KINDS) & set(CLASS_NAMES)
    assert info.splits["train"]["count"] == 600


def test_hospital_is_the_same_task_with_appearance_prompts(general, tmp_path):
    _, near_hospital = make_phantom_world(tmp_path, PhantomConfig(**GEN))
    _, hospital = general
    info = DatasetInfo.load(hospital)
    assert info.class_names == CLASS_NAMES
    assert info.prompt_templates == GENERAL_PROMPT_TEMPLATES
    for split in ("train", "val", "test"):
        a, b = load_split(near_hospital, split), load_split(hospital, split)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert [m["patient_id"] for m in a.metas] == [m["patient_id"] for m in b.metas]
        assert {b.captions[i] for i in np.flatnonzero(b.labels == 0)} == {
            GENERAL_PROMPT_TEMPLATES["cyst"][0]}
    assert not any(CLASS_WORD.search(t) for ts in GENERAL_PROMPT_TEMPLATES.values() for t in ts)


def test_targets_rare_and_never_named_in_captions(general):
    counts = kind_counts(6000)
    assert sum(counts.values()) == 6000
    assert [counts[k] for k in _TARGETS] == [60, 60, 60]  # TARGET_FRACTION of the default corpus
    pub = load_split(general[0], "train")
    truth = [m.get("hospital_class") for m in pub.metas]
    for name in CLASS_NAMES:
        assert truth.count(name) == round(TARGET_FRACTION * len(pub))
    assert not [c for c in pub.captions if CLASS_WORD.search(c)]
    # every caption the grammar can produce, not only the ones drawn
    words = [t for _, ts in _KINDS.values() for t in ts] + [t for _, ts in _TARGETS.values()
                                                          for t in ts]
    words += [w for pool in _POOLS.values() for w in pool] + _PREFIX
    assert not [w for w in words if CLASS_WORD.search(w)]
    assert len(set(pub.captions)) > 100  # varied wording


def _pool(captions: list[str]) -> SplitArrays:
    n = len(captions)
    return SplitArrays(np.zeros((n, 4, 4), np.uint8), np.zeros(n, np.int64), list(captions),
                       [f"k{i}" for i in range(n)], [{} for _ in range(n)])


TEMPLATES = {"cyst": ["a round dark sharply bounded spot"],
             "metastasis": ["a dark spot with a bright irregular ring"],
             "hemangioma": ["bright nodules at the edge of a round area"]}


def test_retrieval_control_count_determinism_and_preference():
    caps = (["a round dark sharply bounded spot"] * 3 + ["dark spot, bright irregular ring"] * 3
            + ["bright nodules at the edge of a round area"] * 3
            + ["normal liver tissue"] * 5  # matches no class: drawn for none
            + ["a round dark spot in grey tissue"] * 3 + ["a bright irregular ring of bone"] * 3
            + ["bright nodules at an organ edge"] * 3)
    info = DatasetInfo(None, ["a"], {}, 4, 1, {"world": "general"}, {})
    cc = ControlCorpus(_pool(caps), info, CLASS_NAMES, TEMPLATES)
    assert cc.method == "caption-retrieval"
    d = cc.draw(3, seed=0)
    assert np.bincount(d.labels).tolist() == [3, 3, 3]
    for c in range(3):  # the exact matches come first
        got = {d.captions[i] for i in np.flatnonzero(d.labels == c)}
        assert got == {caps[3 * c]}
    assert cc.draw(3, 0).keys == d.keys  # deterministic
    assert cc.capacity() == 6
    big = cc.draw(8, 0)  # more than the corpus can supply: all 6 matches, no unrelated image
    assert np.bincount(big.labels).tolist() == [6, 6, 6]
    assert len(set(big.keys)) == 18  # no image in two classes
    assert "normal liver tissue" not in big.captions
    assert all(big.metas[i]["retrieved_for"] == CLASS_NAMES[big.labels[i]] for i in range(18))
    scores = [m["retrieval_score"] for m, lab in zip(big.metas, big.labels) if lab == 0]
    assert scores == sorted(scores, reverse=True)
    # seeds choose among equally good matches only
    tied = [cc.draw(4, s).keys for s in range(6)]
    assert len({tuple(k) for k in tied}) > 1
    assert all(set(k) >= set(d.keys) for k in tied)
    # neither labels nor metas are read: the same draw from a pool with them scrambled
    p2 = _pool(caps)
    p2.labels[:] = np.arange(len(caps)) % 3
    for m in p2.metas:
        m["hospital_class"] = "cyst"
    assert ControlCorpus(p2, info, CLASS_NAMES, TEMPLATES).draw(3, 0).keys == d.keys
    with pytest.raises(ValueError, match="no prompt templates"):
        ControlCorpus(_pool(caps), info, CLASS_NAMES, {"cyst": ["x"]}).draw(1, 0)


def test_near_control_is_the_class_label_draw(small_world):
    public, hospital = small_world
    h = DatasetInfo.load(hospital)
    cc = ControlCorpus.load(public, h.class_names, h.prompt_templates)
    assert cc.method == "class-labels" and cc.capacity() == 40
    assert cc.draw(7, 11).keys == draw_per_class(cc.pool, 7, 11, 3).keys


def test_retrieval_on_the_general_corpus_prefers_the_class(general):
    public, hospital = general
    h = DatasetInfo.load(hospital)
    cc = ControlCorpus.load(public, h.class_names, h.prompt_templates)
    d = cc.draw(6, 0)
    assert np.bincount(d.labels).tolist() == [6, 6, 6]
    hits = sum(m.get("hospital_class") == CLASS_NAMES[lab] for m, lab in zip(d.metas, d.labels))
    assert hits >= 6  # base rate 1%: chance would give ~0 of 18
    assert cc.capacity() > 6


def test_experiment_data_draws_the_control_by_retrieval(tmp_path):
    from medfake.pipelines.experiment import ExperimentConfig
    from medfake.pipelines.experiment_data import ExperimentData
    from medfake.pipelines.protocols import CONTROL
    cfg = ExperimentConfig.from_dict({"phantoms": {"world": "general", "corpus_size": 300,
                                                   **GEN}, "quality": False,
                                      "synthetic": {}}, profile="test")
    data = ExperimentData(cfg, tmp_path / "exp")
    assert data.control_corpus.world == "general" and data.names == CLASS_NAMES
    sub = data.draw(CONTROL, 2, 0)
    assert np.bincount(sub.labels).tolist() == [2, 2, 2]
    out = data.control_equal_dir()
    info = DatasetInfo.load(out)
    assert info.class_names == CLASS_NAMES
    assert info.provenance["method"]["method"] == "caption-retrieval"


def test_cli_world_flag(tmp_path, capsys):
    from medfake.pipelines.cli import main
    main(["data", "phantoms", "--out", str(tmp_path), "--world", "general", "--corpus-size",
          "150", "--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1"])
    assert "world:         general" in capsys.readouterr().out
    info = DatasetInfo.load(tmp_path / "public")
    assert corpus_world(info) == "general" and info.splits["train"]["count"] == 150
    with pytest.raises(SystemExit):
        main(["data", "phantoms", "--out", str(tmp_path / "x"), "--world", "mars"])
