"""`medfake report`: every section present, every inlined image decodes, the Markdown twin's
images exist; for an experiment dir and for a `medfake run`-format dir."""
from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from medfake.engine.data.reader import DatasetInfo, load_split
from medfake.pipelines.generators import make_synthetic_dataset
from medfake.pipelines.cli import main
from medfake.pipelines.experiment import ExperimentConfig, run_experiment
from medfake.pipelines.report import SECTIONS, write_report
from medfake.pipelines.run import _cnn_arm, _concat
from medfake.engine.data.kshot import kshot_subset


def _check_report(run_dir, expect_in_html=()):
    html = (run_dir / "report.html").read_text()
    for sid, _ in SECTIONS:
        assert f"<h2 id='{sid}'>" in html, sid
    for text in expect_in_html:
        assert text in html, text
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert uris and len(uris) == html.count("<img")
    for u in uris:
        img = Image.open(io.BytesIO(base64.b64decode(u)))
        img.load()
        assert img.size[0] > 10 and img.size[1] > 10
    assert "src='http" not in html and "href='http" not in html  # no external assets
    md = (run_dir / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == len(uris)
    for ref in refs:
        Image.open(run_dir / ref).load()
    for _, title in SECTIONS:
        assert f"## {title}" in md
    return html, md


@pytest.fixture(scope="module")
def experiment_dir(small_world, tmp_path_factory):
    public, hospital = small_world
    cfg = ExperimentConfig.from_dict({"real": str(hospital), "control": str(public),
                                      "seeds": [0, 1], "ratios": [1, 2]}, profile="test")
    out = tmp_path_factory.mktemp("exp") / "ratio"
    run_experiment("ratio", cfg, out)  # ends by writing the report
    return out


def test_experiment_report(experiment_dir):
    res = json.loads((experiment_dir / "results.json").read_text())
    html, md = _check_report(experiment_dir, ["real-only | k=2", "public (control)",
                                              "Fréchet distance", "1-NN accuracy",
                                              "medfake experiment ratio --config",
                                              "medfake report", "git commit"])
    assert "classic" in res["quality"] and "classic" in res["memorization"]
    assert "control corpus (used directly)" in res["quality"]
    for name in res["class_names"]:
        assert f"grid_{name}.png" in md
    assert (experiment_dir / res["memorization"]["classic"]["pairs_png"]).is_file()
    assert "report_ratio.png" in md  # several ratios -> the ratio curve


def test_report_cli_rewrites(experiment_dir, capsys):
    (experiment_dir / "report.html").unlink()
    main(["report", str(experiment_dir)])
    assert str(experiment_dir / "report.html") in capsys.readouterr().out
    _check_report(experiment_dir)


def test_run_dir_report(small_world, tmp_path):
    """A `medfake run`-format results.json (rows from run.py's own CNN arm function)."""
    public, hospital = small_world
    names = DatasetInfo.load(hospital).class_names
    syn = make_synthetic_dataset({"kind": "classic"}, hospital, 8, 0, tmp_path / "synthetic")
    train, test = load_split(hospital, "train"), load_split(hospital, "test")
    synth, pub = load_split(syn, "train"), load_split(public, "train")
    rows = []
    for seed in (0, 1):
        real_k = kshot_subset(train, 3, seed)
        for arm, data in {"cnn real-only": real_k, "cnn real + synthetic": _concat(real_k, synth),
                          "cnn control: real + public": _concat(real_k, pub)}.items():
            rows.append({"arm": arm, "seed": seed, **_cnn_arm(data, test, names, 5, seed)})
    (tmp_path / "results.json").write_text(json.dumps({
        "config": {}, "k_shot": 3, "class_names": names, "n_test": len(test), "rows": rows,
        "timings_s": {}, "synthetic_dir": str(syn), "hospital_dir": str(hospital)}))
    write_report(tmp_path)
    html, _ = _check_report(tmp_path, ["cnn control: real + public", "cnn real + synthetic"])
    assert "Δacc vs control" in html


def test_report_missing_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path)])
    assert e.value.code == 2 and "no results.json" in capsys.readouterr().err


def test_verdict_names_what_beats_real_only_and_the_equal_count_control():
    """Hand-made rows: the synthetic arm beats real-only on every seed and ties the control;
    a second source beats both; the count check flags an unequal control."""
    from medfake.pipelines.report import _verdict_blocks, normalize, summarize_rows

    def rows(arm, accs, extra):
        return [{"arm": arm, "seed": s, "accuracy": a, "n_extra_per_class": extra}
                for s, a in enumerate(accs)]
    data = (rows("cnn real-only", [0.50, 0.52, 0.48], 0)
            + rows("cnn real + synthetic", [0.60, 0.61, 0.59], 20)
            + rows("cnn control: real + public", [0.60, 0.62, 0.58], 20))
    res = normalize({"k_shot": 5, "class_names": ["a", "b"], "n_test": 30, "rows": data})
    blocks = _verdict_blocks(res, summarize_rows(res["rows"]))
    text, table = blocks[0][1], blocks[1][2]
    assert "1 of 1 beat real-only" in text and "none of the 1 beats the equal-count control" in text
    assert "better" in table[0][4] and "n.s." in table[0][5] and "UNEQUAL" not in table[0][5]

    data = (rows("cnn real-only", [0.50, 0.52, 0.48], 0)
            + rows("cnn real + synthetic", [0.70, 0.71, 0.69], 20)
            + rows("cnn control: real + public", [0.60, 0.62, 0.58], 60))
    res = normalize({"k_shot": 5, "class_names": ["a", "b"], "n_test": 30, "rows": data})
    blocks = _verdict_blocks(res, summarize_rows(res["rows"]))
    assert "1 of 1 beat the equal-count control: cnn real + synthetic" in blocks[0][1]
    assert "UNEQUAL counts: 20 vs 60" in blocks[1][2][0][5]
