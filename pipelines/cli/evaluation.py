"""``medfake eval quality|memorization``."""
from __future__ import annotations

import argparse
import json

from .options import add_trust_flag, trust_code


def _quality(a: argparse.Namespace) -> None:
    from ..eval_samples import eval_quality
    trust_code(a)
    path = eval_quality(a.real, a.synthetic, a.out, split=a.split,
                        synthetic_split=a.synthetic_split, encoder=a.encoder)
    o = json.loads(path.read_text())["overall"]
    print(f"{path}: FD {o['frechet_distance']:.4g}, precision {o['precision']:.3f}, recall "
          f"{o['recall']:.3f}, 1-NN accuracy {o['one_nn_accuracy']:.3f}")


def _memorization(a: argparse.Namespace) -> None:
    from ..eval_samples import eval_memorization
    trust_code(a)
    s = eval_memorization(a.real, a.synthetic, a.out, real_split=a.real_split,
                          synthetic_split=a.synthetic_split, encoder=a.encoder,
                          threshold=a.threshold, max_pairs=a.max_pairs)
    print(f"{a.out}: {s['n_flagged']} of {s['n_synthetic']} synthetic images within "
          f"{s['threshold']:.4g} of an image the generator learned from "
          f"({s['threshold_rule']}; reference: {s['reference']})")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="sample quality and memorization audit of synthetic "
                        "images").add_subparsers(dest="sub", required=True)
    enc_help = "feature space: pixel[:SIZE], clip:PATH (CLIP dir or weights), torchscript:PATH"
    eq = ev.add_parser("quality", help="Frechet distance, precision/recall, 1-NN accuracy vs "
                       "real held-out images, overall and per class -> OUT/quality.json")
    em = ev.add_parser("memorization", help="nearest real training image of every synthetic "
                       "image -> OUT/memorization.json, _pairs.png, _hist.png")
    eq.add_argument("--real", required=True, help="real dataset dir")
    em.add_argument("--real", help="the dataset the generator learned from (default: read from "
                    "the synthetic dataset's records: corpus, k-shot, class or source images)")
    for e in (eq, em):
        e.add_argument("--synthetic", required=True, help="synthetic dataset dir")
        e.add_argument("--synthetic-split", default="train")
        e.add_argument("--encoder", default="pixel", help=enc_help)
        add_trust_flag(e, "--encoder: a TorchScript file or pickled CLIP weights")
        e.add_argument("--out", required=True)
    eq.add_argument("--split", default="test", help="real split to compare with")
    eq.set_defaults(fn=_quality)
    em.add_argument("--real-split", default="train", help="the generator's real training split")
    em.add_argument("--threshold", type=float,
                    help="flag distance (default: 1/3 of the median real-train leave-one-out "
                    "nearest-neighbour distance; 1/9 for cosine)")
    em.add_argument("--max-pairs", type=int, default=16, help="pairs in memorization_pairs.png")
    em.set_defaults(fn=_memorization)
