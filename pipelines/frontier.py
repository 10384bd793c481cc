"""``medfake bench frontier``: the quality-cost frontier of the sampler settings for mass
synthesis (``FrontierConfig``).

For each setting (scheduler x steps x CFG cutoff x DeepCache interval, plus the baseline:
20-step DPM++, guidance on every step, no caching) it

1. runs a ``medfake synth`` job (``pipelines.synth.run_job``, one stream) writing
   ``per_class`` images per class as shards, and takes **images/s** from it: images written as
   shards over the generation wall time (sampling, encoding and writing; the one-off model
   load is excluded and reported apart), and **images per CPU second** (the process's CPU time
   over the same span: with one thread, the cost that does not depend on what else the machine
   runs; ``speed="cpu"`` ranks by it on a shared machine);
2. scores the images against two real held-out splits in each feature space of ``encoders``
   (``engine.evaluation.quality``: Frechet distance, precision, recall): ``select_split``
   (val), on which every choice below is made (row keys ``fd_<space>``, ``recall_<space>``,
   ``accuracy_mean``, ...), and ``eval_split`` (test), on which the results are only reported
   (the same keys prefixed ``<eval_split>_``);

then takes the **Pareto frontier** of images/s (higher is better) against FD in the first
feature space (lower is better), trains the small CNN (``engine.evaluation.classifiers``) on
k real images per class plus each of the ``downstream_top`` fastest settings within tolerance
(and the baseline) for every seed of ``downstream_seeds`` (each CNN is scored on both
splits), and names the **recommended** setting, on the select split: the fastest whose FD is
within ``tolerance`` of the baseline's and, where measured, whose mean downstream accuracy is
not below the baseline's 95% seed confidence interval (Student t over the seeds). With
``recall_tolerance`` a setting must also keep its recall within that fraction of the
baseline's (fewer steps and caching can lower FD in a weak feature space while losing
diversity, which recall shows). ``target_met`` is then judged on the eval split alone: the
recommended setting >= 2x the baseline's speed, its eval-split FD within ``tolerance`` (and
recall within ``recall_tolerance``) of the baseline's, its eval-split accuracy not below the
baseline's eval-split CI. A choice that does not hold up on test is reported as such.

Outputs in ``out_dir``: ``settings/<run tag>/<key>/`` (the synth job's shards, ``result.json``
and ``downstream-seed<S>-<tag>.json``: each setting is computed once; a rerun or a run killed
midway resumes from them; the run tag hashes the model, real dataset, image count, backend,
batch, threads, seed and feature spaces, so a changed one computes anew), ``frontier.csv`` (one row per setting), ``frontier.png`` (the
scatter with the frontier) and ``frontier.json`` (the summary). Two runs on one ``out_dir``
are serialised per setting by a file lock.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..engine.core.atomic import atomic_write_json
from ..engine.core.seeding import derive_seed
from .configs.frontier import BASELINE, FrontierConfig

log = logging.getLogger(__name__)

SETTING_KEYS = ("scheduler", "steps", "cfg_cutoff", "deep_cache_interval")
# --speed: what "faster" means (both are always recorded)
SPEED_KEYS = {"wall": "images_per_s", "cpu": "images_per_cpu_s"}


@dataclass(frozen=True)
class Setting:
    scheduler: str
    steps: int
    cfg_cutoff: float
    deep_cache_interval: int

    @property
    def key(self) -> str:
        return (f"{self.scheduler}-s{self.steps}-c{self.cfg_cutoff:g}-"
                f"k{self.deep_cache_interval}")

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SETTING_KEYS}


def settings_grid(cfg: FrontierConfig) -> list[Setting]:
    """The baseline first, then every grid combination (without repeating the baseline)."""
    base = Setting(**{**BASELINE, "steps": cfg.baseline_steps})
    grid = [Setting(s, n, c, k) for s in cfg.schedulers for n in cfg.steps
            for c in cfg.cfg_cutoffs for k in cfg.cache_intervals]
    return [base, *[s for s in dict.fromkeys(grid) if s != base]]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (speed, fd) no other point beats on both (faster and lower FD,
    one of them strictly); sorted fastest first."""
    front = [i for i, (v, f) in enumerate(points)
             if not any((v2 >= v and f2 <= f) and (v2 > v or f2 < f) for v2, f2 in points)]
    return sorted(front, key=lambda i: -points[i][0])


def seed_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean over seeds (the
    interval is the mean itself for a single seed)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()), float(v.mean()), float(v.mean())
    from scipy.stats import t
    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


class Frontier:
    """One sweep (see the module doc); ``run()`` returns the summary written to JSON."""

    def __init__(self, cfg: FrontierConfig):
        cfg.check()
        self.cfg, self.out = cfg, Path(cfg.out_dir)
        self._real: dict[str, Any] = {}
        # what every setting's result depends on besides the setting: results of another
        # model, dataset, image count, backend or feature space are never reused
        same = {k: getattr(cfg, k) for k in ("model_dir", "real_dataset", "per_class",
                                             "guidance_scale", "backend", "batch_size",
                                             "threads", "seed", "encoders", "select_split",
                                             "eval_split")}
        same["model_dir"] = str(Path(cfg.model_dir).resolve())
        same["real_dataset"] = str(Path(cfg.real_dataset).resolve())
        tag = derive_seed(json.dumps(same, sort_keys=True)) % 10**10
        self.root = self.out / "settings" / f"{tag:010d}"

    # -- per setting ------------------------------------------------------------------------

    def _synth_config(self, s: Setting, data: Path):
        from .configs.synth import SynthConfig
        c = self.cfg
        return SynthConfig(model_dir=c.model_dir, real_dataset=c.real_dataset, out_dir=str(data),
                           per_class=c.per_class, seed=c.seed, scheduler=s.scheduler,
                           steps=s.steps, guidance_scale=c.guidance_scale,
                           cfg_cutoff=s.cfg_cutoff, deep_cache_interval=s.deep_cache_interval,
                           backend=c.backend, batch_size=c.batch_size, threads=c.threads,
                           streams=1, workers=1)

    def _real_split(self, split: str):
        if split not in self._real:
            from ..engine.data.reader import load_split
            self._real[split] = load_split(self.cfg.real_dataset, split)
        return self._real[split]

    def measure(self, s: Setting) -> dict[str, Any]:
        """Synthesis speed and sample quality of ``s`` (cached in ``settings/<key>``)."""
        from filelock import FileLock
        d = self.root / s.key
        path = d / "result.json"
        d.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(d.parent / f".{s.key}.lock")):
            if path.is_file():
                return json.loads(path.read_text())
            data = d / "data"
            if data.exists():   # a killed run's partial job: its timing would not be whole
                shutil.rmtree(data)
            from ..engine.data.reader import DatasetInfo
            from .synth import load_samplers, run_job
            scfg = self._synth_config(s, data)
            t0 = time.perf_counter()
            samplers = load_samplers(scfg, DatasetInfo.load(self.cfg.real_dataset).image_size)
            load_s = time.perf_counter() - t0
            cpu0, t0 = time.process_time(), time.perf_counter()
            res = run_job(scfg, samplers)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            row = {**s.as_dict(), "key": s.key, "images": res.pool.images,
                   "images_per_s": res.images_per_second,
                   "images_per_cpu_s": res.pool.images / cpu if cpu else math.nan,
                   "generation_s": res.seconds, "cpu_s": cpu, "job_wall_s": wall,
                   "load_s": load_s, "backend": self.cfg.backend, **self._quality(data)}
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, row)
            return row

    def _quality(self, data: Path) -> dict[str, float]:
        from ..engine.data.reader import DatasetInfo, load_split
        from ..engine.evaluation.quality import load_encoder, quality_report
        c = self.cfg
        syn = load_split(data, "train")
        names = DatasetInfo.load(c.real_dataset).class_names
        out = {}
        for spec in c.encoders:
            enc = load_encoder(spec)
            tag = spec.replace(":", "_")
            for split, pre in ((c.select_split, ""), (c.eval_split, f"{c.eval_split}_")):
                m = quality_report(self._real_split(split), syn, enc, names)["overall"]
                out.update({f"{pre}fd_{tag}": m["frechet_distance"],
                            f"{pre}precision_{tag}": m["precision"],
                            f"{pre}recall_{tag}": m["recall"]})
        return out

    def downstream(self, s: Setting) -> dict[str, list[float]]:
        """Small-CNN accuracy per split (select and eval), one per seed, trained on k real
        images per class plus the setting's synthetic images (each seed cached)."""
        from ..engine.data.kshot import kshot_subset
        from ..engine.data.reader import DatasetInfo, load_split
        from ..engine.evaluation.classifiers import predict_proba, train_classifier
        from ..engine.evaluation.metrics import classification_metrics
        c = self.cfg
        tag = derive_seed(json.dumps({"k": c.k, "cnn_steps": c.cnn_steps,
                                      "splits": [c.select_split, c.eval_split]})) % 10**8
        d = self.root / s.key
        names = DatasetInfo.load(c.real_dataset).class_names
        splits = (c.select_split, c.eval_split)
        accs: dict[str, list[float]] = {sp: [] for sp in splits}
        for seed in c.downstream_seeds:
            path = d / f"downstream-seed{seed}-{tag}.json"
            if not path.is_file():
                real = kshot_subset(self._real_split("train"), c.k, seed)
                syn = load_split(d / "data", "train")
                x = np.concatenate([real.images, syn.images])
                y = np.concatenate([real.labels, syn.labels])
                model = train_classifier(x, y, steps=c.cnn_steps, batch=64, lr=1e-3, seed=seed)
                out: dict[str, Any] = {"seed": seed, "n_train": len(y)}
                for sp in splits:
                    ev = self._real_split(sp)
                    m = classification_metrics(ev.labels, predict_proba(model, ev.images),
                                               names)
                    out[sp] = {"accuracy": m["accuracy"], "macro_auc": m["macro_auc"]}
                atomic_write_json(path, out)
            got = json.loads(path.read_text())
            for sp in splits:
                accs[sp].append(got[sp]["accuracy"])
        return accs

    # -- the sweep --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        c = self.cfg
        grid = settings_grid(c)
        rows = [self.measure(s) for s in tqdm(grid, desc="frontier settings", unit="setting")]
        fd = f"fd_{c.encoders[0].replace(':', '_')}"
        sp = SPEED_KEYS[c.speed]
        for r in rows:
            r["speed"] = r[sp]
        base = rows[0]
        front = pareto_front([(r["speed"], r[fd]) for r in rows])
        limit = base[fd] * (1 + c.tolerance)
        rec_key = f"recall_{c.encoders[0].replace(':', '_')}"
        rec_min = (-math.inf if c.recall_tolerance is None
                   else base[rec_key] * (1 - c.recall_tolerance))

        def close(r: dict) -> bool:
            return bool(r[fd] <= limit and r[rec_key] >= rec_min)
        within = sorted((i for i, r in enumerate(rows) if close(r) and i != 0),
                        key=lambda i: -rows[i]["speed"])
        picks = within[:c.downstream_top]
        picks += [i for i in front if i not in picks and i != 0][:c.downstream_top - len(picks)]
        ev = f"{c.eval_split}_"
        for i in tqdm([0, *picks], desc="downstream CNN", unit="setting"):
            accs = self.downstream(grid[i])
            for split, pre in ((c.select_split, ""), (c.eval_split, ev)):
                mean, lo, hi = seed_ci(accs[split])
                rows[i].update({f"{pre}accuracy_mean": mean, f"{pre}accuracy_ci_low": lo,
                                f"{pre}accuracy_ci_high": hi,
                                f"{pre}accuracy_seeds": accs[split]})
        b_lo = base["accuracy_ci_low"]
        for i, r in enumerate(rows):
            r["on_frontier"] = i in front
            r["speedup"] = r["speed"] / base["speed"]
            r["fd_ratio"] = r[fd] / base[fd] if base[fd] else math.nan
            r["fd_within_tolerance"] = bool(r[fd] <= limit)
            r["quality_within_tolerance"] = close(r)
            r["accuracy_within_ci"] = (bool(r["accuracy_mean"] >= b_lo)
                                       if "accuracy_mean" in r else None)
        ok = [i for i, r in enumerate(rows)
              if r["quality_within_tolerance"] and r["accuracy_within_ci"] is not False]
        best = max(ok, key=lambda i: rows[i]["speed"])   # the baseline always qualifies
        rec = rows[best]
        # the report: the choice made on the select split, judged on the eval split only
        holds = bool(rec[ev + fd] <= base[ev + fd] * (1 + c.tolerance)
                     and rec[ev + rec_key] >= (-math.inf if c.recall_tolerance is None else
                                               base[ev + rec_key] * (1 - c.recall_tolerance))
                     and rec[f"{ev}accuracy_mean"] >= base[f"{ev}accuracy_ci_low"])
        for r in rows:
            r[f"{ev}fd_ratio"] = r[ev + fd] / base[ev + fd] if base[ev + fd] else math.nan
        summary = {"baseline": base["key"], "recommended": rec["key"],
                   "recommended_speedup": rec["speedup"], "fd_space": fd, "speed": c.speed,
                   "select_split": c.select_split, "eval_split": c.eval_split,
                   "tolerance": c.tolerance, "recall_tolerance": c.recall_tolerance,
                   "frontier": [rows[i]["key"] for i in front],
                   "holds_on_eval_split": holds,
                   "target_met": bool(rec["speedup"] >= 2.0 and holds),
                   "config": c.to_dict() if hasattr(c, "to_dict") else {}, "rows": rows}
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_csv(rows)
        self._plot(rows, front, fd, best)
        atomic_write_json(self.out / "frontier.json", summary)
        return summary

    def _write_csv(self, rows: list[dict]) -> Path:
        path = self.out / "frontier.csv"
        keys = list(dict.fromkeys(k for r in rows for k in r
                                  if not k.endswith("accuracy_seeds")))
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)
        return path

    def _plot(self, rows: list[dict], front: list[int], fd: str, best: int) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        v = [r["speed"] for r in rows]
        f = [r[fd] for r in rows]
        ax.scatter(v, f, c="#9aa5b1", s=18, label="settings")
        ax.plot([v[i] for i in front], [f[i] for i in front], "-o", c="#54a24b", ms=5,
                label="Pareto frontier")
        ax.scatter([v[0]], [f[0]], marker="s", c="black", s=40, label=f"baseline {rows[0]['key']}")
        ax.scatter([v[best]], [f[best]], marker="*", c="#e45756", s=120,
                   label=f"recommended {rows[best]['key']}")
        ax.axhline(f[0] * (1 + self.cfg.tolerance), ls="--", c="#f58518", lw=1,
                   label=f"baseline FD +{100 * self.cfg.tolerance:g}%")
        for i in front:
            ax.annotate(rows[i]["key"], (v[i], f[i]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("images per CPU second (shards written)" if self.cfg.speed == "cpu"
                      else "images/s (shards written)")
        ax.set_ylabel(f"FD on {self.cfg.select_split} ({fd[3:]} features, lower is better)")
        ax.legend(fontsize=7)
        path = self.out / "frontier.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def markdown_table(summary: dict) -> str:
    """The sweep as a markdown table (frontier rows marked), for the console and RESULTS.md:
    the select-split columns the choice was made on, then the eval-split columns reported."""
    fd = summary["fd_space"]
    tag = fd[3:]
    sel, ev = summary.get("select_split", "val"), summary.get("eval_split", "test")
    pre = f"{ev}_"

    def acc(r: dict, p: str) -> str:
        if f"{p}accuracy_mean" not in r:
            return ""
        return (f"{100 * r[p + 'accuracy_mean']:.1f} [{100 * r[p + 'accuracy_ci_low']:.1f}, "
                f"{100 * r[p + 'accuracy_ci_high']:.1f}]")
    head = (f"| setting | images/s | images/CPU-s | speed-up ({summary['speed']}) "
            f"| {sel}: FD ({tag}) | {sel}: FD / baseline | {sel}: recall "
            f"| {sel}: CNN accuracy % | {ev}: FD / baseline | {ev}: precision | {ev}: recall "
            f"| {ev}: CNN accuracy % (mean [95% CI]) | frontier |")
    lines = [head, "|" + "---|" * 13]
    for r in summary["rows"]:
        lines.append(f"| {r['key']} | {r['images_per_s']:.2f} | {r['images_per_cpu_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r[fd]:.3f} | {r['fd_ratio']:.3f} | "
                     f"{r[f'recall_{tag}']:.3f} | {acc(r, '')} | {r[pre + 'fd_ratio']:.3f} | "
                     f"{r[f'{pre}precision_{tag}']:.3f} | {r[f'{pre}recall_{tag}']:.3f} | "
                     f"{acc(r, pre)} | {'yes' if r['on_frontier'] else ''} |")
    return "\n".join(lines)


def run_frontier(cfg: FrontierConfig) -> dict[str, Any]:
    """Run (or resume) the sweep and print its table and recommendation."""
    summary = Frontier(cfg).run()
    print(markdown_table(summary))
    r = summary["recommended"]
    recall = ("" if cfg.recall_tolerance is None
              else f", its recall within {100 * cfg.recall_tolerance:g}%")
    print(f"\nbaseline {summary['baseline']}; cheapest setting within {100 * cfg.tolerance:g}% "
          f"of its FD{recall} and its accuracy CI on {cfg.select_split}: {r} "
          f"({summary['recommended_speedup']:.2f}x images/s); on {cfg.eval_split} it "
          f"{'holds' if summary['holds_on_eval_split'] else 'does NOT hold'}; target >= 2x "
          f"{'met' if summary['target_met'] else 'NOT met'}")
    print(f"wrote {Path(cfg.out_dir) / 'frontier.csv'}, frontier.png, frontier.json")
    return summary
