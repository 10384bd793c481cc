"""Experiment protocols at tiny size: complete results, resume without retraining, clear config errors."""
from __future__ import annotations

import csv
import json
import math

import pytest

from medfake.pipelines.cli import main
from medfake.pipelines.experiment import ExperimentConfig, run_experiment
from medfake.pipelines.experiment_data import ExperimentData
from medfake.pipelines.protocols import PROTOCOLS, plan_arms


def _cfg(small_world, **over) -> ExperimentConfig:
    public, hospital = small_world
    return ExperimentConfig.from_dict({"real": str(hospital), "control": str(public),
                                       "quality": False, **over}, profile="test")


@pytest.fixture(scope="module")
def sweep(small_world, tmp_path_factory):
    cfg = _cfg(small_world, k_values=[1, "all"])
    out = tmp_path_factory.mktemp("sweep")
    run_experiment("few-shot-sweep", cfg, out, report=False)
    return cfg, out


def test_protocols_carry_real_only_and_control(small_world):
    cfg = _cfg(small_world, synthetic={"a": {"kind": "classic"}, "b": {"kind": "classic"}},
               classifiers=["small-cnn", "resnet18"])
    for name in PROTOCOLS:
        arms = plan_arms(name, cfg, ["a", "b"])
        roles = {a.role for a in arms}
        assert {"real-only", "control"} <= roles, name
        assert "synthetic" in roles, name
        assert len({a.slug for a in arms}) == len(arms)
    sweep_arms = plan_arms("few-shot-sweep", cfg, ["a", "b"])
    # k values x transforms x classifiers x (real-only + 2 sources + control)
    assert len(sweep_arms) == len(cfg.k_values) * 2 * 2 * 4


def test_sweep_results_complete(sweep):
    cfg, out = sweep
    res = json.loads((out / "results.json").read_text())
    arms = plan_arms("few-shot-sweep", cfg, list(cfg.synthetic))
    planned = {(a.name, s) for a in arms for s in cfg.seeds}
    assert {(r["arm"], r["seed"]) for r in res["rows"]} == planned
    assert len(res["rows"]) == len(planned) == 2 * 2 * 3 * len(cfg.seeds)
    assert {"real-only", "control", "synthetic"} == {r["role"] for r in res["rows"]}
    for r in res["rows"]:
        for m in ("accuracy", "balanced_accuracy", "macro_auc"):
            assert 0.0 <= r[m] <= 1.0
            lo, hi = r["ci95"][m]
            assert 0.0 <= lo <= hi <= 1.0
        assert r["n"] == res["n_test"]
        if r["role"] in ("synthetic", "control"):  # equal counts: 10 per real, capped at 20
            assert r["n_extra_per_class"] == min(10 * r["n_real_per_class"], 20)
    # the control and the synthetic arm of one setting use the same number of extra images
    same = {}
    for r in res["rows"]:
        if r["role"] != "real-only":
            same.setdefault((r["k"], r["transforms"], r["seed"]), set()).add(r["n_extra_per_class"])
    assert all(len(v) == 1 for v in same.values())
    summ = res["summary"]
    assert set(summ) == {a.name for a in arms}
    assert all(s["accuracy"]["n"] == len(cfg.seeds) for s in summ.values())
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(planned)
    assert {"accuracy_ci95_low", "sensitivity_cyst", "specificity_hemangioma"} <= set(rows[0])
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert (out / res["plots"]["curves"]).stat().st_size > 0
    assert all((out / p).stat().st_size > 0 for p in res["plots"]["confusion"])
    prov = res["provenance"]
    assert prov["versions"]["torch"] and "real" in prov["datasets"]
    assert res["reproduce"].startswith("medfake experiment few-shot-sweep --config")


def test_resume_does_not_retrain(sweep, monkeypatch):
    cfg, out = sweep
    files = sorted((out / "arms").rglob("seed*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    calls = []
    real_fit = ExperimentData.fit_predict

    def counting(self, arm, train, seed):
        calls.append((arm.name, seed))
        return real_fit(self, arm, train, seed)

    monkeypatch.setattr(ExperimentData, "fit_predict", counting)
    run_experiment("few-shot-sweep", cfg, out, report=False)
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert json.loads((out / "results.json").read_text())["computed_arm_seeds"] == 0

    files[0].unlink()  # a killed run: one arm-seed missing -> exactly that one is recomputed
    run_experiment("few-shot-sweep", cfg, out, report=False)
    assert len(calls) == 1 and files[0].is_file()

    changed = ExperimentConfig.from_dict({"real": cfg.real, "control": cfg.control,
                                          "k_values": cfg.k_values, "quality": False,
                                          "steps": 13}, profile="test")
    with pytest.raises(ValueError, match="other settings"):
        run_experiment("few-shot-sweep", changed, out, report=False)


def test_substitution_and_generators(small_world, tmp_path):
    cfg = _cfg(small_world, seeds=[0], synthetic={"classic": {"kind": "classic"},
                                                  "classic-k5": {"kind": "classic", "k": 5}})
    for protocol in ("substitution", "generators"):
        res = json.loads(run_experiment(protocol, cfg, tmp_path / protocol,
                                        report=False).read_text())
        roles = {r["role"] for r in res["rows"]}
        assert {"real-only", "control", "synthetic"} <= roles
        if protocol == "substitution":
            assert {"synthetic-only", "control-only"} <= roles
            only = [r for r in res["rows"] if r["role"] == "synthetic-only"]
            assert all(r["n_real_per_class"] == 0 and r["n_train"] == 3 * r["n_extra_per_class"]
                       for r in only)
        assert all(not math.isnan(r["accuracy"]) for r in res["rows"])
    # the per-arm classic source was built from the arm's own k-shot images, the fixed one once
    assert (tmp_path / "substitution" / "synthetic" / "classic" / "k2-seed0" /
            "dataset.json").is_file()
    assert (tmp_path / "substitution" / "synthetic" / "classic-k5" / "dataset.json").is_file()


def test_bad_config_key_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError) as e:
        ExperimentConfig.from_dict({"stepz": 10})
    msg = str(e.value)
    assert "'stepz'" in msg and "steps" in msg and "synthetic_per_class" in msg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seeds": [0], "clasifiers": ["small-cnn"]}))
    with pytest.raises(SystemExit) as ex:
        main(["experiment", "ratio", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'clasifiers'" in err and "classifiers" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="classifiers"):
        ExperimentConfig.from_dict({"classifiers": ["vgg"]})


def test_arm_seeds_partition_over_ranks_and_assemble_once_all_exist(sweep, tmp_path,
                                                                    monkeypatch):
    """Two ranks (--rank/--world-size, then a SLURM array environment): each computes only
    its share of the missing arm-seeds; results.json appears once every file exists."""
    import shutil
    cfg, done = sweep
    out = tmp_path / "ranks"
    shutil.copytree(done, out)
    (out / "results.json").unlink()
    arms = plan_arms("few-shot-sweep", cfg, list(cfg.synthetic))
    jobs = [out / "arms" / a.slug / f"seed{s}.json" for a in arms for s in cfg.seeds]
    for i in (0, 1, 2, 5):
        jobs[i].unlink()
    calls = []
    real_fit = ExperimentData.fit_predict
    monkeypatch.setattr(ExperimentData, "fit_predict", lambda self, arm, train, seed: (
        calls.append((arm.slug, seed)) or real_fit(self, arm, train, seed)))
    assert run_experiment("few-shot-sweep", cfg, out, report=False, rank=0, world_size=2) is None
    assert [jobs[i].is_file() for i in (0, 1, 2, 5)] == [True, False, True, False]
    assert len(calls) == 2 and not (out / "results.json").exists()
    assert run_experiment("few-shot-sweep", cfg, out, report=False, rank=0, world_size=2) is None
    assert len(calls) == 2                                  # a re-run rank recomputes nothing
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    res = run_experiment("few-shot-sweep", cfg, out, report=False)
    assert len(calls) == 4 and all(p.is_file() for p in jobs)
    rows = json.loads(res.read_text())["rows"]
    assert [(r["arm"], r["seed"]) for r in rows] == [
        (r["arm"], r["seed"]) for r in json.loads((done / "results.json").read_text())["rows"]]
