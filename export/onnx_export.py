"""`medfake export onnx`: a diffusers SD directory -> validated ONNX graphs + manifest.

Output directory::

    text_encoder/model.onnx  unet/model.onnx  vae_encoder/model.onnx  vae_decoder/model.onnx
    unet_deep/model.onnx  unet_shallow/model.onnx   with --deep-cache (step-feature caching:
                              the full UNet emitting its deep feature, and the shallow pass)
    tokenizer/  scheduler/    copied from the source model (the ORT backend needs them)
    export_manifest.json      see ``export.manifest``

Contract: every graph has a dynamic batch axis (UNet/VAE also dynamic height/width), float32
inputs/outputs (an fp16 export computes in fp16 inside), and was run in ONNX Runtime on seeded
inputs at two batch sizes and compared with PyTorch; if any error is over tolerance the export
raises ``ExportError`` naming the component and the numbers, and the manifest is not written.
Models whose weights exceed 2 GB (protobuf's limit; a real SD 1.5 UNet is 3.4 GB in fp32) are
stored with external data (``model.onnx.data``).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import logging
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..engine.diffusion.sd_model import check_model_dir, load_components, model_hash
from ..engine.diffusion.backends.components import (COMPONENT_NAMES, DEEP_CACHE_BRANCH,
                                                    DEEP_CACHE_COMPONENTS, FP32_INPUTS, SPECS,
                                                    ComponentSpec, ModelGeometry)
from ..engine.diffusion.backends.manifest import ExportError, ExportManifest
from .config import PROTOBUF_LIMIT, TOLERANCE, OnnxExportConfig

log = logging.getLogger(__name__)


class _Fp16Compute(nn.Module):
    """Run ``m`` in fp16 with float32 inputs and outputs (integer inputs pass through).

    Inputs at the positions in ``keep_fp32`` stay float32: the UNet's timestep (fractional
    with DPM++/Euler schedules, e.g. 999.0 -> 980.7; fp16 has 0.5 steps above 512 and would
    round it). diffusers builds the sinusoidal embedding in float32 and casts the embedding,
    not the timestep, to the weights' dtype."""

    def __init__(self, m: nn.Module, keep_fp32: tuple[int, ...] = ()):
        super().__init__()
        self.m = m.half()
        self.keep_fp32 = frozenset(keep_fp32)

    def forward(self, *args):
        args = [a.half() if a.is_floating_point() and i not in self.keep_fp32 else a
                for i, a in enumerate(args)]
        out = self.m(*args)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def fp16_compute(module: nn.Module, spec: ComponentSpec) -> _Fp16Compute:
    """``module`` computing in fp16 with ``spec``'s float32 inputs kept where they must be."""
    keep = tuple(spec.inputs.index(n) for n in FP32_INPUTS.get(spec.name, ()))
    return _Fp16Compute(module, keep)


def _exportable_attention(model: nn.Module, heads_per_chunk: int = 0):
    """Switch attention processors to an exportable path for the duration of the export
    (``heads_per_chunk`` > 0: attention that many heads at a time)."""
    from ..kernels.attention import exportable_attention
    for m in model.modules():
        if hasattr(m, "set_attn_processor"):  # the diffusers model inside the wrapper
            return exportable_attention(m, "sdpa", heads_per_chunk)
    return contextlib.nullcontext()  # the text encoder (transformers) exports as is


def _export_one(module: nn.Module, spec: ComponentSpec, geom: ModelGeometry, path: Path,
                cfg: OnnxExportConfig) -> None:
    gen = torch.Generator().manual_seed(0)
    example = spec.example(geom, 2, gen)
    opset = cfg.resolved_opset()
    with warnings.catch_warnings():  # tracer warnings about shape asserts are expected noise
        warnings.simplefilter("ignore")
        _run_exporter(module, spec, example, opset, path, cfg)


def _weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _run_exporter(module, spec: ComponentSpec, example, opset: int, path: Path,
                  cfg: OnnxExportConfig) -> None:
    if cfg.exporter == "torchscript":
        out_axes = {0: "batch"} if spec.name == "text_encoder" else {0: "batch", 2: "out_h", 3: "out_w"}
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes={**spec.dynamic_axes,
                                        **{o: out_axes for o in spec.outputs}},
                          do_constant_folding=True)
    else:
        dims = {}
        for name in spec.inputs:
            axes = spec.dynamic_axes.get(name)
            dims[name] = ({a: torch.export.Dim.AUTO for a in axes} if axes else None)
        program = torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                                    input_names=list(spec.inputs),
                                    output_names=list(spec.outputs),
                                    dynamic_shapes=tuple(dims[n] for n in spec.inputs),
                                    verbose=False)
        # Over the threshold (or protobuf's 2 GB) the weights go to model.onnx.data; below it
        # None lets the exporter decide (it externalises anything over 2 GB itself).
        big = _weight_bytes(module) > min(cfg.external_data_threshold, PROTOBUF_LIMIT - 1)
        program.save(str(path), external_data=True if big else None)
        del program   # its graph holds references to the weights: free before validation


def _simplify(path: Path, weight_bytes: int) -> None:
    """Run onnxslim on the graph in place (measured ~20% faster tiny UNet in ORT on CPU: fewer
    Shape/Gather/Concat nodes). Graphs over the protobuf limit are left as exported."""
    if weight_bytes >= PROTOBUF_LIMIT:
        log.info("%s: over 2 GB, skipping onnxslim (it works on in-memory protos)", path)
        return
    import onnxslim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnxslim.slim(str(path))
    for p in path.parent.iterdir():
        p.unlink()
    onnx.save_model(model, str(path))


def _finalize_storage(path: Path, weight_bytes: int, threshold: int) -> bool:
    """Consolidate weights into one external file when over ``threshold``; return whether.

    Streamed: the graph is loaded without its weights and each tensor's bytes are copied into
    ``model.onnx.data`` one at a time, so the process never holds the model's weights a second
    time (the torchscript exporter writes a 3.4 GB UNet as hundreds of per-tensor files)."""
    extra = [p for p in path.parent.iterdir() if p.name != path.name]
    if weight_bytes <= threshold and not extra:
        return False
    data_name = path.name + ".data"
    if [p.name for p in extra] == [data_name]:
        return True   # already one external file
    from onnx.external_data_helper import _get_all_tensors
    model = onnx.load(str(path), load_external_data=False)
    tmp = path.parent / (data_name + ".part")
    with open(tmp, "wb") as out:
        for t in _get_all_tensors(model):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                with open(path.parent / info["location"], "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    blob = f.read(int(info["length"])) if "length" in info else f.read()
            elif t.HasField("raw_data") and len(t.raw_data) >= 1024:
                blob = t.raw_data
            else:
                continue
            pad = -out.tell() % 4096   # page-aligned, as onnx's own writer does
            out.write(b"\0" * pad)
            offset = out.tell()
            out.write(blob)
            t.ClearField("raw_data")
            del t.external_data[:]
            for k, v in (("location", data_name), ("offset", offset), ("length", len(blob))):
                entry = t.external_data.add()
                entry.key, entry.value = k, str(v)
            t.data_location = onnx.TensorProto.EXTERNAL
    for p in extra:
        p.unlink()
    tmp.rename(path.parent / data_name)
    onnx.save_model(model, str(path))
    return True


def reference_outputs(module: nn.Module, spec: ComponentSpec, geom: ModelGeometry,
                      batches: tuple[int, ...]) -> list[tuple[int, tuple, np.ndarray]]:
    """(batch, seeded inputs, PyTorch output) per batch: what ``validate_component`` compares
    the ONNX graph with, computed first so the caller can free the module before ORT loads
    the graph (never both copies of a 3.4 GB UNet at once)."""
    out = []
    for b in batches:
        inputs = spec.example(geom, b, torch.Generator().manual_seed(1000 + b))
        with torch.inference_mode():
            refs = module(*inputs)
        out.append((b, inputs, [r.float().numpy()
                                for r in (refs if isinstance(refs, tuple) else (refs,))]))
    return out


def validate_component(module: nn.Module | list, spec: ComponentSpec, geom: ModelGeometry,
                       path: Path, batches: tuple[int, ...], precision: str) -> list[dict]:
    """Run the ONNX graph in ORT (CPU) and the PyTorch module (or its ``reference_outputs``)
    on the same seeded inputs; every output of the graph is compared."""
    import onnxruntime as ort
    refs = module if isinstance(module, list) else reference_outputs(module, spec, geom, batches)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False   # the validation's activations go back after each call
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    atol, rtol = TOLERANCE[precision]
    rows = []
    for b, inputs, ref_outs in refs:
        gots = sess.run(None, {n: t.numpy() for n, t in zip(spec.inputs, inputs)})
        for out_name, ref, got in zip(spec.outputs, ref_outs, gots):
            if got.shape != ref.shape:
                raise ExportError(f"{spec.name}: ONNX output {out_name} shape {got.shape} != "
                                  f"PyTorch {ref.shape} at batch {b}")
            err = np.abs(got.astype(np.float64) - ref)
            scale = float(np.abs(ref).max())
            max_abs, max_rel = float(err.max()), float(err.max() / max(scale, 1e-12))
            rows.append({"batch": b, "max_abs": max_abs, "max_rel": max_rel,
                         "ok": bool(max_abs <= atol + rtol * scale),
                         **({"output": out_name} if spec.extra_outputs else {})})
            log.debug("validate %s %s batch %d: max abs %.3g, max rel %.3g", spec.name,
                      out_name, b, max_abs, max_rel)
    return rows


def export_onnx(model_dir: str, out_dir: str, cfg: OnnxExportConfig = OnnxExportConfig()) -> Path:
    """Export, validate and describe the components of ``model_dir``; return ``out_dir``."""
    cfg.check()
    check_model_dir(model_dir)
    comps = load_components(model_dir)
    geom = ModelGeometry.of(comps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ExportManifest(
        kind="onnx", source_model=str(Path(model_dir).resolve()), source_hash=model_hash(model_dir),
        precision=cfg.precision, geometry=geom,
        settings={**asdict(cfg), "opset": cfg.resolved_opset()},
        versions={"torch": torch.__version__, "onnx": onnx.__version__, **_ort_version()})
    failures = []
    names = list(cfg.components or COMPONENT_NAMES)
    names += [n for n in DEEP_CACHE_COMPONENTS if cfg.deep_cache and n not in names]
    for i, name in enumerate(names):
        spec = SPECS[name]
        module = spec.wrap(comps).eval()
        ref_module = module
        if cfg.precision == "fp16":   # a copy of this component only, not of the model
            module = fp16_compute(copy.deepcopy(module).eval(), spec)
        path = out / name / "model.onnx"
        if path.parent.exists():
            shutil.rmtree(path.parent)
        path.parent.mkdir(parents=True)
        weight_bytes = _weight_bytes(module)
        t0 = time.perf_counter()
        with _exportable_attention(module, cfg.attention_heads_per_chunk), \
                torch.inference_mode(False), torch.no_grad():
            _export_one(module, spec, geom, path, cfg)
        if cfg.simplify:
            _simplify(path, weight_bytes)
        external = _finalize_storage(path, weight_bytes, cfg.external_data_threshold)
        export_s = time.perf_counter() - t0
        with torch.no_grad():
            refs = reference_outputs(ref_module, spec, geom, cfg.validate_batches)
        del module, ref_module
        _release_unused(comps, [SPECS[n] for n in names[i + 1:]])
        rows = validate_component(refs, spec, geom, path, cfg.validate_batches, cfg.precision)
        atol, rtol = TOLERANCE[cfg.precision]
        manifest.components[name] = {
            "file": f"{name}/model.onnx", "opset": cfg.resolved_opset(), "inputs":
            {n: s for n, s in spec.shapes(geom, 1).items()}, "output": spec.output,
            "dynamic_axes": spec.dynamic_axes, "bytes": weight_bytes, "external_data": external,
            "validation": rows, "tolerance": {"atol": atol, "rtol": rtol},
            "export_seconds": round(export_s, 2),
            **({"outputs": list(spec.outputs)} if spec.extra_outputs else {}),
            **({"deep_cache_branch": DEEP_CACHE_BRANCH}
               if name in DEEP_CACHE_COMPONENTS else {})}
        for r in rows:
            print(f"{name:13s} batch {r['batch']}: max abs err {r['max_abs']:.2e}, "
                  f"max rel err {r['max_rel']:.2e}  {'OK' if r['ok'] else 'OVER TOLERANCE'}")
        if not all(r["ok"] for r in rows):
            failures.append(name)
    if failures:
        raise ExportError(f"export of {', '.join(failures)} does not match PyTorch within "
                          f"tolerance {TOLERANCE[cfg.precision]} (see the errors above); "
                          f"try another --opset or --exporter, or --precision fp32")
    for sub in ("tokenizer", "scheduler"):
        dst = out / sub
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(Path(model_dir) / sub, dst)
    prompts = Path(model_dir) / "medfake_prompts.json"  # DreamBooth tokens travel with the model
    if prompts.is_file():
        shutil.copyfile(prompts, out / prompts.name)
    manifest.save(out)
    return out


def _release_unused(comps, later: list[ComponentSpec]) -> None:
    """Drop the PyTorch networks of ``comps`` that no ``later`` component wraps (peak memory:
    an exported network's weights are freed before ORT loads its graph), then collect."""
    keep = set()
    for spec in later:
        mods = {id(m) for m in spec.wrap(comps).modules()}
        keep |= {k for k, v in vars(comps).items() if isinstance(v, nn.Module) and id(v) in mods}
    for k, v in list(vars(comps).items()):
        if isinstance(v, nn.Module) and k not in keep:
            setattr(comps, k, None)
    gc.collect()


def _ort_version() -> dict[str, str]:
    try:
        import onnxruntime as ort
        return {"onnxruntime": ort.__version__}
    except ImportError:
        return {}
