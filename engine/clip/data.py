"""CLIP training data: WebDataset shards streamed, mixed, augmented and exactly resumable.

Stream contract (``ClipStream``):

* Every rank gets an endless stream of equal-size batches, so ranks never wait on each other
  for data whatever the shard sizes: a run is a number of optimizer steps and an "epoch" is a
  fixed number of samples (``steps_per_epoch``), as ``with_epoch`` does in webdataset.
* Each (rank, worker) pair is a *slot*. Per source, a slot reads *passes*: pass ``p`` takes
  the shard list shuffled with seed ``(seed, source, p)``, split by node then by worker as
  ``wds.split_by_node`` / ``wds.split_by_worker`` do; in resampled mode it draws
  ``ceil(shards / slots)`` shards with replacement instead (for many nodes). A source with
  fewer shards than slots falls back to a sample split: every slot reads every shard and keeps
  every ``slots``-th sample (logged once; more reading, same coverage).
* A pass's shard list is cut into *windows* of consecutive shards holding about
  ``shuffle_buffer`` samples; a window is read whole and shuffled with a seed of
  ``(seed, source, slot, pass, window)`` (what a shuffle buffer does, but seekable). Several
  sources are mixed by weight (``--mix DIR:WEIGHT``); the choice for the ``n``-th record of a
  slot is a hash of ``(seed, slot, n)``.
* Images may be ``png``, ``webp`` or ``jpg`` (whatever ``synth --format`` wrote). Bad records
  (corrupt or missing image, wrong mode or size, empty caption, unreadable tar) are skipped and
  counted in a ``SkipLog``, which warns at a limited rate. A stream that skips every sample of a
  shard, or ``max_skip_run`` records in a row, stops with one ``DatasetError`` naming the
  source and the reasons (no silent spin).
* Augmentation of the ``n``-th record is seeded by ``(seed, slot, n)`` (torch's CPU generator,
  forked so the caller's RNG is untouched), so it does not depend on what came before.

So the position of a slot is ``{"passes": [[pass, consumed, window, offset], ...], "n":
records, "skips"}``; each batch carries the state after it. ``ClipStream(states=...)`` resumes
there by seeking: it reads only the shards of the window it stopped in (the shard order of a
pass is known from the seed) and skips ``offset`` records without decoding, which reproduces
the uninterrupted stream exactly in time independent of the dataset size. DataLoader workers take batches round-robin;
``role_offset`` rotates worker roles so a resumed loader starts with the worker that was next.
"""
from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import os
import random
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from ..core.errors import DatasetError
from ..data.augmentation import augmentation
from ..data.format import IMAGE_EXTS, image_member
from ..data.reader import DatasetInfo, SkipLog

log = logging.getLogger(__name__)

AUGMENTS = ("none", "openclip", "classic", "skin")


# ----------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """One dataset's shards of a split, drawn with relative ``weight`` when mixing."""

    name: str
    urls: tuple[str, ...]
    weight: float
    count: int
    image_size: int
    channels: int


def parse_mix(spec: str) -> tuple[str, float]:
    """``DIR:WEIGHT`` -> (DIR, weight); a plain ``DIR`` has weight 1."""
    path, sep, w = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        weight = float(w)
    except ValueError:
        return spec, 1.0  # a ':' inside the path
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"--mix {spec!r}: the weight must be a positive number")
    return path, weight


def load_sources(data_dirs: Sequence[str | os.PathLike], mix: Sequence[str], split: str
                 ) -> list[Source]:
    """``data_dirs`` form one source of weight 1 (their shards concatenated); every ``mix``
    entry ``DIR:WEIGHT`` adds its own weighted source. Image size and channels must agree."""
    groups: list[tuple[list[str], float]] = []
    if data_dirs:
        groups.append(([str(d) for d in data_dirs], 1.0))
    for spec in mix:
        d, w = parse_mix(spec)
        groups.append(([d], w))
    if not groups:
        raise ValueError("no training data: give --data DIR [DIR ...] and/or --mix DIR:WEIGHT")
    sources = []
    for dirs, weight in groups:
        infos = [DatasetInfo.load(d) for d in dirs]
        urls = tuple(u for i in infos for u in i.shard_paths(split))
        if not urls:
            raise DatasetError(f"no {split!r} shards in {dirs}; write some with `medfake synth` "
                               f"or `medfake data phantoms`")
        shapes = {(i.image_size, i.channels) for i in infos}
        if len(shapes) != 1:
            raise DatasetError(f"datasets {dirs} mix image sizes/channels {sorted(shapes)}")
        size, ch = shapes.pop()
        sources.append(Source("+".join(os.path.basename(os.path.normpath(d)) for d in dirs),
                              urls, weight, sum(i.count(split) for i in infos), size, ch))
    if len({(s.image_size, s.channels) for s in sources}) != 1:
        raise DatasetError("mixed sources must share image size and channels: " + ", ".join(
            f"{s.name} {s.image_size}px x{s.channels}" for s in sources))
    return sources


# ----------------------------------------------------------------------------- transforms

def build_augment(name: str, size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Per-image augmentation on uint8 (C, H, W) tensors, or None for ``none``.

    ``openclip``: open_clip's training crop (RandomResizedCrop, scale 0.9-1, bicubic);
    ``classic``: ``classifiers.augmentation`` (reflect-padded random crop, h/v flips, rotation
    up to 20 degrees, brightness/contrast 0.2); ``skin``: classic plus an elastic warp
    (the skin-lesion study's set).
    """
    if name == "none":
        return None
    if name == "openclip":
        return v2.RandomResizedCrop(size, scale=(0.9, 1.0), antialias=True,
                                    interpolation=v2.InterpolationMode.BICUBIC)
    if name == "classic":
        return augmentation(size)
    if name == "skin":
        return v2.Compose([augmentation(size), v2.ElasticTransform(alpha=20.0, sigma=2.5)])
    raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTS}")


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    size: int | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) with C in {1, 3} -> normalised float (B, 3, size, size), resized
    bilinearly when the images have another size (as ``clip_model.images_to_tensor``)."""
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if size is not None and x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    return (x - mean) / std


def augment_batch(images: list[torch.Tensor], seeds: list[int],
                  augment: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Stack uint8 (C, H, W) images, augmenting image i with torch CPU seed ``seeds[i]``."""
    if augment is None:
        return torch.stack(images)
    out = []
    with torch.random.fork_rng(devices=[]):
        for img, s in zip(images, seeds):
            torch.default_generator.manual_seed(s)
            out.append(augment(img))
    return torch.stack(out)


class CachedTokenizer:
    """open_clip tokenizer with a per-process cache of caption -> token ids (captions of
    generated data repeat a lot). Picklable."""

    def __init__(self, tokenizer: Callable, max_size: int = 65536):
        self.tokenizer, self.max_size = tokenizer, max_size
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.max_size:
                self._cache.clear()
            self._cache.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self._cache[t] for t in texts])

    def __getstate__(self) -> dict:
        return {"tokenizer": self.tokenizer, "max_size": self.max_size, "_cache": {}}


# ----------------------------------------------------------------------------- stream

@dataclass(frozen=True)
class StreamConfig:
    batch_size: int                 # per rank (micro-batch)
    seed: int = 0
    shuffle_buffer: int = 2000      # samples; > classes x shard size if shards are class-pure
    workers: int = 1
    resampled: bool = False
    augment: str = "openclip"
    max_skip_run: int = 10_000      # this many skipped records in a row stop the stream


def _unit(base: int, n: int) -> float:
    """Uniform [0, 1) from (base, n), stateless."""
    h = hashlib.blake2b(n.to_bytes(8, "little"), key=base.to_bytes(8, "little"), digest_size=8)
    return int.from_bytes(h.digest(), "little") / 2.0 ** 64


def _seed(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


_WANTED = tuple(f".{e}" for e in (*IMAGE_EXTS, "txt"))


def _wanted_member(name: str) -> bool:
    """Only the image (``png``, ``webp`` or ``jpg``) and caption of a sample are read from
    the tar (metadata is skipped)."""
    return name.endswith(_WANTED)


class _Replay:
    """A mutable flag: while set, tar errors are not counted again (they were before a resume)."""
    on = False


def _reasons(skips: SkipLog) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(skips.counts.items())) or "tar errors"


def _skip_handler(skips: SkipLog, replay: _Replay) -> Callable[[Exception], bool]:
    def handler(exn: Exception) -> bool:
        if not replay.on:
            reason = ("missing_shard" if isinstance(exn, FileNotFoundError)
                      else "truncated_tar" if isinstance(exn, (tarfile.TarError, EOFError))
                      else "bad_sample")
            where = next((str(a) for a in exn.args if isinstance(a, str) and ".tar" in a),
                         "webdataset")
            skips.skip(reason, where, type(exn).__name__)
        return True
    return handler


class ClipStream(IterableDataset):
    """Endless ``(images (B,3,S,S) float, tokens (B,L) long, info)`` batches for one rank.

    ``info = {"role": worker role, "state": slot state after this batch, "keys": source/key
    of each sample}``. ``image_stats`` is
    ``clip_model.image_stats(model)`` (mean, std, size). See the module doc for the contract.
    """

    def __init__(self, sources: Sequence[Source], cfg: StreamConfig,
                 image_stats: tuple[torch.Tensor, torch.Tensor, int], tokenizer: Callable,
                 rank: int = 0, world_size: int = 1,
                 states: dict[int, dict] | None = None, role_offset: int = 0):
        if cfg.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.sources, self.cfg = list(sources), cfg
        self.mean, self.std, self.size = image_stats
        self.tokenizer = tokenizer if isinstance(tokenizer, CachedTokenizer) \
            else CachedTokenizer(tokenizer)
        self.rank, self.world = rank, world_size
        self.n_roles = max(1, cfg.workers)
        self.n_slots = self.world * self.n_roles
        self.states = copy.deepcopy(states or {})
        self.role_offset = role_offset
        total_w = sum(s.weight for s in self.sources)
        self.cum_weights = list(np.cumsum([s.weight / total_w for s in self.sources]))
        self.sample_split = [len(s.urls) < self.n_slots and not cfg.resampled
                             for s in self.sources]
        for s, split in zip(self.sources, self.sample_split):
            if split and rank == 0:
                log.warning("source %s has %d shard(s) for %d rank x worker slots: every slot "
                            "reads every shard and keeps every %d-th sample (correct, more I/O); "
                            "write at least %d shards to split by shard", s.name, len(s.urls),
                            self.n_slots, self.n_slots, self.n_slots)
        self.augment = build_augment(cfg.augment, self.sources[0].image_size)

    # -- per source ---------------------------------------------------------------------------

    def _pass_urls(self, si: int, slot: int, role: int, p: int) -> list[str]:
        src, cfg = self.sources[si], self.cfg
        if cfg.resampled:
            rng = random.Random(_seed(cfg.seed, "resample", si, slot, p))
            k = max(1, math.ceil(len(src.urls) / self.n_slots))
            return [rng.choice(src.urls) for _ in range(k)]
        urls = list(src.urls)
        random.Random(_seed(cfg.seed, "shards", si, p)).shuffle(urls)
        if self.sample_split[si]:
            return urls
        return urls[self.rank::self.world][role::self.n_roles]

    def _window_shards(self, si: int) -> int:
        """Shards per shuffle window: enough to hold ``shuffle_buffer`` samples (1 without
        shuffling), from the source's mean shard size in ``dataset.json``."""
        src = self.sources[si]
        if self.cfg.shuffle_buffer <= 1:
            return 1
        per_shard = max(1.0, src.count / max(1, len(src.urls)))
        return max(1, round(self.cfg.shuffle_buffer / per_shard))

    def _read_window(self, si: int, slot: int, urls: list[str], handler) -> list[dict]:
        """The raw records of ``urls`` (one window), sample-split if needed; each carries
        ``__shard_n__``, how many records its shard gave this window (for the all-skipped check)."""
        recs = list(wds.tarfile_samples([{"url": u} for u in urls], handler=handler,
                                        select_files=_wanted_member))
        if self.sample_split[si]:
            recs = [r for i, r in enumerate(recs) if i % self.n_slots == slot]
        per_url: dict[str, int] = {}
        for r in recs:
            per_url[r.get("__url__", "?")] = per_url.get(r.get("__url__", "?"), 0) + 1
        for r in recs:
            r["__shard_n__"] = per_url[r.get("__url__", "?")]
        return recs

    def _records(self, si: int, slot: int, role: int, pos: list[int], skips: SkipLog
                 ) -> Iterator[dict]:
        """Raw records of source ``si`` from position ``pos`` (updated in place).

        ``pos = [pass, consumed, window, offset]``: a pass's shard list (``_pass_urls``, fixed
        by the seed) is cut into windows of ``_window_shards`` consecutive shards; a window is
        read whole and shuffled with seed ``(seed, source, slot, pass, window)``. So resuming
        reads only the window it stopped in and skips ``offset`` records of it: bounded work,
        independent of the dataset size. (A two-entry ``[pass, consumed]`` position skips
        ``consumed`` records from the pass's start.)"""
        replay = _Replay()
        handler = _skip_handler(skips, replay)
        empty_passes = 0
        g = self._window_shards(si)
        if len(pos) == 2:
            pos.extend([0, pos[1]])
        while True:
            p, _, first, skip = pos
            urls = self._pass_urls(si, slot, role, p)
            got = 0
            for w in range(first, -(-len(urls) // g)):
                replay.on = skip > 0
                recs = self._read_window(si, slot, urls[w * g:(w + 1) * g], handler)
                replay.on = False
                if self.cfg.shuffle_buffer > 1:
                    random.Random(_seed(self.cfg.seed, "window", si, slot, p, w)).shuffle(recs)
                got += len(recs)
                if skip >= len(recs):
                    skip -= len(recs)
                    continue
                for r in recs:
                    r["__window__"] = (p, w)
                for off in range(skip, len(recs)):
                    pos[1], pos[2], pos[3] = pos[1] + 1, w, off + 1
                    yield recs[off]
                skip = 0
            empty_passes = empty_passes + 1 if got == 0 else 0
            if empty_passes > max(3, len(self.sources[si].urls)):
                raise DatasetError(f"source {self.sources[si].name} yields no readable samples "
                                   f"for rank {self.rank} worker {role}: its shards are empty "
                                   f"or corrupt")
            pos[:] = [p + 1, 0, 0, 0]

    # -- decoding -----------------------------------------------------------------------------

    def _decode(self, rec: dict, skips: SkipLog) -> tuple[torch.Tensor, str] | None:
        where = f"{os.path.basename(str(rec.get('__url__', '?')))}:{rec.get('__key__', '?')}"
        ext = image_member(rec)
        if ext is None:
            skips.skip("missing_png", where)
            return None
        want = "L" if self.sources[0].channels == 1 else "RGB"
        try:
            with Image.open(io.BytesIO(rec[ext])) as im:
                if ext == "webp" and want == "L" and im.mode == "RGB":
                    im = im.convert("L")   # WebP stores grayscale as RGB
                im.load()
                mode, size, arr = im.mode, im.size, np.asarray(im)
        except Exception as e:  # PIL raises many types for corrupt data
            skips.skip("corrupt_png", where, type(e).__name__)
            return None
        if mode != want:
            skips.skip("wrong_mode", where, f"{mode}, expected {want}")
            return None
        if size != (self.sources[0].image_size,) * 2:
            skips.skip("wrong_size", where, f"{size[0]}x{size[1]}")
            return None
        try:
            txt = bytes(rec.get("txt", b"")).decode("utf-8").strip()
        except UnicodeDecodeError:
            txt = ""
        if not txt:
            skips.skip("missing_txt", where)
            return None
        skips.ok()
        t = torch.from_numpy(arr.copy())
        return (t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)), txt

    # -- iteration ----------------------------------------------------------------------------

    def initial_state(self) -> dict:
        return {"passes": [[0, 0, 0, 0] for _ in self.sources], "n": 0, "skips": {}}

    def _check_progress(self, si: int, rec: dict, ok: bool, run: int, shards: dict,
                        skips: SkipLog) -> None:
        """Stop with one error if ``max_skip_run`` records in a row were skipped, or every
        record of one shard (in one window) was: a format or dataset problem, not bad luck.
        ``shards`` maps (source, pass, window, shard) -> [records seen, decoded]."""
        name = self.sources[si].name
        url = str(rec.get("__url__", "?"))
        key = (si, *rec.get("__window__", (0, 0)), url)
        seen = shards.setdefault(key, [0, 0])
        seen[0] += 1
        seen[1] += ok
        if seen[0] >= int(rec.get("__shard_n__", 0)):
            del shards[key]
            if seen[1] == 0 and seen[0] > 1:
                raise DatasetError(
                    f"clip data source {name}: every sample of shard {os.path.basename(url)} "
                    f"was skipped ({_reasons(skips)}). Check the dataset with `medfake data "
                    f"check {os.path.dirname(url)}` (images must be {self._want()})")
        if run >= self.cfg.max_skip_run:
            raise DatasetError(
                f"clip data source {name}: the last {run} records were all skipped "
                f"({_reasons(skips)}); no progress. Check the dataset with `medfake data check` "
                f"(images must be {self._want()})")

    def _want(self) -> str:
        src = self.sources[0]
        return (f"{src.image_size}x{src.image_size} "
                f"{'grayscale' if src.channels == 1 else 'RGB'} {'/'.join(IMAGE_EXTS)}")

    def iter_role(self, role: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """The batches of worker role ``role`` on this rank (what a DataLoader worker runs)."""
        slot = self.rank * self.n_roles + role
        state = copy.deepcopy(self.states.get(role)) or self.initial_state()
        if len(state["passes"]) != len(self.sources):
            raise ValueError("the checkpoint's data position has a different number of sources; "
                             "resume with the same --data/--mix")
        skips = SkipLog(f"clip data rank {self.rank} worker {role}")
        skips.counts.update(state["skips"])
        readers = [self._records(si, slot, role, state["passes"][si], skips)
                   for si in range(len(self.sources))]
        mix_base, aug_base = _seed(self.cfg.seed, "mix", slot), _seed(self.cfg.seed, "aug", slot)
        images: list[torch.Tensor] = []
        texts: list[str] = []
        seeds: list[int] = []
        keys: list[str] = []
        run, shards = 0, {}
        while True:
            n = state["n"]
            si = 0 if len(readers) == 1 else min(
                np.searchsorted(self.cum_weights, _unit(mix_base, n), side="right"),
                len(readers) - 1)
            rec = next(readers[si])
            state["n"] = n + 1
            got = self._decode(rec, skips)
            run = 0 if got is not None else run + 1
            self._check_progress(si, rec, got is not None, run, shards, skips)
            if got is None:
                continue
            keys.append(f"{self.sources[si].name}/{rec.get('__key__', '?')}")
            images.append(got[0])
            texts.append(got[1])
            seeds.append((aug_base + n) % (1 << 63))
            if len(images) == self.cfg.batch_size:
                x = normalize_batch(augment_batch(images, seeds, self.augment),
                                    self.mean, self.std, self.size)
                state["skips"] = dict(skips.counts)
                yield x, self.tokenizer(texts), {"role": role, "state": copy.deepcopy(state),
                                                 "keys": keys}
                images, texts, seeds, keys = [], [], [], []

    def __iter__(self):
        wi = get_worker_info()
        if wi is not None and wi.num_workers != self.n_roles:
            raise ValueError(f"ClipStream built for {self.n_roles} workers runs in "
                             f"{wi.num_workers}")
        role = 0 if wi is None else (wi.id + self.role_offset) % self.n_roles
        return self.iter_role(role)


class StreamPosition:
    """What the trainer keeps of a stream: each role's last state and batches consumed."""

    def __init__(self, n_roles: int, states: dict[int, dict] | None = None, batches: int = 0):
        self.n_roles, self.states, self.batches = n_roles, dict(states or {}), batches

    def update(self, info: dict) -> None:
        self.states[info["role"]] = info["state"]
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"n_roles": self.n_roles, "batches": self.batches,
                "states": {str(k): v for k, v in self.states.items()}}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "StreamPosition":
        return cls(int(d["n_roles"]), {int(k): v for k, v in d["states"].items()},
                   int(d["batches"]))

    def skipped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for st in self.states.values():
            for k, v in st.get("skips", {}).items():
                total[k] = total.get(k, 0) + v
        return total


def stream_loader(sources: Sequence[Source], cfg: StreamConfig,
                  image_stats: tuple[torch.Tensor, torch.Tensor, int], tokenizer: Callable,
                  rank: int, world_size: int, position: StreamPosition | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Batches for this rank from ``position`` (or the start), through a DataLoader with
    ``cfg.workers`` worker processes (0: in this process)."""
    pos = position or StreamPosition(max(1, cfg.workers))
    if pos.n_roles != max(1, cfg.workers):
        raise ValueError(f"the checkpoint was written with {pos.n_roles} data worker(s); resume "
                         f"with --workers {pos.n_roles}")
    stream = ClipStream(sources, cfg, image_stats, tokenizer, rank, world_size, pos.states,
                        role_offset=pos.batches % pos.n_roles)
    if cfg.workers == 0:
        return stream.iter_role(0)
    return iter(DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                           persistent_workers=False, prefetch_factor=4))


def steps_per_epoch(sources: Sequence[Source], global_batch: int) -> int:
    """Optimizer steps in one epoch of ``sum(source counts)`` samples (at least 1)."""
    return max(1, sum(s.count for s in sources) // global_batch)


# ----------------------------------------------------------------------------- in-memory

class ArrayBatches:
    """Batches drawn with replacement from in-memory uint8 images (few-shot fine-tuning).

    Batch ``i`` of rank ``r`` depends only on ``(seed, r, i)``, so the position is the batch
    counter. ``captions`` (one list of prompts per class) adds token ids of a prompt drawn per
    sample, for contrastive fine-tuning.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 image_stats: tuple[torch.Tensor, torch.Tensor, int], augment: str, seed: int,
                 rank: int = 0, captions: Sequence[Sequence[str]] | None = None,
                 tokenizer: Callable | None = None, start: int = 0):
        x = torch.from_numpy(np.ascontiguousarray(images))
        self.x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        self.y = torch.as_tensor(labels, dtype=torch.long)
        self.batch_size, self.seed, self.rank, self.batches = batch_size, seed, rank, start
        self.mean, self.std, self.size = image_stats
        self.augment = build_augment(augment, self.x.shape[-1])  # at the images' own size
        self.captions = captions
        self.tokenizer = CachedTokenizer(tokenizer) if tokenizer is not None else None

    def __iter__(self) -> "ArrayBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rng = np.random.default_rng([self.seed, self.rank, self.batches])
        idx = rng.integers(0, len(self.y), self.batch_size)
        seeds = [int(s) for s in rng.integers(0, 1 << 62, self.batch_size)]
        x = normalize_batch(augment_batch([self.x[i] for i in idx], seeds, self.augment),
                            self.mean, self.std, self.size)
        y = self.y[idx]
        tokens = None
        if self.captions is not None and self.tokenizer is not None:
            texts = [self.captions[int(c)][int(rng.integers(len(self.captions[int(c)])))]
                     for c in y]
            tokens = self.tokenizer(texts)
        self.batches += 1
        return x, y, tokens

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}
