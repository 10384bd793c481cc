"""The run report: ``report.md`` with the results table, per-class grids and a bar plot.

Each arm is summarised over seeds as mean +- std with a 95% confidence interval from the
t distribution (n seeds); with few seeds only large differences mean anything, and the text
says so rather than picking a winner.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from ..engine.dataset import SplitArrays  # noqa: E402

HEADLINE = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."),
            ("macro_auc", "macro AUC")]


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, std and t-based 95% CI half-width over seeds (percent scale kept as given)."""
    v = np.asarray(values, dtype=float)
    mean, std = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(v) - 1) * std / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": half, "n": len(v)}


def summary_table(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r["arm"], []).append(r)
    return {arm: {m: summarize([100 * r[m] for r in rs]) for m, _ in HEADLINE}
            for arm, rs in arms.items()}


def _per_class(rows: list[dict], class_names: list[str]) -> dict[str, dict[str, float]]:
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r["arm"], []).append(r)
    return {arm: {f"{kind}_{c}": float(np.mean([100 * r[kind][c] for r in rs]))
                  for c in class_names for kind in ("sensitivity", "specificity")}
            for arm, rs in arms.items()}


def class_grid(real: SplitArrays, synth: SplitArrays, cls: int, n: int = 12) -> np.ndarray:
    """Two rows of images for one class: real on top, synthetic below (uint8)."""
    def row(a: SplitArrays) -> np.ndarray:
        imgs = a.images[np.flatnonzero(a.labels == cls)[:n]]
        pad = np.zeros((n - len(imgs), *a.images.shape[1:]), np.uint8)
        return np.concatenate(list(np.concatenate([imgs, pad])), axis=1)
    return np.concatenate([row(real), row(synth)], axis=0)


def _bar_plot(table: dict, path: Path) -> None:
    arms = list(table)
    means = [table[a]["accuracy"]["mean"] for a in arms]
    errs = [np.nan_to_num(table[a]["accuracy"]["ci95"]) for a in arms]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(arms) + 1.2))
    ax.barh(arms, means, xerr=errs, color="#4c78a8", capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy on the real test split (%), mean and 95% CI over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path, results: dict, real: SplitArrays, synth: SplitArrays) -> Path:
    """Write report.md, grid_<class>.png and accuracy.png into ``run_dir``; return report.md."""
    names = results["class_names"]
    table = summary_table(results["rows"])
    per_class = _per_class(results["rows"], names)
    seeds = sorted({r["seed"] for r in results["rows"]})
    lines = [f"# medfake run: {run_dir.name}", "",
             f"Real test split: {results.get('n_test', '')} images; k = {results['k_shot']} real "
             f"images per class; seeds {seeds}. Values in %: mean +- std over seeds "
             f"[95% CI half-width, t distribution].", "",
             "## Results", "",
             "| arm | " + " | ".join(h for _, h in HEADLINE) + " |",
             "|---|" + "---|" * len(HEADLINE)]
    for arm, m in table.items():
        cells = [f"{m[k]['mean']:.1f} +- {m[k]['std']:.1f} [{m[k]['ci95']:.1f}]" for k, _ in HEADLINE]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Sensitivity / specificity per class (one-vs-rest, mean over seeds)", "",
              "| arm | " + " | ".join(f"sens {c} | spec {c}" for c in names) + " |",
              "|---|" + "---|" * (2 * len(names))]
    for arm, m in per_class.items():
        lines.append(f"| {arm} | " + " | ".join(
            f"{m['sensitivity_' + c]:.1f} | {m['specificity_' + c]:.1f}" for c in names) + " |")
    lines += ["", "## How to read this", "",
              "A generator earns its place only where its arm beats the control arm, which uses "
              "the generator's own training corpus directly; differences smaller than the CI "
              "half-widths are noise.", "", "## Samples (top: real hospital, bottom: synthetic)", ""]
    for c, name in enumerate(names):
        g = class_grid(real, synth, c)
        Image.fromarray(g).resize((g.shape[1] * 3, g.shape[0] * 3), Image.NEAREST).save(
            run_dir / f"grid_{name}.png")
        lines.append(f"**{name}**\n\n![{name}](grid_{name}.png)\n")
    _bar_plot(table, run_dir / "accuracy.png")
    lines += ["![accuracy](accuracy.png)", "", "## Stage timings (s)", "",
              " ".join(f"{k}={v}" for k, v in results.get("timings_s", {}).items()), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
