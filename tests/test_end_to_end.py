"""The whole chain at test size: phantoms -> generator -> synthesis -> CLIP -> real-data eval."""
from __future__ import annotations

import json
from pathlib import Path

from medfake.pipelines.run import RunConfig, run_chain


def test_chain_end_to_end(tmp_path):
    cfg = RunConfig.profile("test")
    cfg.out_root = str(tmp_path)
    run_dir = run_chain(cfg)

    results = json.loads((run_dir / "results.json").read_text())
    arms = {r["arm"] for r in results["rows"]}
    assert arms == {"clip real-only", "clip synthetic-pretrain + real-finetune",
                    "clip synthetic-only", "clip synthetic-only, zero-shot",
                    "clip control: public-pretrain + real-finetune",
                    "cnn real-only", "cnn real + synthetic", "cnn control: real + public"}
    assert len(results["rows"]) == len(arms) * len(cfg.seeds)
    # The control sees as many corpus images per class as the synthetic arm sees synthetic ones.
    n = cfg.synth_per_class
    assert results["control_per_class"] == results["synthetic_per_class"] == n
    ctrl = json.loads((run_dir / "control-equal" / "dataset.json").read_text())
    assert ctrl["splits"]["train"]["per_class"] == {c: n for c in results["class_names"]}
    for r in results["rows"]:
        assert r["n_extra_per_class"] == (0 if "real-only" in r["arm"] else n), r["arm"]
    # The audit's reference is the generator's corpus (public), not the hospital split.
    memo = results["memorization"]["diffusion"]
    assert memo["reference"] == "the generator's training data"
    assert [s["dataset"] for s in memo["sources"]] == [str(Path(results["public_dir"]).resolve())]
    for r in results["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["macro_auc"] <= 1.0
        assert set(r["sensitivity"]) == set(results["class_names"])
    report = (run_dir / "report.md").read_text()
    assert "clip control: public-pretrain + real-finetune" in report
    for name in results["class_names"]:
        assert (run_dir / f"grid_{name}.png").stat().st_size > 0
    syn = json.loads((run_dir / "synthetic" / "dataset.json").read_text())
    assert syn["splits"]["train"]["count"] == 3 * cfg.synth_per_class

    # A second run reuses every cache and every finished shard.
    first = results["timings_s"]
    run_chain(cfg)
    second = json.loads((run_dir / "results.json").read_text())["timings_s"]
    assert second["generator"] < max(5.0, first["generator"] / 3)
    assert second["synthesis"] < max(5.0, first["synthesis"] / 2)
