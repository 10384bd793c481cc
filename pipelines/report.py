"""`medfake report RUN_DIR`: one self-contained HTML report and its Markdown twin.

Works on an experiment dir (``medfake experiment``) and on a ``medfake run`` dir: both hold a
``results.json`` with one row per arm x seed; a run's rows are normalised here (role, series,
k from its fixed arm names). Writes into RUN_DIR:

* ``report.html``: every image inlined as a base64 PNG data URI, no external assets;
* ``report.md`` plus the PNGs it references, beside it (``grid_<class>.png``, ``report_*.png``;
  memorization images stay in ``memorization/``).

Sections (``SECTIONS``): results (mean +- std over seeds, test-set bootstrap 95% CIs, paired
differences against real-only and the control arm), accuracy-vs-real-images curves, confusion
matrices, per-class sample grids (real vs each generator), sample quality, memorization audit,
provenance (the exact commands, versions, dataset fingerprints, every artifact's maker).
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..engine.core.errors import DatasetError
from ..engine.data.reader import load_split
from ..engine.evaluation.metrics import mean_std
from . import report_figures as F

SECTIONS = [("verdict", "Verdict"), ("results", "Results"), ("curves", "Accuracy vs real images"),
            ("confusion", "Confusion matrices"), ("samples", "Samples: real vs each generator"),
            ("quality", "Sample quality"), ("memorization", "Memorization audit"),
            ("provenance", "Provenance")]
METRICS = ("accuracy", "balanced_accuracy", "macro_auc")
_META = ("role", "series", "classifier", "k", "real", "source", "per_real", "transforms", "init")


# ----------------------------------------------------------------------------- summaries

def _t_half(v: np.ndarray) -> float:
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))) \
        if len(v) > 1 else math.nan


def summarize_rows(rows: list[dict]) -> dict[str, dict]:
    """Per arm (in first-seen order): its factors, seeds, and per metric the mean, std
    (ddof=1), t-based 95% CI half-width of the mean over seeds (``ci95_seeds``) and the mean
    test-set bootstrap CI bounds (``boot_low``/``boot_high``). NaN values (undefined AUC) are
    left out of the mean."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["arm"], []).append(r)
    out = {}
    for arm, rs in groups.items():
        s: dict[str, Any] = {k: rs[0].get(k) for k in _META}
        s["seeds"] = sorted(r["seed"] for r in rs)
        s["n_real_per_class"] = float(np.mean([r.get("n_real_per_class", 0) for r in rs]))
        s["n_extra_per_class"] = float(np.mean([r.get("n_extra_per_class", 0) for r in rs]))
        for m in METRICS:
            v = np.array([r[m] for r in rs if m in r and not math.isnan(r[m])], dtype=float)
            mean, std = mean_std(v) if len(v) else (math.nan, math.nan)
            cis = np.array([r.get("ci95", {}).get(m, [math.nan, math.nan]) for r in rs], float)
            s[m] = {"mean": mean, "std": std, "ci95_seeds": _t_half(v), "n": int(len(v)),
                    "boot_low": float(np.nanmean(cis[:, 0])) if np.isfinite(cis).any() else math.nan,
                    "boot_high": float(np.nanmean(cis[:, 1])) if np.isfinite(cis).any() else math.nan}
        out[arm] = s
    return out


def paired_delta(a: list[dict], b: list[dict], metric: str = "accuracy") -> tuple[float, float, int]:
    """Mean and t 95% CI half-width of ``a - b`` over the seeds both arms share (paired: the
    same seed draws the same real images)."""
    bs = {r["seed"]: r[metric] for r in b}
    d = np.array([r[metric] - bs[r["seed"]] for r in a if r["seed"] in bs], dtype=float)
    d = d[np.isfinite(d)]
    return (float(d.mean()) if len(d) else math.nan, _t_half(d), int(len(d)))


def normalize(results: dict) -> dict:
    """An experiment's results as they are; a ``medfake run``'s with rows given role, series,
    k and classifier from its fixed arm names, and its datasets in the experiment layout."""
    if results.get("format", "").startswith("medfake-experiment"):
        return results
    k = results.get("k_shot")
    rows = []
    for r in results["rows"]:
        name = r["arm"]
        role = ("control" if "control" in name else "real-only" if "real-only" in name
                else "synthetic-only" if "synthetic-only" in name else "synthetic")
        ci = r.get("ci95") or ({"accuracy": r["accuracy_ci95"]} if "accuracy_ci95" in r else {})
        rows.append({"role": role, "series": name, "classifier": "clip" if name.startswith("clip")
                     else "small-cnn", "k": k, "real": role != "synthetic-only", "source": None,
                     "per_real": 0.0, "transforms": False, "init": None,
                     "n_real_per_class": k if role != "synthetic-only" else 0,
                     "n_extra_per_class": 0 if role == "real-only" else math.nan,  # not recorded
                     **r, "ci95": ci})
    src = results.get("synthetic_dir")
    return {**results, "rows": rows, "protocol": "run",
            "datasets": {"real": results.get("hospital_dir"), "control": results.get("control_dir")
                         or results.get("public_dir"),
                         "sources": {"diffusion": {"dir": src}} if src else {}}}


# ----------------------------------------------------------------------------- figures

def write_experiment_plots(results: dict, plots_dir: Path) -> dict[str, Any]:
    """The experiment's plots (curves, ratio curve, bars, confusion matrices) into
    ``plots_dir``; returns their paths relative to ``plots_dir``'s parent."""
    summary = results.get("summary") or summarize_rows(results["rows"])
    made = {"curves": F.accuracy_curves(summary, plots_dir / "accuracy_vs_real.png"),
            "ratio": F.ratio_curve(summary, plots_dir / "ratio.png"),
            "bars": F.accuracy_bars(summary, plots_dir / "accuracy_bars.png")}
    out: dict[str, Any] = {k: str(v.relative_to(plots_dir.parent)) for k, v in made.items() if v}
    out["confusion"] = [str(p.relative_to(plots_dir.parent)) for p in F.confusion_matrices(
        results["rows"], results["class_names"], plots_dir / "confusion")]
    return out


# ----------------------------------------------------------------------------- document model
# A report is a list of blocks rendered twice: ("h2", id, title), ("h3", text), ("p", text),
# ("table", header, rows), ("img", path relative to the run dir, caption), ("pre", text).

def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _count(x: float) -> str:
    return f"{x:g}" if math.isfinite(x) else "n/a"


def _num(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)


def _key(s: dict) -> tuple:
    return (s["classifier"], s["k"], s["transforms"], s["real"], s["per_real"],
            s["init"] is not None)


def _partner(summary: dict, s: dict, roles: tuple[str, ...], same_extra: bool) -> str | None:
    """The arm of one of ``roles`` that ``s`` is compared with: same classifier, k and
    transforms, and with ``same_extra`` also the same extra-data recipe (count, init)."""
    for arm, o in summary.items():
        if o["role"] in roles and (_key(o) == _key(s) if same_extra else
                                   (o["classifier"], o["k"], o["transforms"]) ==
                                   (s["classifier"], s["k"], s["transforms"])):
            return arm
    return None


def _by_arm(rows: list[dict]) -> dict[str, list[dict]]:
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    return by_arm


def _judge(m: float, h: float) -> str:
    return "" if not math.isfinite(h) else ("better" if m - h > 0 else
                                            "worse" if m + h < 0 else "n.s.")


def _verdict_blocks(res: dict, summary: dict) -> list[tuple]:
    """Per synthetic arm: does it beat real-only, and the equal-count control, with CIs."""
    by_arm = _by_arm(res["rows"])
    table, beat_real, beat_ctrl, n = [], [], [], 0
    for arm, s in summary.items():
        if s["role"] not in ("synthetic", "synthetic-only"):
            continue
        n += 1
        cells = []
        for roles, same, hits in ((("real-only",), False, beat_real),
                                  (("control", "control-only"), True, beat_ctrl)):
            other = _partner(summary, s, roles, same)
            if other is None:
                cells.append("no partner arm")
                continue
            m, h, k = paired_delta(by_arm[arm], by_arm[other])
            verdict = _judge(m, h)
            if verdict == "better":
                hits.append(arm)
            ci = f" [{_pct(m - h)}, {_pct(m + h)}]" if math.isfinite(h) else ""
            note = ""
            if "control" in roles:
                a, b = s["n_extra_per_class"], summary[other]["n_extra_per_class"]
                if math.isfinite(a) and math.isfinite(b) and a != b:
                    note = f" (UNEQUAL counts: {a:g} vs {b:g} per class)"
            cells.append(f"{100 * m:+.1f}{ci} {verdict or 'one seed: no CI'}, {k} seeds{note}"
                         if math.isfinite(m) else "no shared seeds")
        table.append([arm, str(s["k"]), s["classifier"], _count(s["n_extra_per_class"]), *cells])
    if not n:
        return [("p", "No synthetic arm in this run: nothing to judge.")]
    ctrl = (f"{len(beat_ctrl)} of {n} beat the equal-count control: " + "; ".join(beat_ctrl)
            if beat_ctrl else f"none of the {n} beats the equal-count control: here the "
            f"generator does not earn its place over using its own training data directly")
    text = (f"Synthetic arms judged on the real test split ({res.get('n_test')} images) by the "
            f"paired accuracy difference over seeds with its t 95% CI; 'better' only when the "
            f"CI excludes 0. {len(beat_real)} of {n} beat real-only; {ctrl}.")
    return [("p", text),
            ("table", ["arm", "k", "classifier", "extra/class", "Δacc vs real-only [CI]",
                       "Δacc vs equal-count control [CI]"], table)]


def _results_blocks(res: dict, summary: dict, run_dir: Path) -> list[tuple]:
    rows = res["rows"]
    by_arm = _by_arm(rows)

    def partner(s: dict, roles: tuple[str, ...], same_extra: bool) -> str | None:
        return _partner(summary, s, roles, same_extra)

    def delta(arm: str, other: str | None) -> str:
        if other is None or other == arm:
            return ""
        m, h, n = paired_delta(by_arm[arm], by_arm[other])
        if not math.isfinite(m):
            return ""
        ci = f" [{_pct(m - h)}, {_pct(m + h)}]" if math.isfinite(h) else ""
        verdict = _judge(m, h)
        return f"{100 * m:+.1f}{ci}{' ' + verdict if verdict else ''}"

    seeds = sorted({r["seed"] for r in rows})
    header = ["arm", "role", "real/class", "extra/class", "seeds", "accuracy %",
              "bootstrap 95% CI", "balanced acc. %", "macro AUC %", "Δacc vs real-only",
              "Δacc vs control"]
    table = []
    for arm, s in summary.items():
        a = s["accuracy"]
        table.append([arm, s["role"], f"{s['n_real_per_class']:g}", _count(s["n_extra_per_class"]),
                      str(len(s["seeds"])), f"{_pct(a['mean'])} ± {_pct(a['std'])}",
                      f"[{_pct(a['boot_low'])}, {_pct(a['boot_high'])}]",
                      f"{_pct(s['balanced_accuracy']['mean'])} ± {_pct(s['balanced_accuracy']['std'])}",
                      f"{_pct(s['macro_auc']['mean'])} ± {_pct(s['macro_auc']['std'])}",
                      "" if s["role"] == "real-only" else delta(arm, partner(s, ("real-only",), False)),
                      "" if s["role"].startswith("control") else
                      delta(arm, partner(s, ("control", "control-only"), True))])
    blocks: list[tuple] = [
        ("p", f"Protocol {res.get('protocol')}; real test split: {res.get('n_test')} images "
              f"({', '.join(res['class_names'])}); seeds {seeds}. Values in %: mean ± std over "
              f"seeds; the bootstrap CI is the test-set percentile-bootstrap 95% interval "
              f"(mean of the per-seed bounds). Δ columns: paired difference over shared seeds "
              f"(same seed = same real images) with its t 95% CI; 'better'/'worse' only when "
              f"the CI excludes 0, 'n.s.' otherwise. The control arm adds the generator's own "
              f"training corpus at the same count: synthetic data earns its cost only where it "
              f"beats that."),
        ("table", header, table)]
    names = res["class_names"]
    per_class = [[arm] + [_pct(float(np.nanmean([r[kind][c] for r in by_arm[arm]])))
                          for c in names for kind in ("sensitivity", "specificity")]
                 for arm in summary]
    blocks += [("h3", "Sensitivity / specificity per class (one-vs-rest, mean over seeds, %)"),
               ("table", ["arm"] + [f"{kind[:4]}. {c}" for c in names
                                    for kind in ("sensitivity", "specificity")], per_class)]
    bars = F.accuracy_bars(summary, run_dir / "report_accuracy_bars.png")
    if bars:
        blocks.append(("img", bars.name, "Accuracy per arm: mean over seeds, 95% CI of the mean"))
    return blocks


def _curve_blocks(summary: dict, run_dir: Path) -> list[tuple]:
    blocks: list[tuple] = [("p", "Accuracy on the real test split (mean ± std over seeds) against "
                            "the number of real training images per class, without extra data "
                            "(real-only) and with each synthetic source and the control corpus.")]
    c = F.accuracy_curves(summary, run_dir / "report_accuracy_vs_real.png")
    blocks.append(("img", c.name, "Accuracy vs real images per class") if c else
                  ("p", "No arm trains on real images; nothing to plot."))
    if len({s["n_real_per_class"] for s in summary.values() if s["real"]}) == 1:
        blocks.append(("p", "This run uses a single real-images-per-class value, so each curve "
                       "is one point; `medfake experiment few-shot-sweep` draws the full curves."))
    r = F.ratio_curve(summary, run_dir / "report_ratio.png")
    if r:
        blocks.append(("img", r.name, "Accuracy vs extra-to-real ratio"))
    return blocks


def _sample_blocks(res: dict, run_dir: Path) -> list[tuple]:
    ds = res.get("datasets", {})
    sources = {n: s.get("dir") for n, s in ds.get("sources", {}).items()}
    if not sources:
        return [("p", "No synthetic source in this run.")]
    try:
        real = load_split(ds["real"], "train", skip_bad=True)
        arrays = {n: load_split(d, "train", skip_bad=True) for n, d in sources.items() if d}
    except (DatasetError, OSError, TypeError) as e:
        return [("p", f"Sample grids unavailable: a dataset could not be read ({e}).")]
    blocks: list[tuple] = [("p", "Per class: real hospital training images (top row), then the "
                            "first images of each synthetic source.")]
    for c, name in enumerate(res["class_names"]):
        g = F.class_grid(real, arrays, c, name, run_dir / f"grid_{name}.png")
        blocks.append(("img", g.name, f"{name}: real vs {', '.join(arrays)}"))
    return blocks


def _quality_blocks(res: dict) -> list[tuple]:
    q = res.get("quality") or {}
    if not q:
        return [("p", "No sample-quality assessment in this run (no synthetic source, or "
                 "disabled with \"quality\": false).")]
    header = ["source", "class", "Fréchet distance", "precision", "recall", "1-NN accuracy",
              "n real", "n synthetic"]
    rows = []
    for src, rep in q.items():
        for cls, m in [("all", rep["overall"]), *rep.get("per_class", {}).items()]:
            rows.append([src, cls, _num(m["frechet_distance"]), _num(m["precision"]),
                         _num(m["recall"]), _num(m["one_nn_accuracy"]), str(m["n_real"]),
                         str(m["n_synthetic"])])
    enc = {rep.get("encoder") for rep in q.values()}
    return [("p", f"Synthetic vs the real test split in the feature space {', '.join(map(str, enc))}"
             f". Lower Fréchet distance is closer; precision = share of synthetic samples on the "
             f"real manifold, recall = share of real covered (k-NN manifolds); 1-NN two-sample "
             f"accuracy 0.5 = indistinguishable, 1.0 = fully separable. The control corpus row "
             f"is the reference a generator should beat."), ("table", header, rows)]


def _memo_blocks(res: dict, run_dir: Path) -> list[tuple]:
    memo = res.get("memorization") or {}
    if not memo:
        return [("p", "No memorization audit in this run (no synthetic source).")]
    blocks: list[tuple] = [("p", "For every synthetic image, its nearest image among those its "
                            "generator learned from (the reference, named per source) and their "
                            "distance. Pairs below the threshold are flagged: a synthetic image "
                            "that is a near copy of a training image.")]
    for src, m in memo.items():
        scalars = [[k, _num(v)] for k, v in m.items()
                   if isinstance(v, (int, float, str)) and k not in ("pairs_png", "hist_png")]
        blocks += [("h3", src), ("table", ["field", "value"], scalars)]
        if m.get("sources"):
            blocks.append(("table", ["reference dataset", "split", "what the generator used it "
                                     "for", "images"],
                           [[r["dataset"], r["split"], r["role"], r["images"]]
                            for r in m["sources"]]))
        q_syn, q_ref = m.get("distance_quantiles") or {}, m.get("reference_quantiles") or {}
        if q_syn:
            blocks.append(("table", ["quantile", "synthetic -> nearest reference",
                                     "reference -> nearest other reference"],
                           [[q, _num(v), _num(q_ref.get(q, math.nan))] for q, v in q_syn.items()]))
        flagged = m.get("flagged") or []
        if flagged:
            blocks.append(("table", ["synthetic", "nearest reference image", "distance"],
                           [[f["synthetic_key"], f["real_key"], _num(float(f["distance"]))]
                            for f in flagged[:20]]))
        for key, cap in (("hist_png", "distance to the nearest reference image"),
                         ("pairs_png", "flagged (or closest) pairs: synthetic left, "
                                       "reference right")):
            if m.get(key) and (run_dir / m[key]).is_file():
                blocks.append(("img", m[key], f"{src}: {cap}"))
    return blocks


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def _provenance_blocks(res: dict, run_dir: Path, report_cmd: str) -> list[tuple]:
    prov = res.get("provenance") or {}
    cmd = prov.get("command") or "(not recorded: results written before provenance was kept)"
    blocks: list[tuple] = [("pre", f"# produced the results\n{cmd}\n"
                            + (f"# reproduces them (resumes; finished arm-seeds are reused)\n"
                               f"{res['reproduce']}\n" if res.get("reproduce") else "")
                            + f"# produced this report\n{report_cmd}")]
    if prov:
        blocks.append(("table", ["field", "value"],
                       [["git commit", f"{prov.get('git_commit')} (dirty: {prov.get('git_dirty')})"],
                        ["time", str(prov.get("time"))], ["host", str(prov.get("host"))],
                        ["python", str(prov.get("python"))],
                        *[[p, str(v)] for p, v in (prov.get("versions") or {}).items()]]))
        blocks.append(("table", ["dataset", "path", "dataset.json sha256"],
                       [[n, d["path"], d["dataset_json_sha256"][:16]]
                        for n, d in (prov.get("datasets") or {}).items()]))
    for n, s in (res.get("datasets", {}).get("sources") or {}).items():
        if s.get("spec"):
            blocks.append(("p", f"Synthetic source {n}: generator spec "
                           f"`{json.dumps(s['spec'], sort_keys=True)}`"
                           + (" (built per arm from that arm's k-shot real images)"
                              if s.get("per_arm") else "")))
    made_by = {"report.html": report_cmd, "report.md": report_cmd}
    arts = [[n, report_cmd, "this report"] for n in made_by if not (run_dir / n).exists()]
    for p in sorted(run_dir.iterdir()):
        if p.name.startswith("."):
            continue
        own = p.name in made_by or p.name.startswith(("report_", "grid_"))
        what = (f"{sum(1 for _ in p.rglob('*.json'))} json files" if p.is_dir() else
                f"sha256 {_sha(p)}" if p.suffix in (".json", ".csv") else "")
        arts.append([p.name + ("/" if p.is_dir() else ""), report_cmd if own else cmd, what])
    blocks += [("h3", "Artifacts"), ("table", ["artifact", "made by", "content"], arts)]
    return blocks


# ----------------------------------------------------------------------------- rendering

def _md(title: str, blocks: list[tuple]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b[0] == "h2":
            out += [f"## {b[2]}", ""]
        elif b[0] == "h3":
            out += [f"### {b[1]}", ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "pre":
            out += ["```", b[1], "```", ""]
        elif b[0] == "img":
            out += [f"![{b[2]}]({b[1]})", ""]
        elif b[0] == "table":
            cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
            out += ["| " + " | ".join(map(cell, b[1])) + " |", "|" + "---|" * len(b[1])]
            out += ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]] + [""]
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:left}th{background:#eee}img{max-width:100%}"
        "img.px{image-rendering:pixelated}pre{background:#f5f5f5;padding:.6em;overflow-x:auto}")


def _html(title: str, blocks: list[tuple], run_dir: Path) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
           "<nav>" + " · ".join(f"<a href='#{i}'>{e(t)}</a>" for i, t in SECTIONS) + "</nav>"]
    for b in blocks:
        if b[0] == "h2":
            out.append(f"<h2 id='{b[1]}'>{e(b[2])}</h2>")
        elif b[0] == "h3":
            out.append(f"<h3>{e(b[1])}</h3>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "pre":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif b[0] == "img":
            data = base64.b64encode((run_dir / b[1]).read_bytes()).decode()
            cls = " class='px'" if "memorization" in b[1] else ""
            out.append(f"<figure><img{cls} alt='{e(b[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
        elif b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>"
                                 for r in b[2]) + "</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ PNGs) into ``run_dir``."""
    run_dir = Path(run_dir)
    f = run_dir / "results.json"
    if not f.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json: give a `medfake experiment` "
                                f"--out dir or a `medfake run` dir")
    res = normalize(json.loads(f.read_text()))
    summary = summarize_rows(res["rows"])
    report_cmd = f"medfake report {run_dir}"
    title = (f"medfake {res['protocol']} experiment: {run_dir.name}" if res["protocol"] != "run"
             else f"medfake run: {run_dir.name}")
    cms = F.confusion_matrices(res["rows"], res["class_names"], run_dir / "report_confusion")
    parts = {
        "verdict": _verdict_blocks(res, summary),
        "results": _results_blocks(res, summary, run_dir),
        "curves": _curve_blocks(summary, run_dir),
        "confusion": [("p", "Rows: true class, columns: predicted; counts summed over seeds, "
                       "colour row-normalised.")] + [("img", p.name, "confusion matrices")
                                                      for p in cms],
        "samples": _sample_blocks(res, run_dir),
        "quality": _quality_blocks(res),
        "memorization": _memo_blocks(res, run_dir),
        "provenance": [],
    }
    blocks = [b for sid, t in SECTIONS for b in [("h2", sid, t), *parts[sid]]]
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    # provenance last: it lists the files written above
    blocks += _provenance_blocks(res, run_dir, report_cmd)
    md_path.write_text(_md(title, blocks))
    html_path.write_text(_html(title, blocks, run_dir))
    return html_path, md_path
