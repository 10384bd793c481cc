"""UNet step efficiency: achieved GFLOP/s of one UNet call at batch 16 divided by the machine's
fp32 peak measured in the same run, same thread count. ``ort_streams`` is the engine's CPU
configuration (concurrent single-threaded calls, as `medfake synth` runs them).

FLOPs are counted once with PyTorch's FlopCounterMode on the UNet with explicit-math attention
(2 FLOPs per multiply-accumulate of every convolution, linear and attention matmul; elementwise
work uncounted, so achieved is a lower bound); every candidate runs the same computation.
Candidates: ONNX Runtime on the torchscript/opset-17 export and on the dynamo/opset-23 export,
PyTorch eager with SDPA, and the best sgemm of each runtime (torch.mm, ORT's MLAS MatMul) at
1024^3. Baseline: the roof, a compiled loop of independent FMAs on one thread per core
(``bench/roofline.py``; it matches cores x measured clock x 8 lanes x 2 x 2 FMA units on this
Zen 2). Ratio = fraction of the roof. Each candidate's fastest round is checked against the
theoretical peak: above it the FLOP count (or the clock) is wrong and the benchmark fails.
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
GROUP = (f"UNet step GFLOP/s at batch {BATCH} vs the fp32 FMA roof (tiny SD, {THREADS} "
         f"threads)")


@pytest.fixture(scope="module")
def roof():
    import roofline   # bench/ is on sys.path when pytest runs this
    return roofline.roof(THREADS)


def _check_under_roof(benchmark, roof, gflop: float) -> None:
    """Achieved (fastest round) must not exceed the theoretical peak."""
    achieved = gflop / benchmark.stats.stats.min
    assert achieved <= roof["peak_gflops"] * 1.02, (
        f"{achieved:.1f} GFLOP/s is above the peak {roof['peak_gflops']:.1f}: the FLOP count "
        f"or the clock is wrong")


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


def _ort(benchmark, setup, roof, exporter: str):
    sess, feeds = _session(setup, exporter, THREADS)
    benchmark.extra_info.update(per_round=setup["gflop"], unit="GFLOP")
    benchmark.pedantic(sess.run, args=(None, feeds), rounds=ROUNDS, iterations=ITER,
                       warmup_rounds=1)
    _check_under_roof(benchmark, roof, setup["gflop"])


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_streams(benchmark, setup, roof):
    """What `medfake synth` runs on a CPU: one single-threaded session called by ``THREADS``
    concurrent streams (engine/sampler_streams.py); a round is one call per stream."""
    from concurrent.futures import ThreadPoolExecutor
    sess, feeds = _session(setup, "torchscript", 1)
    with ThreadPoolExecutor(THREADS) as pool:
        def run():
            return list(pool.map(lambda _: sess.run(None, feeds), range(THREADS)))
        benchmark.extra_info.update(per_round=THREADS * setup["gflop"], unit="GFLOP")
        benchmark.pedantic(run, rounds=ROUNDS, iterations=ITER, warmup_rounds=1)
    _check_under_roof(benchmark, roof, THREADS * setup["gflop"])


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_torchscript_opset17(benchmark, setup, roof):
    _ort(benchmark, setup, roof, "torchscript")


@pytest.mark.benchmark(group=GROUP)
def test_candidate_ort_dynamo_opset23(benchmark, setup, roof):
    _ort(benchmark, setup, roof, "dynamo")


@pytest.mark.benchmark(group=GROUP)
def test_candidate_torch_eager_sdpa(benchmark, setup, roof):
    unet = setup["comps"].unet
    apply_attention(unet, "sdpa")
    x, t, e = setup["inputs"]

    @torch.inference_mode()
    def run():
        return unet(x, t, encoder_hidden_states=e).sample

    benchmark.extra_info.update(per_round=setup["gflop"], unit="GFLOP")
    benchmark.pedantic(run, rounds=ROUNDS, iterations=ITER, warmup_rounds=1)
    _check_under_roof(benchmark, roof, setup["gflop"])


@pytest.mark.benchmark(group=GROUP)
def test_candidate_sgemm_torch_mm(benchmark, roof):
    """torch.mm (MKL) at 1024^3: what the best-tuned GEMM reaches of the roof."""
    torch.set_num_threads(THREADS)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    benchmark.extra_info.update(per_round=2 * n ** 3 / 1e9, unit="GFLOP")
    benchmark.pedantic(torch.mm, args=(a, b), rounds=ROUNDS, iterations=ITER, warmup_rounds=1)
    _check_under_roof(benchmark, roof, 2 * n ** 3 / 1e9)


@pytest.mark.benchmark(group=GROUP)
def test_candidate_sgemm_ort_mlas(benchmark, roof):
    """ONNX Runtime's MLAS on a one-node MatMul graph at 1024^3."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    n = 1024
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "mm",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in "AB"}
    benchmark.extra_info.update(per_round=2 * n ** 3 / 1e9, unit="GFLOP")
    benchmark.pedantic(sess.run, args=(None, feeds), rounds=ROUNDS, iterations=ITER,
                       warmup_rounds=1)
    _check_under_roof(benchmark, roof, 2 * n ** 3 / 1e9)


@pytest.mark.benchmark(group=GROUP)
def test_baseline_fp32_fma_roof(benchmark, roof):
    """The roof: ``THREADS`` threads of independent FMAs (bench/roofline.py's compiled loop)."""
    import roofline
    lib = roofline._compile(roofline.cpu_info())
    if lib is None:
        pytest.skip("no C compiler: the FMA roof cannot be measured (bench/roofline.py prints "
                    "the theoretical peak from the clock in /proc/cpuinfo)")
    n = 5_000_000
    flop = THREADS * n * roofline.FMA_PER_ITER * lib.lanes() * 2

    def run():
        roofline._on_all_cores(lib.fma_loop, n, THREADS)
    benchmark.extra_info.update(per_round=flop / 1e9, unit="GFLOP",
                                theoretical_peak_gflops=round(roof["peak_gflops"], 1),
                                clock_ghz=round(roof["clock_ghz"], 3))
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
