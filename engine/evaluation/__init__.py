"""Did it help: classification metrics with CIs, downstream classifiers, CLIP as a
classifier, sample quality, the memorization audit, shared image features.

Public names are exported lazily (``engine.core.lazy``).
"""
from __future__ import annotations

from ..core.lazy import lazy_exports

_EXPORTS = {
    "CLASSIFIER_ARCHS": "classifiers",
    "CLIP_CONFIG": "features",
    "CLIP_WEIGHTS": "features",
    "ClipClassifier": "clip_classify",
    "ClipEncoder": "quality",
    "DISTANCE_METRICS": "features",
    "ENCODER_SPECS": "quality",
    "FeatureEncoder": "quality",
    "METRIC_KEYS": "quality",
    "MemorizationAudit": "memorization",
    "MetricFn": "metrics",
    "PIXEL_SIZE": "features",
    "PixelEncoder": "quality",
    "QUANTILES": "memorization",
    "SmallCNN": "classifiers",
    "THRESHOLD_FRACTION": "memorization",
    "TIMM_NAMES": "classifiers",
    "TorchScriptEncoder": "quality",
    "ZeroShotClassifier": "clip_classify",
    "accuracy": "metrics",
    "audit_memorization": "memorization",
    "balanced_accuracy": "metrics",
    "bootstrap_ci": "metrics",
    "class_prompts": "clip_classify",
    "classification_metrics": "metrics",
    "clip_features": "features",
    "create_classifier": "classifiers",
    "default_threshold": "memorization",
    "distance_histogram": "memorization",
    "encode_pair": "quality",
    "evaluate_classifier": "clip_classify",
    "feature_metrics": "quality",
    "frechet_distance": "quality",
    "load_encoder": "quality",
    "macro_auc": "metrics",
    "mean_std": "metrics",
    "nearest_neighbors": "features",
    "one_nn_accuracy": "quality",
    "pair_grid": "memorization",
    "pixel_features": "features",
    "precision_recall": "quality",
    "predict_proba": "classifiers",
    "quality_report": "quality",
    "resolve_clip": "features",
    "train_classifier": "classifiers",
    "zero_shot_weights": "clip_classify",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
