"""CLIP as a classifier: zero-shot heads from class prompts, a fine-tunable image-tower
classifier, and evaluation on a labelled split."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..clip.model import images_to_tensor
from ..data.format import SplitArrays
from .metrics import bootstrap_ci, classification_metrics


def class_prompts(class_names: Sequence[str],
                  prompt_templates: dict[str, list[str]] | Sequence[str]) -> list[list[str]]:
    """Prompts per class: ``{class: [full prompts]}`` as in dataset.json, or templates with ``{}``."""
    if isinstance(prompt_templates, dict):
        missing = [c for c in class_names if not prompt_templates.get(c)]
        if missing:
            raise ValueError(f"no prompt templates for class(es) {missing} in dataset.json")
        return [list(prompt_templates[c]) for c in class_names]
    return [[t.format(c) for t in prompt_templates] for c in class_names]


@torch.no_grad()
def zero_shot_weights(model: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                      prompt_templates: dict[str, list[str]] | Sequence[str]) -> torch.Tensor:
    """(C, D) unit-norm mean text embedding of each class's prompts."""
    was_training = model.training
    model.eval()
    rows = []
    for prompts in class_prompts(class_names, prompt_templates):
        emb = nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(0)
        rows.append(nn.functional.normalize(emb, dim=-1))
    model.train(was_training)
    return torch.stack(rows)


class ClipClassifier(nn.Module):
    """CLIP image tower + linear head on L2-normalised features; input normalised (N,3,S,S).

    With ``head.weight = logit_scale * zero_shot_weights`` and zero bias it reproduces the
    zero-shot classifier exactly. ``head_init=None`` keeps nn.Linear's (seeded) random init.
    """

    def __init__(self, clip: nn.Module, head_init: torch.Tensor | None, logit_scale: float,
                 n_classes: int | None = None):
        super().__init__()
        self.visual = clip.visual
        dim = clip.text_projection.shape[1] if head_init is None else head_init.shape[1]
        self.head = nn.Linear(dim, n_classes if head_init is None else head_init.shape[0])
        if head_init is not None:
            with torch.no_grad():
                self.head.weight.copy_(head_init * logit_scale)
                self.head.bias.zero_()
        self.preprocess_cfg = dict(clip.visual.preprocess_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.normalize(self.visual(x), dim=-1))


class ZeroShotClassifier(nn.Module):
    """A CLIP model scoring images against fixed class text embeddings."""

    def __init__(self, clip: nn.Module, weights: torch.Tensor):
        super().__init__()
        self.clip, self.weights = clip, weights
        self.scale = float(clip.logit_scale.detach().exp().reshape(-1)[0])
        self.visual = clip.visual  # images_to_tensor reads visual.preprocess_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = nn.functional.normalize(self.clip.encode_image(x), dim=-1)
        return self.scale * feats @ self.weights.T


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Softmax probabilities (N, C) of a classifier for uint8 images."""
    model.eval()
    return torch.cat([torch.softmax(model(images_to_tensor(images[i:i + batch], model)), 1)
                      for i in range(0, len(images), batch)]).numpy()


def evaluate_classifier(model: nn.Module, test: SplitArrays, class_names: Sequence[str],
                        n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """``classification_metrics`` on ``test`` plus ``accuracy_ci95`` (percentile bootstrap)."""
    probs = predict_proba(model, test.images)
    m = classification_metrics(test.labels, probs, class_names)
    m["accuracy_ci95"] = list(bootstrap_ci(test.labels, probs, "accuracy", n=n_bootstrap,
                                           seed=seed))
    return m
