"""UNet step efficiency: achieved GFLOP/s of one UNet call at batch 16 divided by the fp32
matmul peak measured in the same run, same thread count. ``ort_streams`` is the engine's CPU
configuration (concurrent single-threaded calls, as `medfake synth` runs them).

FLOPs are counted once with PyTorch's FlopCounterMode on the UNet with explicit-math attention
(so every attention matmul is counted); every candidate runs the same computation. Candidates:
ONNX Runtime on the torchscript/opset-17 export and on the dynamo/opset-23 export (this is the
measurement behind the default exporter), and PyTorch eager with SDPA. Baseline: a 1024^3 fp32
matmul (torch.mm), i.e. the machine's practical GEMM peak. Ratio = efficiency.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from medfake.engine.diffusion.sd_model import init_model, load_components
from medfake.export.onnx_export import OnnxExportConfig, export_onnx
from medfake.kernels.attention import apply_attention

BATCH, THREADS, ROUNDS, ITER = 16, 2, 8, 5
GROUP = f"UNet step GFLOP/s at batch {BATCH} vs fp32 matmul peak (tiny SD, {THREADS} threads)"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("eff")
    model = init_model("tiny", root / "tiny")
    comps = load_components(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 4, 8, 8, generator=g)
    t = torch.tensor(500.0)
    e = torch.randn(BATCH, 32, 64, generator=g)
    apply_attention(comps.unet, "math")
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        comps.unet(x, t, encoder_hidden_states=e)
    return {"model": model, "comps": comps, "inputs": (x, t, e), "root": root,
            "gflop": fc.get_total_flops() / 1e9}


def _session(setup, exporter: str, threads: int):
    out = setup["root"] / exporter
    if not (out / "unet" / "model.onnx").is_file():
        export_onnx(str(setup["model"]), str(out),
                    OnnxExportConfig(exporter=exporter, components=("unet",)))
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    x, t, e = setup["inputs"]
    feeds = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
    return ort.InferenceSession(str(out / "unet" / "model.onnx"), so,
                                providers=["CPUExecutionProvider"]), feeds


def _ort(benchmark, setup, exporter: str):
    sess, feeds = _session(setup, exporter, THREADS)
    benchmark.extra_info.update(per_round=setup["gflop"], unit="GFLOP")
    benchmark.pedantic(sess.run, args=(None, feeds), rounds=ROUNDS, iterations=ITER,
                       warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_streams(benchmark, setup):
    """What `medfake synth` runs on a CPU: one single-threaded session called by ``THREADS``
    concurrent streams (engine/sampler_streams.py); a round is one call per stream."""
    from concurrent.futures import ThreadPoolExecutor
    sess, feeds = _session(setup, "torchscript", 1)
    with ThreadPoolExecutor(THREADS) as pool:
        def run():
            return list(pool.map(lambda _: sess.run(None, feeds), range(THREADS)))
        benchmark.extra_info.update(per_round=THREADS * setup["gflop"], unit="GFLOP")
        benchmark.pedantic(run, rounds=ROUNDS, iterations=ITER, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_torchscript_opset17(benchmark, setup):
    _ort(benchmark, setup, "torchscript")


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_dynamo_opset23(benchmark, setup):
    _ort(benchmark, setup, "dynamo")


@pytest.mark.benchmark(group=GROUP)
def test_candidate_torch_eager_sdpa(benchmark, setup):
    unet = setup["comps"].unet
    apply_attention(unet, "sdpa")
    x, t, e = setup["inputs"]

    @torch.inference_mode()
    def run():
        return unet(x, t, encoder_hidden_states=e).sample

    benchmark.extra_info.update(per_round=setup["gflop"], unit="GFLOP")
    benchmark.pedantic(run, rounds=ROUNDS, iterations=ITER, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_baseline_fp32_matmul_peak(benchmark):
    torch.set_num_threads(THREADS)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    benchmark.extra_info.update(per_round=2 * n ** 3 / 1e9, unit="GFLOP")
    benchmark.pedantic(torch.mm, args=(a, b), rounds=ROUNDS, iterations=ITER, warmup_rounds=1)
    assert np.isfinite(float(torch.mm(a, b)[0, 0]))
