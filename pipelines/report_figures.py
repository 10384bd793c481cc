"""Figures of experiment and run results (matplotlib, Agg backend: no display needed).

Every function reads the normalised rows/summary of ``pipelines/report.py`` (each row has
``arm``, ``role``, ``series``, ``classifier``, ``k``, ``per_real``, ``transforms``,
``n_real_per_class``, ``seed`` and the metrics) and writes one PNG, returning its path, or
returns None when the results hold nothing to draw (e.g. a ratio curve for one ratio).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..engine.data.format import SplitArrays

COLORS = {"real-only": "#4c78a8", "control": "#f58518", "control-only": "#e4a15c",
          "synthetic": "#54a24b", "synthetic-only": "#88d27a"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _line_style(series: str, role: str, i: int) -> dict:
    if role == "real-only":
        return {"color": "black", "marker": "o", "linestyle": "-"}
    if role.startswith("control"):
        return {"color": "#f58518", "marker": "s", "linestyle": "--"}
    return {"color": plt.get_cmap("tab10")(2 + i % 8), "marker": "^", "linestyle": "-"}


def accuracy_curves(summary: dict[str, dict], path: Path) -> Path | None:
    """Accuracy (mean +- std over seeds) vs real images per class, one line per series (with
    and without extra data), one panel per (classifier, transforms)."""
    arms = [s for s in summary.values() if s["real"] and s["role"] != "synthetic-only"]
    if not arms:
        return None
    per_reals = {s["per_real"] for s in arms if s["role"] != "real-only"}
    panels = sorted({(s["classifier"], s["transforms"]) for s in arms})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (clf, t) in zip(axes[0], panels):
        lines: dict[str, list[dict]] = {}
        for s in arms:
            if (s["classifier"], s["transforms"]) != (clf, t):
                continue
            label = s["series"] + (f" x{s['per_real']:g}" if len(per_reals) > 1
                                   and s["role"] != "real-only" else "")
            lines.setdefault(label, []).append(s)
        for i, (label, pts) in enumerate(sorted(lines.items())):
            pts.sort(key=lambda s: s["n_real_per_class"])
            x = [s["n_real_per_class"] for s in pts]
            y = [100 * s["accuracy"]["mean"] for s in pts]
            e = [100 * s["accuracy"]["std"] for s in pts]
            ax.errorbar(x, y, yerr=e, label=label, capsize=3, **_line_style(label, pts[0]["role"], i))
        ax.set_xscale("log")
        ax.set_xlabel("real images per class")
        ax.set_ylabel("accuracy on real test (%)")
        ax.set_title(f"{clf}, transforms {'on' if t else 'off'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def ratio_curve(summary: dict[str, dict], path: Path) -> Path | None:
    """Accuracy vs extra-to-real ratio per series, with the real-only level as a line."""
    arms = [s for s in summary.values() if s["role"] in ("synthetic", "control")
            and s["init"] is None]
    if len({s["per_real"] for s in arms}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    by: dict[str, list[dict]] = {}
    for s in arms:
        by.setdefault(f"{s['series']} ({s['classifier']})", []).append(s)
    for i, (label, pts) in enumerate(sorted(by.items())):
        pts.sort(key=lambda s: s["per_real"])
        ax.errorbar([s["per_real"] for s in pts], [100 * s["accuracy"]["mean"] for s in pts],
                    yerr=[100 * s["accuracy"]["std"] for s in pts], label=label, capsize=3,
                    **_line_style(label, pts[0]["role"], i))
    for s in summary.values():
        if s["role"] == "real-only":
            ax.axhline(100 * s["accuracy"]["mean"], color="black", linestyle=":",
                       label=f"real-only ({s['classifier']})")
    ax.set_xscale("log")
    ax.set_xlabel("extra images per real image")
    ax.set_ylabel("accuracy on real test (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def accuracy_bars(summary: dict[str, dict], path: Path) -> Path | None:
    """Horizontal bars: accuracy mean over seeds with the t-based 95% CI of that mean."""
    if not summary:
        return None
    arms = list(summary)
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(arms) + 1.3))
    means = [100 * summary[a]["accuracy"]["mean"] for a in arms]
    errs = [100 * np.nan_to_num(summary[a]["accuracy"]["ci95_seeds"]) for a in arms]
    ax.barh(arms, means, xerr=errs, capsize=3,
            color=[COLORS.get(summary[a]["role"], "#999999") for a in arms])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)  # a CI wider than the scale is cut at it
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("accuracy on the real test split (%): mean over seeds, 95% CI of the mean")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def confusion_matrices(rows: list[dict], class_names: Sequence[str], path_stem: Path,
                       per_figure: int = 12) -> list[Path]:
    """Confusion matrices summed over seeds, row-normalised colour, counts written; one PNG
    per ``per_figure`` arms (``<stem>_1.png``, ...)."""
    arms: dict[str, np.ndarray] = {}
    for r in rows:
        cm = np.asarray(r["confusion_matrix"], dtype=float)
        arms[r["arm"]] = arms.get(r["arm"], 0) + cm
    names = list(arms)
    out = []
    for start in range(0, len(names), per_figure):
        chunk = names[start:start + per_figure]
        cols = min(4, len(chunk))
        nrows = (len(chunk) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 3.4 * nrows), squeeze=False)
        for ax in axes.ravel()[len(chunk):]:
            ax.axis("off")
        for ax, arm in zip(axes.ravel(), chunk):
            cm = arms[arm]
            norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
            ax.set_xticks(range(len(class_names)), class_names, rotation=45, fontsize=6)
            ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
            ax.set_title(arm if len(arm) < 48 else arm[:45] + "...", fontsize=6)
            ax.set_xlabel("predicted", fontsize=6)
        out.append(_save(fig, path_stem.with_name(f"{path_stem.name}_{start // per_figure + 1}.png")))
    return out


def class_grid(real: SplitArrays, sources: dict[str, SplitArrays], cls: int, class_name: str,
               path: Path, n: int = 12) -> Path:
    """One class: a row of real images on top, then one row per synthetic source."""
    rows = [("real", real)] + list(sources.items())
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.6 + 1.5, 0.75 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (label, a) in zip(axes[:, 0], rows):
        imgs = a.images[np.flatnonzero(a.labels == cls)[:n]]
        pad = np.zeros((n - len(imgs), *a.images.shape[1:]), np.uint8)
        strip = np.concatenate(list(np.concatenate([imgs, pad])), axis=1) if n else imgs
        ax.imshow(strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title(class_name, fontsize=9)
    return _save(fig, path)
