"""Stable-Diffusion-shaped models: tiny presets built offline, and loading of any local SD dir.

A *model dir* is a stock diffusers Stable Diffusion 1.x/2.x directory (``model_index.json`` plus
``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) that
``diffusers.StableDiffusionPipeline.from_pretrained(dir)`` loads without network access. The
presets in ``engine/presets/diffusion/*.json`` describe tiny models for 32x32 grayscale ROIs;
the VAE has 3 channels (grayscale replicated to RGB) so the same code serves real checkpoints.
Nothing here downloads anything: the CLIP BPE vocabulary comes from the installed open_clip.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_write_json, fsync_dir
from ..core.paths import cache_dir
from ..core.trust import LEGACY_TRUST_ENV as TRUST_PICKLE_ENV  # noqa: F401  (deprecated name)
from ..core.trust import code_trusted

PRESET_DIR = Path(__file__).parents[1] / "presets" / "diffusion"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HASH_CACHE = ".medfake_hash.json"   # in-dir hash cache of older versions; removed on save


class ModelDirError(ValueError):
    """A model dir is missing or not a diffusers SD layout; the message says the fix."""


def list_presets() -> list[str]:
    """Names of the bundled diffusion presets (``engine/presets/diffusion/<name>.json``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


PRESETS: tuple[str, ...] = tuple(list_presets())


def preset_config(preset: str) -> dict[str, Any]:
    """The parsed preset JSON; ValueError naming the available presets if unknown."""
    path = PRESET_DIR / f"{preset}.json"
    if not path.is_file():
        raise ValueError(f"unknown diffusion preset {preset!r}; available: {', '.join(list_presets())}")
    return json.loads(path.read_text())


def write_clip_tokenizer_files(out_dir: str | os.PathLike, model_max_length: int = 77,
                               pad_token: str = "<|endoftext|>") -> Path:
    """Write the SD 1.x CLIP BPE tokenizer files (vocab.json, merges.txt, tokenizer_config.json)
    to ``out_dir``, built offline from the vocab file open_clip ships. ``pad_token`` is
    ``<|endoftext|>`` for SD 1.x and ``!`` for SD 2.x (OpenCLIP pads with id 0)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": pad_token}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
         "do_lower_case": True, **special}, indent=1))
    return out


def build_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A transformers CLIPTokenizer with the SD 1.x/2.x vocab, built offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(
            write_clip_tokenizer_files(tmp, model_max_length, pad_token), local_files_only=True)


@dataclass
class SDComponents:
    """The five parts of an SD pipeline plus the directory they came from (None if built)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    model_dir: Path | None = None

    def pipeline(self, inpaint: bool | None = None):
        """A stock diffusers (inpaint) pipeline over these components; inpaint if UNet in=9."""
        from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

        if inpaint is None:
            inpaint = self.unet.config.in_channels == 9
        cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
        return cls(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                   unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                   feature_extractor=None, requires_safety_checker=False)


def build_components(preset: str, seed: int = 0) -> SDComponents:
    """Randomly initialised components of a preset (deterministic in ``seed``)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = preset_config(preset)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    sched_cfg = dict(cfg["scheduler"])
    scheduler = getattr(diffusers, sched_cfg.pop("_class_name")).from_config(sched_cfg)
    tokenizer = build_clip_tokenizer(**cfg["tokenizer"])
    return SDComponents(unet, vae, text_encoder.eval(), tokenizer, scheduler)


def save_components(comp: SDComponents, out_dir: str | os.PathLike) -> Path:
    """Write ``comp`` as a diffusers SD dir (safetensors, no safety checker); return the path."""
    out = Path(out_dir)
    pipe = comp.pipeline()
    pipe.save_pretrained(out, safe_serialization=True)
    add_slow_tokenizer_files(comp.tokenizer, out / "tokenizer")
    (out / _HASH_CACHE).unlink(missing_ok=True)
    return out


def add_slow_tokenizer_files(tokenizer, out: Path) -> None:
    """Add vocab.json + merges.txt (classic SD layout, needed by slow tokenizers) if absent."""
    if (out / "vocab.json").exists() or not hasattr(tokenizer, "backend_tokenizer"):
        return
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        return
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def init_model(preset: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised preset as a loadable diffusers dir at ``out_dir``."""
    return save_components(build_components(preset, seed), out_dir)


def cached_model(preset: str, seed: int = 0, root: str | os.PathLike | None = None) -> Path:
    """A random-weight preset as a diffusers dir, built once and then reused.

    The directory is ``<root>/<preset>-<key>`` (``root`` defaults to ``$MEDFAKE_CACHE/models``).
    ``key`` covers the preset JSON, the seed and the diffusers/transformers versions, so a
    changed preset or library builds anew. A build writes into a private temp dir and is renamed
    into place whole: a killed build leaves only a temp dir, and when two processes build at once
    the first rename wins and the other's copy is discarded.
    """
    import diffusers
    import transformers


    cfg = preset_config(preset)
    key = hashlib.sha256(json.dumps([cfg, seed, diffusers.__version__, transformers.__version__],
                                    sort_keys=True).encode()).hexdigest()[:16]
    base = Path(root) if root is not None else cache_dir("models")
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{preset}-{key}"
    if (final / "model_index.json").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        init_model(preset, tmp, seed=seed)
        try:
            os.rename(tmp, final)
            fsync_dir(base)
        except OSError:  # another process published it first: keep theirs
            if not (final / "model_index.json").is_file():
                raise
    finally:
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return final




def _weights_choice(folder: Path, trust_pickle: bool) -> tuple[str | None, bool]:
    """``(variant, use_safetensors)`` for a component folder.

    Safetensors are used whenever present. A folder with only pickled ``.bin`` weights raises
    ``UnsafeWeightsError`` unless ``trust_pickle``; variant is None if plain weights exist,
    else the variant name (e.g. 'fp16').
    """
    from ..core.safe_load import UnsafeWeightsError

    files = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not files:
        raise ModelDirError(f"{folder} holds no weights (*.safetensors or *.bin). Copy the "
                            f"complete model, e.g. `huggingface-cli download` on a connected "
                            f"machine, or re-create it with `medfake.engine.diffusion.sd_model.init_model`.")
    safe = [f for f in files if f.endswith(".safetensors")]
    if not safe and not trust_pickle:
        raise UnsafeWeightsError(
            f"{folder} holds only pickled weights ({', '.join(sorted(files))}), which can run "
            f"arbitrary code when loaded. Convert the model to safetensors (load it once in a "
            f"sandbox and `save_pretrained(dir, safe_serialization=True)`), or pass "
            f"--trust-code if you trust its source (then read with torch.load(weights_only=True)).")
    chosen = safe or files
    plain = [f for f in chosen if f.count(".") == 1]
    return (None if plain else chosen[0].split(".")[-2]), bool(safe)


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """Return ``model_dir`` as a Path if it looks like a diffusers SD dir, else ModelDirError."""
    d = Path(model_dir)
    if d.is_file() and d.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ModelDirError(f"{d} is a single-file checkpoint, not a diffusers model dir. Convert "
                            f"it once, offline: `medfake model convert {d} --config "
                            f"LOCAL_SD_DIR_OR_YAML --out DIR`, then pass DIR")
    if not d.is_dir():
        raise ModelDirError(f"model dir {d} does not exist. Pass a local diffusers Stable Diffusion "
                            f"directory, or create one with `init_model(preset, dir)` / "
                            f"`train_generator(...)` (presets: {', '.join(list_presets())}).")
    if not (d / "model_index.json").is_file():
        hint = " It holds a single-file checkpoint; convert it with `medfake model convert " \
               "FILE --config LOCAL_SD_DIR_OR_YAML --out DIR`." \
            if any(d.glob("*.ckpt")) or any(d.glob("*.safetensors")) else ""
        raise ModelDirError(f"{d} is not a diffusers model dir: no model_index.json.{hint} "
                            f"Expected model_index.json and folders {', '.join(COMPONENTS)}.")
    missing = [c for c in COMPONENTS if not (d / c).is_dir()]
    if missing:
        raise ModelDirError(f"{d} lacks component folder(s) {', '.join(missing)}; a Stable "
                            f"Diffusion dir needs {', '.join(COMPONENTS)}. Copy the complete model.")
    return d


def load_components(model_dir: str | os.PathLike, device: str = "cpu",
                    dtype: torch.dtype = torch.float32,
                    trust_pickle: bool | None = None) -> SDComponents:
    """Load the parts of any local diffusers SD 1.x/2.x dir offline; ModelDirError if malformed.

    Weights load from safetensors; a component with only pickled ``.bin`` weights raises
    ``UnsafeWeightsError`` unless ``trust_pickle`` (None: the process-wide trust rule,
    ``engine.core.trust.code_trusted``, which the CLI's ``--trust-code`` sets). The text encoder is returned in eval mode;
    the scheduler is the class named in its config.
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    d = check_model_dir(model_dir)
    trust_pickle = code_trusted(trust_pickle)
    kw = dict(local_files_only=True, torch_dtype=dtype)
    variant, safe = _weights_choice(d / "unet", trust_pickle)
    unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", variant=variant,
                                                use_safetensors=safe, **kw)
    variant, safe = _weights_choice(d / "vae", trust_pickle)
    vae = AutoencoderKL.from_pretrained(d, subfolder="vae", variant=variant, use_safetensors=safe,
                                        **kw)
    variant, safe = _weights_choice(d / "text_encoder", trust_pickle)
    text_encoder = CLIPTextModel.from_pretrained(d / "text_encoder", local_files_only=True,
                                                 dtype=dtype, variant=variant, use_safetensors=safe)
    tokenizer = CLIPTokenizer.from_pretrained(d / "tokenizer", local_files_only=True)
    sched_cfg = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    return SDComponents(unet.to(device), vae.to(device), text_encoder.to(device).eval(),
                        tokenizer, scheduler, d)


def model_hash(model_dir: str | os.PathLike) -> str:
    """sha256 over model_index.json and every component's files (weights and configs).

    Cached under the medfake cache dir (``model_hash/<sha of the path>.json``), keyed by the
    resolved path and every file's (name, size, mtime): re-hashing a multi-GB checkpoint is
    instant, any change to a file invalidates it, and nothing is ever written into the user's
    model directory (read-only or shared by many ranks). The cache is written atomically;
    ranks racing on it write identical content.
    """
    d = check_model_dir(model_dir)
    files = [d / "model_index.json"] + sorted(
        p for c in COMPONENTS for p in (d / c).rglob("*") if p.is_file())
    stamp = [[str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    where = str(d.resolve())
    cache = cache_dir("model_hash") / f"{hashlib.sha256(where.encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["path"] == where and cached["stamp"] == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(d)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()
    try:
        atomic_write_json(cache, {"path": where, "stamp": stamp, "sha256": digest})
    except OSError:  # read-only cache: hashing still works, just not cached
        pass
    return digest
