"""The generation modes of ``medfake synth``: what each planned sample is conditioned on.

- ``txt2img``: prompt only.
- ``inpaint``: a real training image with a masked region (``inpainting.MaskSpec``) that is
  regenerated.
- ``outpaint``: the real image shrunk into a larger canvas whose border is generated.
- ``inpaint-outpaint``: outpaint, then inpaint a region of the outpainted image (the lesion
  centre follows the image into the canvas).

Everything a sample is conditioned on derives from its key: the source real image is
``RealIndex.source_for(class, index)`` and the mask geometry is drawn from
``derive_seed(job seed, key, "condition")``; both go into the sample's provenance (``mode``,
``source_key``, ``mask``), which ``medfake data check`` reads.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..diffusion.inpainting import (MaskSpec, OutpaintSpec, lesion_centre, mask_geometry,
                                    outpaint_canvas, render_mask, resize_image)
from ..core.seeding import derive_seed
from .plan import SEED_RANGE, PlannedSample

MODES = ("txt2img", "inpaint", "outpaint", "inpaint-outpaint")


@dataclass(frozen=True)
class ModeConfig:
    """A generation mode and its conditioning. ``paste_back``: keep the real pixels outside
    the mask exactly (see ``Sampler.generate_conditioned(keep_known=...)``)."""

    mode: str = "txt2img"
    mask: MaskSpec = field(default_factory=MaskSpec)
    outpaint: OutpaintSpec = field(default_factory=OutpaintSpec)
    paste_back: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")

    @property
    def conditioned(self) -> bool:
        return self.mode != "txt2img"

    def identity(self) -> dict[str, Any]:
        """The parameters that change images (for the job's plan)."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode in ("inpaint", "inpaint-outpaint"):
            out["mask"] = asdict(self.mask)
        if self.mode in ("outpaint", "inpaint-outpaint"):
            out["outpaint"] = asdict(self.outpaint)
        if self.conditioned:
            out["paste_back"] = self.paste_back
        return json_safe(out)


def json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, so a dict equals itself after a JSON round trip."""
    import json
    return json.loads(json.dumps(d))


@dataclass
class Conditioning:
    image: np.ndarray                 # uint8 (H, W, 3): canvas or real image at output size
    mask: np.ndarray                  # float32 (H, W), 1 = generate
    second_mask: np.ndarray | None    # inpaint-outpaint: the inpainting mask after outpainting
    provenance: dict[str, Any]


class BatchGenerator:
    """Turns planned samples into uint8 (N, H, W, 3) images with ``sampler``; ``backend_s``
    accumulates the time spent inside the sampler (the backend's busy time)."""

    def __init__(self, sampler, mode: ModeConfig, size: int, job_seed: int, real=None):
        if mode.conditioned and real is None:
            raise ValueError(f"mode {mode.mode} needs the real train images (a RealIndex)")
        self.sampler, self.mode, self.size, self.job_seed, self.real = (
            sampler, mode, size, job_seed, real)
        self.backend_s = 0.0
        self._lock = threading.Lock()   # streams call this from several threads

    def condition(self, p: PlannedSample) -> Conditioning:
        """The deterministic conditioning of one planned sample."""
        src = self.real.source_for(p.cls, p.index)
        raw = self.real.load_rgb(src)
        n = self.size
        image = resize_image(raw, n, n)
        rng = np.random.default_rng(derive_seed(self.job_seed, p.key, "condition"))
        cy, cx, origin = lesion_centre(self.real.lesion_meta(src), *raw.shape[:2])
        cy, cx = cy * n / raw.shape[0], cx * n / raw.shape[1]
        prov: dict[str, Any] = {"mode": self.mode.mode, "source_key": src,
                                "paste_back": self.mode.paste_back}
        if self.mode.mode == "inpaint":
            geom = {**mask_geometry(self.mode.mask, n, n, rng, (cy, cx)),
                    "kind": self.mode.mask.kind, "centre_from": origin}
            return Conditioning(image, render_mask(geom, n, n), None,
                                {**prov, "mask": geom, "mask_size": [n, n]})
        canvas, mask, out_geom = outpaint_canvas(image, n, n, self.mode.outpaint, rng)
        if self.mode.mode == "outpaint":
            return Conditioning(canvas, mask, None, {**prov, "mask": out_geom,
                                                     "mask_size": [n, n]})
        # inpaint-outpaint: the lesion centre moved with the image into the canvas
        cy = out_geom["y0"] + cy * out_geom["h"] / n
        cx = out_geom["x0"] + cx * out_geom["w"] / n
        in_geom = {**mask_geometry(self.mode.mask, n, n, rng, (cy, cx)),
                   "kind": self.mode.mask.kind, "centre_from": origin}
        return Conditioning(canvas, mask, render_mask(in_geom, n, n),
                            {**prov, "mask": {"outpaint": out_geom, "inpaint": in_geom},
                             "mask_size": [n, n]})

    def _timed(self, fn, *args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            dt = time.perf_counter() - t
            with self._lock:
                self.backend_s += dt

    def __call__(self, batch: list[PlannedSample], sampler=None
                 ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Images and provenance of ``batch``, on ``sampler`` (a stream's) or the default one."""
        sampler = sampler or self.sampler
        prompts, seeds = [p.prompt for p in batch], [p.seed for p in batch]
        if not self.mode.conditioned:
            return self._timed(sampler.generate, prompts, seeds), [{} for _ in batch]
        conds = [self.condition(p) for p in batch]
        keep = self.mode.paste_back
        images = self._timed(sampler.generate_conditioned, prompts, seeds,
                             np.stack([c.image for c in conds]),
                             np.stack([c.mask for c in conds]), keep_known=keep)
        if self.mode.mode == "inpaint-outpaint":
            second = [derive_seed(s, "inpaint") % SEED_RANGE for s in seeds]
            images = self._timed(sampler.generate_conditioned, prompts, second, images,
                                 np.stack([c.second_mask for c in conds]), keep_known=keep)
            for c, s in zip(conds, second):
                c.provenance["inpaint_seed"] = s
        return images, [c.provenance for c in conds]
