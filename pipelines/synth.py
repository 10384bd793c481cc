"""`medfake synth`: mass synthesis into dataset shards, exactly once, on any number of ranks.

The job (``SynthConfig``) is planned up front (``engine.synth_plan``): a fixed list of shards of
fixed size, each sample's key, prompt and seed (``derive_seed(job seed, key)``), stored in
``synth_plan.json``. Each rank (``--rank/--world-size``, torchrun, srun or a SLURM array) takes
its static share of the shards, skips the finished ones and writes the rest; a shard becomes
visible only complete (temporary file, fsync, rename, manifest), so kills and re-runs never lose
or duplicate a sample. The backend computes on this thread while ``engine.shard_pool`` encodes
and writes in the background; the fraction of wall time the backend is busy is measured and
logged with a summary line. The rank that finds every shard done writes ``dataset.json``
(``medfake synth status OUT --finalize`` does the same). Modes (``engine.synth_modes``):
txt2img, inpaint, outpaint, inpaint-outpaint; optional curation (``engine.synth.curation``).
Parameters that change images are the job's identity: another job on the same output directory
is refused, ``extend=True`` adds samples with the same parameters as new shards.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..engine.core.capabilities import CapabilityError
from ..engine.data.format import IMAGE_EXTS, Sample, shard_name
from ..engine.data.reader import DatasetInfo
from ..engine.diffusion.backends import BACKENDS, check_engines_serve, resolve_backend
from ..engine.diffusion.sd_model import model_hash
from ..engine.diffusion.streams import (
    STREAM_BACKENDS,
    SamplerStreams,
    resolve_streams,
    threads_per_stream,
)
from ..engine.synth.curation import CurationConfig, build_curator
from ..engine.synth.files import live_temporaries, stray_temporaries
from ..engine.synth.modes import BatchGenerator, ModeConfig
from ..engine.synth.plan import (
    PlanMismatchError,
    RankInfo,
    SynthPlan,
    open_plan,
    resolve_rank,
)
from ..engine.synth.shard_pool import PoolStats, ShardPool
from ..engine.synth.sources import RealIndex, split_fingerprint
from ..engine.synth.status import finalize, shard_state, synth_status
from .configs.synth import SynthConfig
from .models import load_model

log = logging.getLogger(__name__)
__all__ = ["SynthConfig", "SynthResult", "synthesize", "run_job", "synth_status",
           "PlanMismatchError", "model_prompts"]

PROMPTS_FILE = "medfake_prompts.json"  # model-dir prompt templates (written by DreamBooth)
DEFAULT_PER_REAL = 10                  # the ratio where the skin study's gains saturate
DEFAULT_BATCH_SIZE = 16                # images per call where the batch is not measured


def model_prompts(model_dir: str) -> dict:
    """The model dir's ``medfake_prompts.json`` (tokens, per-class templates), or {}."""
    path = Path(model_dir) / PROMPTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class SynthResult:
    """What one rank did. ``backend_busy``: fraction of the generation wall time spent inside
    the backend; ``complete``: every shard of the job (all ranks) is done and dataset.json
    written."""

    out: Path
    rank: RankInfo
    planned_shards: int
    shards_todo: int
    pool: PoolStats
    seconds: float = 0.0
    backend_seconds: float = 0.0
    load_seconds: float = 0.0
    complete: bool = False
    streams: int = 1

    @property
    def backend_busy(self) -> float:
        """Busy time of all streams over ``streams x`` the generation wall time."""
        return self.backend_seconds / (self.streams * self.seconds) if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.pool.images / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        r, p = self.rank, self.pool
        return (f"synth rank {r.rank}/{r.world_size}: {p.shards} shard(s), {p.images} images"
                + (f" ({p.dropped} dropped by curation)" if p.dropped else "")
                + f" in {self.seconds:.1f} s = {self.images_per_second:.2f} img/s; backend busy "
                f"{100 * self.backend_busy:.1f}% of wall time ({self.streams} stream(s); model load {self.load_seconds:.1f}"
                f" s excluded); waited on the writer {p.stall_s:.2f} s; encode {p.encode_s:.1f} s,"
                f" write {p.write_s:.1f} s in the background; job "
                + ("complete" if self.complete else "not complete yet (other ranks)"))


# ----------------------------------------------------------------------------- planning





def _source_hash(model_dir: str) -> str:
    """Hash of the diffusers weights behind ``model_dir`` (also for export/engine dirs)."""
    from ..engine.diffusion.backends.manifest import MANIFEST_NAME, ExportManifest
    if (Path(model_dir) / MANIFEST_NAME).is_file():
        return ExportManifest.load(model_dir).source_hash
    return model_hash(model_dir)


def _prompt_templates(cfg: SynthConfig, real: DatasetInfo
                      ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Per-class templates and DreamBooth identifier tokens. A model dir's
    ``medfake_prompts.json`` overrides the dataset's templates; a ``{token}`` placeholder in
    any template is replaced by the class's token (removed when the model has none)."""
    learned = model_prompts(cfg.model_dir)
    templates = learned.get("prompt_templates") or real.prompt_templates
    tokens = learned.get("tokens") or {}
    filled = {c: [" ".join(t.replace("{token}", tokens.get(c, "")).split()) for t in ts]
              for c, ts in templates.items()}
    return filled, tokens


def _class_counts(cfg: SynthConfig, real: DatasetInfo) -> tuple[tuple[int, ...], dict[str, int]]:
    if cfg.per_class is not None and cfg.per_real is not None:
        raise ValueError("give --per-class N or --per-real K, not both")
    if cfg.per_class is not None:
        if cfg.per_class < 0:
            raise ValueError("--per-class must be >= 0")
        return (cfg.per_class,) * len(real.class_names), {"per_class": cfg.per_class}
    k = DEFAULT_PER_REAL if cfg.per_real is None else cfg.per_real
    if k < 0:
        raise ValueError("--per-real must be >= 0")
    if "train" not in real.splits:
        raise ValueError(f"--per-real needs the real dataset's train split; {real.root} has "
                         f"{sorted(real.splits)}")
    have = real.splits["train"]["per_class"]
    return tuple(k * int(have.get(c, 0)) for c in real.class_names), {"per_real": k}


def _precision_identity(cfg: SynthConfig) -> dict[str, str]:
    """The precision the job's backend runs at on this machine, as part of the job's identity:
    always for openvino; for torch when it is not fp32 (fp32 torch plans written before torch
    had a precision option stay resumable); other backends compute in fp32."""
    if cfg.backend == "openvino":
        from ..engine.diffusion.backends.ov_backend import resolve_precision
        return {"precision": resolve_precision(cfg.precision)}
    if cfg.backend == "torch":
        from ..engine.diffusion.backends import default_device, torch_backend
        p = torch_backend.resolve_precision(cfg.precision, default_device())
        return {} if p == "fp32" else {"precision": p}
    return {}


def _job_params(cfg: SynthConfig, real: DatasetInfo, size: int, mode: ModeConfig,
                quantity: dict[str, int], templates: dict, tokens: dict, mhash: str,
                curation: CurationConfig) -> dict[str, Any]:
    """Everything that changes the job's images: its identity in ``synth_plan.json``."""
    if cfg.image_format not in IMAGE_EXTS:
        raise ValueError(f"--format {cfg.image_format!r}: choose one of {', '.join(IMAGE_EXTS)}")
    if cfg.samples_per_shard < 1 or (cfg.batch_size or 1) < 1 or cfg.steps < 1:
        raise ValueError("--samples-per-shard, --batch-size and --steps must be >= 1")
    from ..engine.diffusion.sampler import SCHEDULERS
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; choose one of {sorted(SCHEDULERS)}")
    uses_real = mode.conditioned or "per_real" in quantity or curation.memorization
    return {"generator": "diffusion", **mode.identity(), **quantity, "seed": cfg.seed,
            "scheduler": cfg.scheduler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
            **_sampler_options(cfg),
            "negative_prompt": cfg.negative_prompt, "image_size": size, "channels": real.channels,
            "image_format": cfg.image_format, "quality": cfg.quality,
            "samples_per_shard": cfg.samples_per_shard, "backend": cfg.backend,
            **_precision_identity(cfg),
            "model_hash": mhash, "class_names": list(real.class_names),
            "prompt_templates": templates, "class_prompt_templates": real.prompt_templates,
            **({"identifier_tokens": tokens} if tokens else {}),
            **({"real_train_sha256": split_fingerprint(real)} if uses_real else {}),
            **curation.identity(),
            "lineage": {"model_dir": str(Path(cfg.model_dir).resolve()),
                        "real_dataset": str(Path(cfg.real_dataset).resolve()),
                        "mode": mode.mode, "conditioned": mode.conditioned}}


def _sampler_options(cfg: SynthConfig) -> dict[str, Any]:
    """The mass-synthesis sampler options that change images, validated; each only when it is
    on, so plans written before the options existed keep their identity (the branch counts
    only, and always, when caching is on)."""
    s = sampler_config(cfg, 0)
    s.check()
    out: dict[str, Any] = {"cfg_cutoff": s.cfg_cutoff} if s.cfg_cutoff != 1.0 else {}
    if s.deep_cache_interval > 1:
        out.update(deep_cache_interval=s.deep_cache_interval,
                   deep_cache_branch=s.deep_cache_branch)
    return out


def sampler_config(cfg: SynthConfig, size: int):
    """The job's ``SamplerConfig`` at ``size`` px."""
    from ..engine.diffusion.sampler import SamplerConfig
    return SamplerConfig(cfg.scheduler, cfg.steps, cfg.guidance_scale, cfg.negative_prompt,
                         size, size, cfg_cutoff=cfg.cfg_cutoff,
                         deep_cache_interval=cfg.deep_cache_interval,
                         deep_cache_branch=cfg.deep_cache_branch)


# ----------------------------------------------------------------------------- running

def synth_job_shape(cfg: SynthConfig, size: int):
    """What the job asks of a backend: ``--batch-size`` images of ``size`` px per call (at most
    ``DEFAULT_BATCH_SIZE`` while automatic), the UNet's batch doubled under classifier-free
    guidance (and also undoubled after the ``--cfg-cutoff``)."""
    from ..engine.diffusion.backends.components import JobShape
    from ..engine.diffusion.sampler import uses_cfg
    s = sampler_config(cfg, size)
    return JobShape(cfg.batch_size or DEFAULT_BATCH_SIZE, size, size,
                    uses_cfg(cfg.guidance_scale),
                    truncated_guidance=s.cfg_steps() < s.steps,
                    deep_cache=s.deep_cache_interval > 1)


def _calibrates(cfg: SynthConfig) -> bool:
    """Automatic streams or batch on ONNX Runtime on a CPU, with a measuring budget."""
    from ..engine.core import capabilities as cap
    return (cfg.backend in STREAM_BACKENDS and (cfg.streams is None or cfg.batch_size is None)
            and cfg.calibration_budget > 0 and not cap.cuda().available)


def resolve_settings(cfg: SynthConfig, size: int, shard_sizes: list[int], model_hash: str
                     ) -> tuple[SynthConfig, str | None]:
    """``cfg`` with ``batch_size`` (and, when calibrated, ``streams`` and ``threads``) filled
    in for a job whose shards to do hold ``shard_sizes`` samples, and why (None: nothing
    was automatic or the rule applies: ``load_samplers`` says why).

    ONNX Runtime on a CPU with ``--streams`` or ``--batch-size`` left automatic: a short
    measurement on the job's model, size and guidance (``engine.diffusion.calibrate``, cached
    per model hash, machine and backend); elsewhere batch ``DEFAULT_BATCH_SIZE``."""
    from dataclasses import replace
    if not _calibrates(cfg):
        return replace(cfg, batch_size=cfg.batch_size or DEFAULT_BATCH_SIZE), None
    import torch
    from filelock import FileLock

    from ..engine.core.paths import cache_dir
    from ..engine.diffusion.backends.ort_backend import unet_probe
    from ..engine.diffusion.calibrate import calibrate
    from ..engine.diffusion.sampler import uses_cfg
    from .models import prepare_export
    threads = cfg.threads or torch.get_num_threads()
    with FileLock(str(cache_dir("locks") / "export.lock")):
        export_dir = prepare_export(cfg.model_dir, "onnx")
    guidance = uses_cfg(cfg.guidance_scale)
    key = {"backend": "onnx", "provider": "cpu", "size": size, "guidance": guidance}

    def probe(t: int):
        return unet_probe(export_dir, t, size, size, guidance)
    choice = calibrate(probe, shard_sizes, threads, model_hash, key,
                       budget_s=cfg.calibration_budget, steps=cfg.steps,
                       batch=cfg.batch_size, streams=cfg.streams)
    st = choice.setting
    return replace(cfg, batch_size=st.batch, streams=st.streams,
                   threads=st.streams * st.threads), choice.why


def load_samplers(cfg: SynthConfig, size: int, n_batches: int | None = None,
                  why: str | None = None) -> list:
    """Load the model on the backend once and return one sampler per stream (see
    ``engine.sampler_streams``); the streams share ``cfg.threads`` between them, and without
    ``--streams`` there are never more streams than the job's ``n_batches``. Exports into
    the shared cache are serialised between the ranks of one host (a file lock), so they never
    race on the same export. ``why``: the reason for the settings to log (``resolve_settings``'s
    calibration), else the stream rule's."""
    import torch
    from filelock import FileLock

    from ..engine.core import capabilities as cap
    from ..engine.core.paths import cache_dir
    threads = cfg.threads or torch.get_num_threads()
    device = "cuda" if cap.cuda().available else "cpu"
    streams = resolve_streams(cfg.streams, cfg.backend, device, threads, n_batches)
    per_stream = threads_per_stream(threads, streams)
    torch.set_num_threads(per_stream)
    job = synth_job_shape(cfg, size)
    if cfg.backend == "torch":
        model = load_model(cfg.model_dir, "torch", precision=cfg.precision)
    else:
        opts = {"threads": per_stream} if cfg.backend in ("onnx", "openvino") else {}
        if cfg.backend == "openvino":
            opts["precision"] = cfg.precision
        with FileLock(str(cache_dir("locks") / "export.lock")):
            model = load_model(cfg.model_dir, cfg.backend, job=job, **opts)
    scfg = sampler_config(cfg, size)
    why = why or ("as asked (--streams)" if cfg.streams else (
        f"automatic: one per thread, capped by the job's {n_batches} batch(es)"
        if n_batches is not None and streams == n_batches and streams < threads else
        "automatic"))
    log.info("%s backend: %d stream(s) x %d thread(s), batch %s (%s)", cfg.backend, streams,
             per_stream, cfg.batch_size or DEFAULT_BATCH_SIZE, why)
    return [model.sampler(scfg) for _ in range(streams)]


def _resolve_auto(cfg: SynthConfig, job, counts: tuple[int, ...], measure: bool = True
                  ) -> SynthConfig:
    """``cfg`` with ``--backend auto`` resolved. On a machine without CUDA, backend and
    precision are the measured choice (``engine.diffusion.backends.select``) when it is cached
    or the job is large enough to pay for measuring it; otherwise (and on GPU machines) the
    static order of ``resolve_backend``. ``measure=False`` (a sampler is already loaded):
    only a cached measurement is used. Ranks of one host measure one at a time (a file lock),
    so they never time each other's load, and the later ones read the cache."""
    from dataclasses import replace
    if cfg.backend != "auto":
        return replace(cfg, backend=resolve_backend(cfg.backend, cfg.model_dir, job))
    import torch
    from filelock import FileLock

    from ..engine.core import capabilities as cap
    from ..engine.core.paths import cache_dir
    from ..engine.diffusion.backends import choose_auto
    from ..engine.diffusion.backends.select import candidates, worth_measuring
    from .models import prepare_export
    unet_calls = -(-sum(counts) // (cfg.batch_size or DEFAULT_BATCH_SIZE)) * cfg.steps
    cands = candidates(cfg.precision)[0]
    threads = cfg.threads or torch.get_num_threads()
    allow = measure and not cap.cuda().available and worth_measuring(
        unet_calls, len(cands), stream_candidates=sum(
            c.backend in STREAM_BACKENDS for c in cands) if threads > 1 else 0)
    with FileLock(str(cache_dir("locks") / "export.lock")):
        choice = choose_auto(cfg.model_dir, job, precision=cfg.precision, prepare=prepare_export,
                             threads=cfg.threads, allow_measure=allow)
    if choice is not None:
        log.info("--backend auto: %s at %s: %s", choice.backend, choice.precision, choice.why)
        return replace(cfg, backend=choice.backend, precision=choice.precision)
    name = resolve_backend("auto", cfg.model_dir, job)
    if not allow and not cap.cuda().available:
        log.info("--backend auto: %s (static order): the job's %d UNet calls are too few to pay "
                 "for measuring the CPU backends (`medfake bench precision-gate` or a larger job "
                 "measures them once for this machine)", name, unet_calls)
    return replace(cfg, backend=name)


def _temp_target(p: Path) -> str:
    return p.name[1:].split(".tmp-")[0]


def _remove_own_temporaries(out: Path, shards: list[int]) -> None:
    """Temporary files of this rank's shards that no live process holds are leftovers of a
    killed run of this rank; a live writer's (a duplicate launch, a requeue while the old task
    runs) are never touched (``engine.synth.files.temp_is_live``)."""
    mine = {shard_name("train", i) for i in shards}
    mine |= {n.replace(".tar", ".json") for n in mine}
    for p in stray_temporaries(out):
        if _temp_target(p) in mine:
            log.info("removing %s, left by an interrupted run", p.name)
            p.unlink(missing_ok=True)


def _being_written(out: Path, name: str) -> Path | None:
    """A live process's temporary file of shard ``name``, if one is writing it now."""
    return next((p for p in live_temporaries(out, name) if _temp_target(p) == name), None)


def run_job(cfg: SynthConfig, sampler=None) -> SynthResult:
    """Run (or resume) this rank's share of the job; see the module doc. ``sampler``: an
    ``engine.sampler.Sampler`` (or a list of them, one per stream, over one model) already
    loaded from ``cfg.model_dir`` on ``cfg.backend`` with the job's settings (to run several
    jobs on one loaded model); None loads it."""
    real = DatasetInfo.load(cfg.real_dataset)
    size = cfg.image_size or real.image_size
    job = synth_job_shape(cfg, size)
    counts, quantity = _class_counts(cfg, real)
    cfg = _resolve_auto(cfg, job, counts, measure=sampler is None)
    if cfg.backend == "tensorrt":   # engines that cannot serve the job: refuse before writing
        check_engines_serve(cfg.model_dir, job)
    why = BACKENDS[cfg.backend].unavailable()
    if why:   # before the plan is stored with this backend
        raise CapabilityError(f"backend {cfg.backend!r} cannot run here: {why}. Use --backend "
                              f"onnx or torch, or see `medfake doctor`.")
    rank = resolve_rank(cfg.rank, cfg.world_size)
    mode, curation = cfg.mode_config(), cfg.curation()
    curation.validate()
    templates, tokens = _prompt_templates(cfg, real)
    params = _job_params(cfg, real, size, mode, quantity, templates, tokens,
                         _source_hash(cfg.model_dir), curation)
    out = Path(cfg.out_dir)
    plan = open_plan(out, params, counts, cfg.extend)
    mine = plan.rank_shards(rank.rank, rank.world_size)
    _remove_own_temporaries(out, mine)
    todo = [i for i in mine if shard_state(out, plan, i).state != "done"]
    log.info("synthesis (%s): %d samples in %d shards; rank %d/%d (%s) owns %d, %d to do",
             mode.mode, plan.n_samples, plan.n_shards, rank.rank, rank.world_size, rank.source,
             len(mine), len(todo))
    result = SynthResult(out, rank, plan.n_shards, len(todo), PoolStats())
    if todo:
        import torch
        threads = torch.get_num_threads()   # streams lower it for their duration
        try:
            _generate(cfg, plan, todo, real, size, mode, curation, tokens, result, sampler)
        finally:
            torch.set_num_threads(threads)
    result.complete = finalize(out, plan)
    if todo:
        log.info(result.summary())
    if not result.complete:
        log.info("other ranks' shards are not all done yet; dataset.json will be written by "
                 "the last rank to finish (or `medfake synth status %s --finalize`)", out)
    return result


def _generate(cfg: SynthConfig, plan: SynthPlan, todo: list[int], real: DatasetInfo, size: int,
              mode: ModeConfig, curation: CurationConfig, tokens: dict[str, str],
              result: SynthResult, sampler=None) -> None:
    out = Path(cfg.out_dir)
    t = time.perf_counter()
    index = RealIndex(cfg.real_dataset) if mode.conditioned or curation.memorization else None
    shard_sizes = [plan.shard_size(i) for i in todo]
    if sampler is None:
        cfg, why = resolve_settings(cfg, size, shard_sizes, plan.params["model_hash"])
    else:   # already loaded: streams and threads are the caller's
        from dataclasses import replace
        cfg, why = replace(cfg, batch_size=cfg.batch_size or DEFAULT_BATCH_SIZE), None
    n_batches = sum(-(-n // cfg.batch_size) for n in shard_sizes)
    samplers = sampler or load_samplers(cfg, size, n_batches, why=why)
    samplers = samplers if isinstance(samplers, list) else [samplers]
    curator = build_curator(curation, real.class_names, real.prompt_templates, index)
    gen = BatchGenerator(samplers[0], mode, size, cfg.seed, index)
    result.load_seconds, result.streams = time.perf_counter() - t, len(samplers)
    from ..engine.diffusion.backends import memory
    peak_counted = sampler is None and memory.reset_peak()   # the model is loaded: from here
    base = {"source": "synthetic", "generator": "diffusion", "model_hash": plan.params["model_hash"],
            "negative_prompt": cfg.negative_prompt, "scheduler": cfg.scheduler,
            "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, **_sampler_options(cfg),
            "backend": cfg.backend,
            "precision": getattr(samplers[0].backend, "precision", "fp32"),
            "split": "train", "mode": mode.mode}
    r = result.rank
    bar = tqdm(total=sum(plan.shard_size(i) for i in todo), unit="img", smoothing=0.1,
               desc=f"synth {r.rank}/{r.world_size}")

    def batches():
        for i in todo:
            name = shard_name("train", i)
            live = _being_written(out, name)
            if live is not None or shard_state(out, plan, i).state == "done":
                log.info("skipping %s: %s", name, "done meanwhile" if live is None else
                         f"a live process is writing it ({live.name})")
                bar.update(plan.shard_size(i))
                continue
            planned = plan.shard_samples(i)
            for b in range(0, len(planned), cfg.batch_size):
                yield i, planned[b:b + cfg.batch_size], b + cfg.batch_size >= len(planned)

    def run(sampler, job: tuple[int, list, bool]) -> tuple:
        return *job, *gen(job[1], sampler)

    t = time.perf_counter()
    with ShardPool(cfg.out_dir, "train", real.class_names, cfg.image_format, cfg.quality,
                   cfg.workers, cfg.max_pending, curator) as pool, SamplerStreams(samplers) as st:
        for i, batch, last, images, provenance in st.map(run, batches()):
            samples = []
            for p, img, prov in zip(batch, images, provenance):
                if real.channels == 1:
                    img = img.astype(np.float32).mean(-1).round().astype(np.uint8)
                name = real.class_names[p.cls]
                meta = {**base, "prompt": p.prompt, "seed": p.seed, "class_name": name, **prov}
                if tokens:
                    meta["identifier_token"] = tokens.get(name)
                samples.append(Sample(p.key, img, p.cls, p.prompt, meta))
            pool.submit(i, samples, last=last)
            bar.update(len(batch))
    result.seconds = time.perf_counter() - t
    result.backend_seconds = gen.backend_s
    peak = memory.peak_since_reset() if peak_counted else None
    if peak:   # what the automatic backend choice reads next time (backends.memory)
        memory.record_peak(cfg.backend, plan.params["model_hash"], synth_job_shape(cfg, size),
                           len(samplers), peak)
    result.pool = pool.stats
    bar.close()


def synthesize(cfg: SynthConfig) -> Path:
    """Run (or resume) the job (this rank's share); return the output dataset directory."""
    return run_job(cfg).out
