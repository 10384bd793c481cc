"""Peak memory and speed of one SD attention layer on ONNX Runtime, all heads at once vs
head-chunked (``kernels.attention.head_chunked_sdpa``), exported the way ``medfake export
onnx`` exports (torchscript, opset 17, SDPA) and run with medfake's session options (``--runtime openvino``: the openvino backend's fp32 config).

ONNX Runtime on CPU materialises the (batch, heads, queries, keys) attention scores; PyTorch's
SDPA computes them in blocks. This isolates that difference on one layer, side by side in one
run: each variant in a fresh child process (peak RSS from ``getrusage``, minus the RSS after
the session was created), interleaved rounds of ``--calls`` calls each.

Usage: ``python bench/attention_memory.py [--tokens 4096] [--heads 8] [--dim-head 40]
[--batch 2] [--chunks 0 1 2 4] [--threads 2] [--rounds 3] [--runtime onnxruntime|openvino]``. Defaults: SD 1.5's first
self-attention at 512 px (64x64 latents), UNet batch 2 (one image with CFG).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
a = json.loads(sys.argv[1])
import onnxruntime as ort
from medfake.engine.diffusion.backends.ort_backend import session_options
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
x = np.random.default_rng(0).standard_normal((a["batch"], a["tokens"], a["dim"])).astype(np.float32)
if a["runtime"] == "openvino":   # the openvino backend's fp32 CPU config
    import openvino as ov
    c = ov.Core().compile_model(a["path"], "CPU", {"INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": a["threads"], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    run = lambda: c(x)[0]
else:
    s = ort.InferenceSession(a["path"], session_options(a["threads"]),
                             providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {"x": x})[0]
base = rss_mb()
run()                                           # warm-up
t = time.perf_counter()
for _ in range(a["calls"]):
    y = run()
sec = (time.perf_counter() - t) / a["calls"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds_per_call": sec, "peak_over_loaded_mb": peak - base,
                  "checksum": float(np.abs(y).sum())}))
"""


def export(path: Path, heads_per_chunk: int, a) -> None:
    import torch
    from diffusers.models.attention_processor import Attention

    from medfake.kernels.attention import head_chunked_processor, make_processor

    torch.manual_seed(0)
    layer = Attention(query_dim=a.heads * a.dim_head, heads=a.heads, dim_head=a.dim_head).eval()
    x = torch.randn(a.batch, a.tokens, a.heads * a.dim_head)
    # what exportable_attention(unet, "sdpa", heads_per_chunk) sets on each attention module
    layer.set_processor(head_chunked_processor(heads_per_chunk) if heads_per_chunk
                        else make_processor("sdpa"))
    with torch.no_grad():
        torch.onnx.export(layer, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "n"}, "y": {0: "b", 1: "n"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim-head", type=int, default=40)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    a = ap.parse_args()
    rows: dict[int, list[dict]] = {c: [] for c in a.chunks}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {c: Path(tmp) / f"attn_c{c}.onnx" for c in a.chunks}
        for c, p in paths.items():
            export(p, c, a)
        for _ in range(a.rounds):
            for c, p in paths.items():
                arg = {"path": str(p), "threads": a.threads, "batch": a.batch,
                       "tokens": a.tokens, "dim": a.heads * a.dim_head, "calls": a.calls,
                       "runtime": a.runtime}
                out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(arg)], check=True,
                                     capture_output=True, text=True).stdout
                rows[c].append(json.loads(out.strip().splitlines()[-1]))
    score_mb = a.batch * a.heads * a.tokens ** 2 * 4 / 2 ** 20
    print(f"{a.runtime}, one attention layer: batch {a.batch}, {a.heads} heads x {a.dim_head}, {a.tokens} "
          f"tokens (all heads' fp32 scores: {score_mb:.0f} MB); {a.threads} threads, "
          f"{a.rounds} interleaved rounds of {a.calls} calls\n")
    print("| heads per chunk | peak over loaded session, MB (max of rounds) | s per call "
          "(median) | vs all heads at once |")
    print("|---|---|---|---|")
    import statistics
    ref = statistics.median(r["seconds_per_call"] for r in rows[a.chunks[0]])
    sums = {round(r["checksum"], 0) for rs in rows.values() for r in rs}
    for c, rs in rows.items():
        sec = statistics.median(r["seconds_per_call"] for r in rs)
        print(f"| {c or 'all (off)'} | {max(r['peak_over_loaded_mb'] for r in rs):.0f} | "
              f"{sec:.3f} | {ref / sec:.2f}x |")
    print(f"\noutputs agree across variants: {len(sums) == 1}")


if __name__ == "__main__":
    main()
