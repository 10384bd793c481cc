"""Masks and canvases for image-conditioned synthesis (inpainting, outpainting).

Everything here is plain numpy and a pure function of its inputs, so a sample's conditioning is
reproducible from its provenance: ``render_mask(geometry, size)`` redraws the exact mask a
sample was generated with. Masks are float32 (H, W) with 1 where pixels are generated and 0
where the real image is kept (the diffusers convention).

- Inpainting masks are boxes or ellipses, either *lesion-centred* (around the lesion centre a
  dataset records in its sample metadata, else the ROI centre, slightly jittered) or at a
  *random* position; their size is a random fraction of the image side.
- Outpainting shrinks the real image into a larger canvas at a random (or centred) position and
  asks for the border; the canvas outside the image is filled by edge replication, which gives
  the VAE encoder a neutral context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

MASK_KINDS = ("lesion", "random")
MASK_SHAPES = ("box", "ellipse", "any")
PLACEMENTS = ("random", "center")


@dataclass(frozen=True)
class MaskSpec:
    """How inpainting masks are drawn. ``scale``: (min, max) mask side as a fraction of the
    image side; ``jitter``: lesion-centred masks move by up to this fraction of the side."""

    kind: str = "lesion"
    shape: str = "any"
    scale: tuple[float, float] = (0.3, 0.6)
    jitter: float = 0.05

    def __post_init__(self):
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind {self.kind!r}: choose one of {', '.join(MASK_KINDS)}")
        if self.shape not in MASK_SHAPES:
            raise ValueError(f"mask shape {self.shape!r}: choose one of {', '.join(MASK_SHAPES)}")
        _check_range("mask scale", self.scale)


@dataclass(frozen=True)
class OutpaintSpec:
    """How outpainting canvases are made: the real image is shrunk to ``scale`` (min, max) of
    the canvas side and placed at a ``random`` or ``center`` position."""

    scale: tuple[float, float] = (0.5, 0.75)
    placement: str = "random"

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"outpaint placement {self.placement!r}: choose one of "
                             f"{', '.join(PLACEMENTS)}")
        _check_range("outpaint scale", self.scale)


def _check_range(what: str, r: tuple[float, float]) -> None:
    if len(r) != 2 or not 0 < r[0] <= r[1] <= 1:
        raise ValueError(f"{what} must be MIN MAX with 0 < MIN <= MAX <= 1, got {r}")


def lesion_centre(meta: Mapping[str, Any], height: int, width: int) -> tuple[float, float, str]:
    """``(cy, cx, origin)`` in pixels of an image of that size: from the sample's metadata
    (``lesion_center`` [y, x] or ``lesion_bbox`` [y0, x0, y1, x1], in pixels or, when all
    values are <= 1, as fractions), else the ROI centre (``origin="roi_centre"``)."""
    for field, n in (("lesion_center", 2), ("lesion_bbox", 4)):
        v = meta.get(field)
        if isinstance(v, (list, tuple)) and len(v) == n:
            v = [float(x) for x in v]
            if n == 4:
                v = [(v[0] + v[2]) / 2, (v[1] + v[3]) / 2]
            if all(0 <= x <= 1 for x in v):
                v = [v[0] * height, v[1] * width]
            return v[0], v[1], field
    return height / 2, width / 2, "roi_centre"


def mask_geometry(spec: MaskSpec, height: int, width: int, rng: np.random.Generator,
                  centre: tuple[float, float] | None = None) -> dict[str, Any]:
    """A mask's geometry (pixels, floats): ``shape``, centre ``cy, cx``, size ``h, w``.
    ``centre`` is the lesion centre for lesion-centred masks."""
    shape = spec.shape if spec.shape != "any" else ("box", "ellipse")[int(rng.integers(2))]
    h = float(rng.uniform(*spec.scale)) * height
    w = float(rng.uniform(*spec.scale)) * width
    if spec.kind == "lesion":
        cy, cx = centre if centre is not None else (height / 2, width / 2)
        cy += float(rng.uniform(-1, 1)) * spec.jitter * height
        cx += float(rng.uniform(-1, 1)) * spec.jitter * width
    else:
        cy = float(rng.uniform(h / 2, height - h / 2))
        cx = float(rng.uniform(w / 2, width - w / 2))
    return {"shape": shape, "cy": round(cy, 3), "cx": round(cx, 3), "h": round(h, 3),
            "w": round(w, 3)}


def render_mask(geom: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The float32 (H, W) mask (1 = generate) of a geometry from ``mask_geometry`` or
    ``outpaint_canvas`` (``shape == "outpaint"``: everything outside the placed image)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5   # pixel centres
    if geom["shape"] == "outpaint":
        inside = ((yy >= geom["y0"]) & (yy < geom["y0"] + geom["h"])
                  & (xx >= geom["x0"]) & (xx < geom["x0"] + geom["w"]))
        return (~inside).astype(np.float32)
    dy, dx = (yy - geom["cy"]) / (geom["h"] / 2), (xx - geom["cx"]) / (geom["w"] / 2)
    if geom["shape"] == "box":
        m = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    elif geom["shape"] == "ellipse":
        m = dy ** 2 + dx ** 2 <= 1
    else:
        raise ValueError(f"unknown mask shape {geom['shape']!r}")
    return m.astype(np.float32)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W[, 3]) resized with PIL's bicubic filter (no-op at the same size)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def outpaint_canvas(image: np.ndarray, height: int, width: int, spec: OutpaintSpec,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(canvas, mask, geometry)``: ``image`` shrunk and placed in an (H, W) canvas whose
    border is edge-replicated; mask 1 on the border."""
    s = float(rng.uniform(*spec.scale))
    h, w = max(1, round(s * height)), max(1, round(s * width))
    if spec.placement == "center":
        y0, x0 = (height - h) // 2, (width - w) // 2
    else:
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    small = resize_image(image, h, w)
    pad = ((y0, height - h - y0), (x0, width - w - x0)) + ((0, 0),) * (image.ndim - 2)
    canvas = np.pad(small, pad, mode="edge")
    geom = {"shape": "outpaint", "y0": y0, "x0": x0, "h": h, "w": w, "scale": round(s, 4)}
    return canvas, render_mask(geom, height, width), geom
