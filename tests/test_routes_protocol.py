"""bench/routes.py's protocol logic: settings chosen on val only, verdicts from paired CIs.

No training here: val/test rows are written by hand so the choice and the verdict can be
checked exactly (the full run is a benchmark, see bench/RESULTS.md)."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def routes():
    spec = importlib.util.spec_from_file_location("bench_routes", ROOT / "bench" / "routes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _val(cell: Path, route: str, sid: str, seed: int, acc: float) -> None:
    d = cell / route / sid / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "val.json").write_text(json.dumps({"route": route, "seed": seed,
                                            "val_accuracy": acc, "val_macro_auc": acc}))


def test_setting_is_chosen_by_mean_val_accuracy_first_on_ties(routes, tmp_path):
    a = SimpleNamespace(work=tmp_path, world="near", k=5, seeds=[0, 1, 2])
    cell = tmp_path / "near" / "k5"
    ids = [routes.setting_id(s) for s in routes.ROUTES["txt2img"]]
    for seed in a.seeds:   # the second setting is best on val; the first and third tie
        for sid, acc in zip(ids, (0.5, 0.6 + 0.01 * seed, 0.5)):
            _val(cell, "txt2img", sid, seed, acc)
    choice = routes.select(a, "txt2img")
    assert choice["chosen"] == ids[1]
    assert json.loads((cell / "txt2img" / "choice.json").read_text())["chosen"] == ids[1]
    assert [round(s["val_accuracy_mean"], 3) for s in choice["val"]] == [0.5, 0.61, 0.5]
    for seed in a.seeds:   # now all tie: the first in the grid wins
        (cell / "txt2img" / ids[1] / f"seed{seed}" / "val.json").write_text(
            json.dumps({"val_accuracy": 0.5}))
    assert routes.select(a, "txt2img")["chosen"] == ids[0]


def test_select_refuses_missing_val_results(routes, tmp_path):
    a = SimpleNamespace(work=tmp_path, world="near", k=5, seeds=[0, 1])
    _val(tmp_path / "near" / "k5", "classic", "default", 0, 0.7)
    with pytest.raises(SystemExit, match="val results missing"):
        routes.select(a, "classic")


def _tested(cell: Path, route: str, accs: list[float]) -> None:
    (cell / route).mkdir(parents=True, exist_ok=True)
    seeds = list(range(len(accs)))
    (cell / route / "choice.json").write_text(json.dumps(
        {"seeds": seeds, "chosen": "default",
         "val": [{"id": "default", "val_accuracy_mean": 0.5}]}))
    (cell / route / "test.json").write_text(json.dumps(
        [{"arm": route, "seed": s, "accuracy": x, "macro_auc": x} for s, x in zip(seeds, accs)]))


def test_verdict_counts_a_win_only_when_the_paired_ci_excludes_zero(routes, tmp_path):
    cell = tmp_path / "general" / "k5"
    _tested(cell, "real-only", [0.40, 0.45, 0.50, 0.42, 0.47])
    _tested(cell, "control", [0.50, 0.52, 0.55, 0.49, 0.53])
    _tested(cell, "classic", [0.60, 0.63, 0.66, 0.61, 0.64])      # +~0.11 over control, tight
    _tested(cell, "txt2img", [0.70, 0.30, 0.80, 0.35, 0.55])      # noisy: CI includes 0
    text = routes.report(tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("- world `general`, k=5"))
    assert "beat the equal-count control: classic (" in line
    assert "txt2img (" not in line.split("beat the equal-count control")[1]
    assert "| classic |" in text and "**yes**" in text


def _arm(work: Path, world: str, route: str, seed: int, acc: float) -> Path:
    d = work / world / "k2" / route / "default" / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "val.json").write_text(json.dumps({"route": route, "seed": seed, "k": 2,
                                            "val_accuracy": acc, "val_macro_auc": acc}))
    (d / "cnn.pt").write_bytes(b"weights")
    return d


def test_world_free_arms_are_reused_only_when_the_hospital_data_are_identical(
        routes, tmp_path, monkeypatch):
    _arm(tmp_path, "near", "dcgan", 0, 0.55)
    _arm(tmp_path, "near", "txt2img", 0, 0.60)
    prints = {"near": "same", "general": "same"}
    monkeypatch.setattr(routes, "world_dirs", lambda w: (tmp_path / w / "corpus",
                                                         tmp_path / w / "hospital"))
    monkeypatch.setattr(routes, "hospital_fingerprint", lambda h: prints[h.parent.name])

    def args(world: str):
        return SimpleNamespace(work=tmp_path, world=world, k=2, share=True, fingerprints={},
                               hospital=tmp_path / world / "hospital")

    arm = tmp_path / "general" / "k2" / "dcgan" / "default" / "seed0"
    assert routes.share_arm(args("general"), "dcgan", arm)
    row = json.loads((arm / "val.json").read_text())
    assert row["val_accuracy"] == 0.55 and row["shared_from"].endswith("near/k2/dcgan/default/seed0")
    assert (arm / "cnn.pt").read_bytes() == b"weights"
    # a route that reads the corpus or captions is never shared
    assert not routes.share_arm(args("general"), "txt2img",
                                tmp_path / "general" / "k2" / "txt2img" / "default" / "seed0")
    # different hospital data: recomputed, not shared
    prints["general"] = "other"
    arm1 = tmp_path / "general" / "k2" / "acgan" / "default" / "seed0"
    _arm(tmp_path, "near", "acgan", 0, 0.5)
    assert not routes.share_arm(args("general"), "acgan", arm1)
    assert not arm1.exists()
    # --no-share
    prints["general"] = "same"
    a = args("general")
    a.share = False
    assert not routes.share_arm(a, "acgan", arm1)
    # the report names where a reused row came from
    rows = [{**row, "accuracy": 0.5, "macro_auc": 0.5, "arm": "dcgan", "chosen": "default"}]
    choice = {"seeds": [0], "chosen": "default",
              "val": [{"id": "default", "val_accuracy_mean": 0.55}]}
    table = "\n".join(routes.cell_report("general", 2, {"dcgan": rows}, {"dcgan": choice}))
    assert "arms of world near" in table
