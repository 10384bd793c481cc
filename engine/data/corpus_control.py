"""The control arm's images: the generator's corpus "used directly", at a requested count.

``ControlCorpus.load(corpus_dir, class_names, prompt_templates).draw(n, seed)`` returns ``n``
images per class (fewer when the corpus cannot supply them; ``capacity()`` says how many it can),
labelled by index into ``class_names`` (the real dataset's classes):

* a corpus labelled by the real classes (the ``near`` world's public corpus, or any corpus
  without ``provenance.world == "general"``): ``draw_per_class``, a seeded random subset of each
  class, exactly as before the ``general`` world existed;
* a corpus without the real classes (``provenance.world == "general"``: captioned, never by class
  name): caption retrieval, as a practitioner would search a captioned corpus. Every caption is
  scored against each class's prompt templates by TF-IDF cosine similarity
  (``sklearn.feature_extraction.text.TfidfVectorizer`` fitted on the corpus captions: lowercase
  word tokens, English stop words dropped; an image's score for a class is its best cosine over
  that class's templates). Each image goes to the class it scores highest for (a tie between
  classes: the first class; score 0 for every class: to none), and each class takes its ``n``
  best-scoring images; images of equal score are ordered by a permutation seeded by ``seed``,
  so the draw is deterministic and ``seed`` only chooses among equally good matches. Only the
  captions are read: neither the corpus labels (kinds of content) nor any metadata.

TF-IDF from scikit-learn (already a dependency) rather than a hand-written BM25: a standard,
documented scorer, deterministic for the same captions.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from .format import SplitArrays
from .reader import DatasetInfo, load_split

log = logging.getLogger(__name__)


def corpus_world(info: DatasetInfo) -> str:
    """Which embedded world a corpus belongs to (``near`` for any dataset that does not say:
    every dataset written before the ``general`` world existed, and imported ones)."""
    return str(info.provenance.get("world", "near"))


def draw_per_class(pool: SplitArrays, n: int, seed: int, n_classes: int) -> SplitArrays:
    """``n`` images of every class, without replacement (fewer if the pool holds fewer)."""
    rng = np.random.default_rng(seed)
    idx = [i for c in range(n_classes)
           for i in rng.permutation(np.flatnonzero(pool.labels == c))[:n]]
    return pool.subset(sorted(idx))


def caption_scores(captions: list[str], class_names: list[str],
                   prompt_templates: dict[str, list[str]]) -> np.ndarray:
    """(N, C) TF-IDF cosine similarity of each caption with each class's best-matching prompt
    template (vectorizer fitted on ``captions``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    missing = [c for c in class_names if not prompt_templates.get(c)]
    if missing:
        raise ValueError(f"no prompt templates for class(es) {missing}: caption retrieval needs "
                         f"each class's templates (the real dataset's dataset.json "
                         f"prompt_templates)")
    vec = TfidfVectorizer(lowercase=True, stop_words="english", token_pattern=r"(?u)\b[a-z]+\b")
    x = vec.fit_transform(captions)
    scores = np.zeros((len(captions), len(class_names)))
    for c, name in enumerate(class_names):
        sims = (x @ vec.transform(prompt_templates[name]).T).toarray()
        scores[:, c] = sims.max(1)
    return scores


class ControlCorpus:
    """The corpus a control arm draws from, and how (see the module docstring)."""

    def __init__(self, pool: SplitArrays, info: DatasetInfo, class_names: list[str],
                 prompt_templates: dict[str, list[str]]):
        self.pool, self.info = pool, info
        self.class_names = list(class_names)
        self.prompt_templates = prompt_templates
        self.world = corpus_world(info)
        self._scores: np.ndarray | None = None
        self._assigned: np.ndarray | None = None

    @classmethod
    def load(cls, corpus_dir: str | os.PathLike, class_names: list[str],
             prompt_templates: dict[str, list[str]]) -> ControlCorpus:
        """The corpus dataset ``corpus_dir`` (split ``train``) for the real classes
        ``class_names`` with their ``prompt_templates`` (the real dataset's)."""
        info = DatasetInfo.load(corpus_dir)
        return cls(load_split(corpus_dir, "train", skip_bad=True), info, class_names,
                   prompt_templates)

    @property
    def method(self) -> str:
        return "caption-retrieval" if self.world == "general" else "class-labels"

    def describe(self) -> dict[str, Any]:
        """What the control draws and how (for results and reports)."""
        d: dict[str, Any] = {"corpus": str(self.info.root), "world": self.world,
                             "method": self.method, "capacity_per_class": self.capacity()}
        if self.method == "caption-retrieval":
            d["scorer"] = ("TF-IDF cosine of corpus captions with the class's prompt templates "
                           "(best template), image to its best class, top-n per class, ties by "
                           "a seeded permutation")
        return d

    def _retrieval(self) -> tuple[np.ndarray, np.ndarray]:
        if self._scores is None:
            s = caption_scores(self.pool.captions, self.class_names, self.prompt_templates)
            assigned = s.argmax(1)
            assigned[s.max(1) <= 0] = -1
            self._scores, self._assigned = s, assigned
        return self._scores, self._assigned

    def capacity(self) -> int:
        """The most images per class ``draw`` returns for every class."""
        if self.method == "class-labels":
            return int(np.bincount(self.pool.labels, minlength=len(self.class_names))
                       [:len(self.class_names)].min())
        _, assigned = self._retrieval()
        return int(min((assigned == c).sum() for c in range(len(self.class_names))))

    def draw(self, n: int, seed: int) -> SplitArrays:
        """``n`` images per class (fewer where the corpus has fewer), labelled by index into
        ``class_names``; for retrieval the metas carry ``retrieval_score``."""
        if self.method == "class-labels":
            return draw_per_class(self.pool, n, seed, len(self.class_names))
        scores, assigned = self._retrieval()
        tiebreak = np.random.default_rng(seed).permutation(len(self.pool))
        idx, labels, metas = [], [], []
        for c in range(len(self.class_names)):
            members = np.flatnonzero(assigned == c)
            order = members[np.lexsort((tiebreak[members], -scores[members, c]))][:n]
            idx.extend(order.tolist())
            labels.extend([c] * len(order))
            metas.extend({**self.pool.metas[i], "retrieved_for": self.class_names[c],
                          "retrieval_score": round(float(scores[i, c]), 6)} for i in order)
        if min(np.bincount(labels, minlength=len(self.class_names))) < n:
            log.warning("caption retrieval found fewer than %d images for some class in %s "
                        "(capacity %d per class)", n, self.info.root, self.capacity())
        p = self.pool
        return SplitArrays(p.images[idx], np.asarray(labels, dtype=p.labels.dtype),
                           [p.captions[i] for i in idx], [p.keys[i] for i in idx], metas)
