"""``medfake bench frontier``: the sweep runs, writes CSV/plot/JSON, and resumes from its cache."""
from __future__ import annotations

import csv
import json

import pytest
from medfake.engine.diffusion.sd_model import init_model
from medfake.pipelines import frontier as fr
from medfake.pipelines.configs.frontier import FrontierConfig


def test_pareto_front_and_seed_ci():
    pts = [(1.0, 10.0), (2.0, 12.0), (1.5, 13.0), (3.0, 20.0), (2.0, 11.0)]
    assert fr.pareto_front(pts) == [3, 4, 0]       # (2, 12) and (1.5, 13) are dominated
    mean, lo, hi = fr.seed_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and lo < 0.5 and hi > 0.7   # t(2) = 4.30
    assert fr.seed_ci([0.4]) == (0.4, 0.4, 0.4)


def test_frontier_sweeps_writes_and_resumes(small_world, tmp_path, monkeypatch, capsys):
    _, hospital = small_world
    model = init_model("micro", tmp_path / "micro", seed=0)
    cfg = FrontierConfig.profile("test", model_dir=str(model), real_dataset=str(hospital),
                                 out_dir=str(tmp_path / "f"), backend="torch")
    summary = fr.run_frontier(cfg)
    keys = [r["key"] for r in summary["rows"]]
    assert keys == ["dpm++-s2-c1-k1", "dpm++-s2-c1-k2"] and summary["baseline"] == keys[0]
    with (tmp_path / "f" / "frontier.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == keys
    assert all(float(r["images_per_s"]) > 0 and float(r["fd_pixel"]) > 0
               and float(r["test_fd_pixel"]) > 0 for r in rows)
    assert summary["rows"][0]["accuracy_seeds"] and summary["rows"][0]["test_accuracy_seeds"]
    assert (tmp_path / "f" / "frontier.png").stat().st_size > 0
    assert "accuracy_mean" in summary["rows"][0]          # the baseline always trains the CNN
    assert summary["recommended"] in keys and "frontier" in capsys.readouterr().out
    # a rerun computes nothing: every setting and downstream seed comes from the cache
    from medfake.pipelines import synth

    def no_synthesis(*a, **k):
        raise AssertionError("resumed run synthesised again")
    monkeypatch.setattr(synth, "run_job", no_synthesis)
    monkeypatch.setattr("medfake.engine.evaluation.classifiers.train_classifier", no_synthesis)
    again = fr.Frontier(cfg).run()
    assert json.dumps(again["rows"]) == json.dumps(summary["rows"])


def test_frontier_refuses_bad_grids():
    with pytest.raises(ValueError, match="tuned on test"):
        FrontierConfig(model_dir="m", real_dataset="r", select_split="test").check()
    with pytest.raises(ValueError, match="unknown scheduler"):
        FrontierConfig(model_dir="m", real_dataset="r", schedulers=("nope",)).check()
    with pytest.raises(ValueError, match="cfg-cutoffs"):
        FrontierConfig(model_dir="m", real_dataset="r", cfg_cutoffs=(1.5,)).check()


def test_recommendation_needs_fd_recall_and_accuracy(tmp_path, monkeypatch):
    """The selection on fixed measurements: the fastest setting within the FD tolerance wins
    unless its downstream accuracy falls below the baseline's seed CI (or, when asked, its
    recall below the recall tolerance)."""
    fake = {"dpm++-s20-c1-k1": (10, 10.0, 0.20), "dpm++-s20-c1-k3": (15, 10.2, 0.19),
            "dpm++-s10-c1-k1": (20, 10.4, 0.10), "dpm++-s10-c1-k3": (30, 12.0, 0.20)}
    accs = {"dpm++-s20-c1-k1": [0.50, 0.52, 0.54], "dpm++-s20-c1-k3": [0.50, 0.50, 0.52],
            "dpm++-s10-c1-k1": [0.40, 0.41, 0.42], "dpm++-s10-c1-k3": [0.45, 0.46, 0.47]}

    test_fd = {}     # the eval (test) split's FD where it differs from val's

    def measure(self, s):
        v, f, r = fake[s.key]
        q = {"fd_pixel": f, "precision_pixel": 0.9, "recall_pixel": r}
        return {"key": s.key, "images_per_s": v, "images_per_cpu_s": v / 2, **q,
                **{f"test_{k}": test_fd.get(s.key, x) if k == "fd_pixel" else x
                   for k, x in q.items()}}
    monkeypatch.setattr(fr.Frontier, "measure", measure)
    monkeypatch.setattr(fr.Frontier, "downstream",
                        lambda self, s: {"val": accs[s.key], "test": accs[s.key]})
    base = {"model_dir": "m", "real_dataset": "r", "schedulers": ("dpm++",), "steps": (20, 10),
            "cfg_cutoffs": (1.0,), "cache_intervals": (1, 3), "downstream_top": 2}
    s = fr.Frontier(FrontierConfig(**base, out_dir=str(tmp_path / "a"))).run()
    assert s["frontier"] == ["dpm++-s10-c1-k3", "dpm++-s10-c1-k1", "dpm++-s20-c1-k3",
                             "dpm++-s20-c1-k1"]
    rows = {r["key"]: r for r in s["rows"]}
    assert rows["dpm++-s10-c1-k1"]["accuracy_within_ci"] is False      # fast but hurts the CNN
    assert s["recommended"] == "dpm++-s20-c1-k3" and s["recommended_speedup"] == 1.5
    assert not s["target_met"] and "accuracy_mean" not in rows["dpm++-s10-c1-k3"]  # FD +20%
    accs["dpm++-s10-c1-k1"] = [0.50, 0.52, 0.53]
    s = fr.Frontier(FrontierConfig(**base, out_dir=str(tmp_path / "b"))).run()
    assert s["recommended"] == "dpm++-s10-c1-k1" and s["target_met"]
    assert s["holds_on_eval_split"] and s["select_split"] == "val"
    # chosen on val, judged on test: a choice whose test FD is 10% worse is reported as failing
    test_fd["dpm++-s10-c1-k1"] = 11.0
    s = fr.Frontier(FrontierConfig(**base, out_dir=str(tmp_path / "b2"))).run()
    assert s["recommended"] == "dpm++-s10-c1-k1"                      # val decides the choice
    assert not s["holds_on_eval_split"] and not s["target_met"]       # test reports it
    assert "test: FD / baseline" in fr.markdown_table(s)
    test_fd.clear()
    s = fr.Frontier(FrontierConfig(**base, out_dir=str(tmp_path / "c"), recall_tolerance=0.2,
                                   speed="cpu")).run()
    assert s["recommended"] == "dpm++-s20-c1-k3"                       # recall 0.10 < 0.16
    assert (tmp_path / "c" / "frontier.png").is_file()
    # the table names the speed it ranks by (a loop over the splits once overwrote the label)
    assert s["speed"] == "cpu" and "speed-up (cpu)" in fr.markdown_table(s)
