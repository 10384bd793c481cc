"""Optional offline detection of text burnt into pixels (``medfake data import --detect-text``).

``TextDetector`` runs only the text *detection* stage of rapidocr (PP-OCR, ONNX models bundled
in the ``rapidocr`` wheel, so nothing is downloaded): it returns whether an image holds text
boxes, never what the text says, since recognised text would be the very PHI being guarded.
rapidocr's own logger is set to critical so that nothing about an image is logged. A detector
can miss text (small, low-contrast, rotated overlays): its "no text" never clears a file that
the metadata rule (``dicom.burned_in_risk``) quarantines; it only adds quarantines.
"""
from __future__ import annotations

import logging

import numpy as np

from ..core.capabilities import require_rapidocr

log = logging.getLogger(__name__)
DETECT_REASON = "burned_in_text_detected"


class TextDetector:
    """``has_text(image)`` for uint8 HxW or HxWx3 images; ``CapabilityError`` at construction
    when rapidocr (or ONNX Runtime) is missing."""

    def __init__(self, box_threshold: float = 0.5):
        require_rapidocr("--detect-text")
        from rapidocr import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.CRITICAL)
        self.engine = RapidOCR(params={"Global.use_cls": False, "Global.use_rec": False,
                                       "Global.log_level": "critical",
                                       "Det.box_thresh": box_threshold})

    def has_text(self, image: np.ndarray) -> bool:
        rgb = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2
                                   else image[..., :3])
        result = self.engine(rgb, use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(result, "boxes", None)
        return boxes is not None and len(boxes) > 0
