"""The machine's fp32 compute roof, measured sgemm, and the UNet's achieved GFLOP/s against both.

Roof (theoretical peak), stated per machine:

    peak = cores x clock x SIMD fp32 lanes x 2 (an FMA is a multiply and an add) x FMA units

- cores: the CPUs this process may run on (``os.sched_getaffinity``), one thread per core
  (``lscpu``'s "Thread(s) per core" is 1 here; with SMT two threads share one core's units, so
  ``cores`` is divided by it);
- clock: *measured* on all those cores at once: a chain of dependent register-register integer
  adds (1 cycle latency on every x86 core since the P6) on one thread per core, compiled with
  the system C compiler, divided by the thread's CPU time. Not ``add $1, reg``: Intel's Golden
  Cove cores (Alder Lake P-cores, Sapphire Rapids) fold small-immediate adds in the renamer, so
  such a chain runs faster than one add per cycle (2026-12-02, Sapphire Rapids VM: 4.40 "GHz"
  with immediates, 2.15 with registers, 2.16 from a 3-cycle ``imul`` chain; the roof came out
  789 GFLOP/s against a measured FMA loop of 261) (not wall time: on a shared machine the wall clock
  would understate the clock and so the roof); the fastest thread's. In a VM ``/proc/cpuinfo``'s "cpu MHz" is the TSC rate, not the boost
  clock (here 2246 MHz while the cores run at ~3.3 GHz), so it is only the fallback;
- lanes: 16 with ``avx512f``, 8 with ``avx2`` + ``fma``, 4 otherwise (from the CPU flags);
- FMA units per core: 2 for AMD family 23 model >= 0x30 (Zen 2) and family >= 25 (Zen 3/4:
  two 256-bit FMA pipes; Zen 4's AVX-512 is double-pumped, so 2 x 8 lanes), 1 x 256-bit
  equivalent for Zen 1 (family 23 model < 0x30: 128-bit pipes), 2 for Intel cores with AVX2
  (Haswell and later) -- an assumption from the vendors' optimisation manuals, printed with
  the result.

A second roof is *measured*: a compiled loop of independent AVX2/AVX-512 FMAs (12 accumulators,
enough to hide the FMA latency) on one thread per core; it must come out at or just below the
theoretical peak, which checks the clock and the unit count.

sgemm: the best of torch (``torch.mm``: MKL/oneDNN) and ONNX Runtime's MLAS (a one-node
``MatMul`` graph) at several square sizes, all threads, one session/process.

UNet FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on one UNet call with explicit-math
attention (so the attention matmuls are aten.bmm and counted): it counts 2 FLOPs per
multiply-accumulate of every convolution, linear (addmm/mm) and batched matmul; normalisation,
activations and other elementwise work are not counted (they are a few percent of the
arithmetic and bound by memory), so achieved GFLOP/s is a lower bound of what the kernels
execute -- and it can never honestly exceed the roof: a run where it does is reported as an
error (the count or the clock would be wrong).

Usage: ``python bench/roofline.py [--threads 2] [--sd15]`` prints a Markdown report: the
roof, sgemm per size, and the UNet (torch eager with SDPA, ONNX Runtime on one session of all
threads and as concurrent single-thread streams) at the tiny preset (UNet batch 2 = one image
under CFG, at the 32 px preset's 8x8 latents, and UNet batch 16) and, with ``--sd15`` (a HEAVY
job: builds a random-weight SD 1.5, exports its UNet), at SD 1.5 size (UNet batch 2 under CFG,
32x32 latents = 256 px and 64x64 latents = 512 px).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_CHAIN_C = r"""
#include <stdint.h>
uint64_t add_chain(uint64_t n) {            /* 16 dependent register adds per iteration */
    uint64_t x = 0, one = 1;
    for (uint64_t i = 0; i < n; i++) {
        __asm__ volatile(
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(one));
    }
    return x;
}
#if defined(__AVX512F__)
#include <immintrin.h>
#define VEC __m512
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define LANES 16
#else
#include <immintrin.h>
#define VEC __m256
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define LANES 8
#endif
int lanes(void) { return LANES; }
float fma_loop(uint64_t n) {                /* 12 independent FMA chains */
    VEC a0 = SET(1.0f), a1 = SET(1.1f), a2 = SET(1.2f), a3 = SET(1.3f), a4 = SET(1.4f),
        a5 = SET(1.5f), a6 = SET(1.6f), a7 = SET(1.7f), a8 = SET(1.8f), a9 = SET(1.9f),
        a10 = SET(2.0f), a11 = SET(2.1f);
    const VEC m = SET(0.999999f), c = SET(1e-7f);
    for (uint64_t i = 0; i < n; i++) {
        a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);
        a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);
        a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);
        __asm__ volatile("" ::: "memory");
    }
    VEC s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    float out[LANES];
    __builtin_memcpy(out, &s, sizeof(out));
    return out[0];
}
"""
FMA_PER_ITER = 12          # FMAs per fma_loop iteration (each LANES wide)
ADDS_PER_ITER = 16


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str
    family: int
    model_id: int
    flags: frozenset
    cores: int
    threads_per_core: int
    nominal_mhz: float

    @property
    def lanes(self) -> int:
        if "avx512f" in self.flags:
            return 16
        return 8 if {"avx2", "fma"} <= self.flags else 4

    def fma_units(self) -> tuple[int, str]:
        """(FMA units per core of ``lanes`` width, the assumption in words)."""
        if self.vendor == "AuthenticAMD":
            if self.family == 23 and self.model_id < 0x30:
                return 1, "Zen 1: two 128-bit FMA pipes = one 256-bit FMA per cycle"
            if self.family >= 23:
                if "avx512f" in self.flags:
                    return 1, "Zen 4: two 256-bit FMA pipes, AVX-512 double-pumped"
                return 2, "Zen 2/3: two 256-bit FMA pipes per core"
        if self.vendor == "GenuineIntel":
            return 2, "Intel Haswell or later: two FMA ports (some Xeon Silver/Bronze: one)"
        return 1, "unknown core: one FMA unit assumed"


def cpu_info() -> CpuInfo:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break           # the first processor's block is enough
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
    tpc = 1
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
        for line in out.splitlines():
            if line.startswith("Thread(s) per core:"):
                tpc = int(line.split(":")[1])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return CpuInfo(fields.get("model name", "?"), fields.get("vendor_id", "?"),
                   int(fields.get("cpu family", 0)), int(fields.get("model", 0)),
                   frozenset(fields.get("flags", "").split()),
                   len(os.sched_getaffinity(0)), tpc, float(fields.get("cpu MHz", 0.0)))


def _compile(info: CpuInfo) -> ctypes.CDLL | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    d = Path(tempfile.mkdtemp(prefix="roofline"))
    (d / "k.c").write_text(_CHAIN_C)
    arch = ["-mavx512f"] if info.lanes == 16 else ["-mavx2", "-mfma"] if info.lanes == 8 else []
    r = subprocess.run([cc, "-O2", "-shared", "-fPIC", *arch, "-o", str(d / "k.so"),
                        str(d / "k.c")], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return None
    lib = ctypes.CDLL(str(d / "k.so"))
    lib.add_chain.argtypes, lib.add_chain.restype = [ctypes.c_uint64], ctypes.c_uint64
    lib.fma_loop.argtypes, lib.fma_loop.restype = [ctypes.c_uint64], ctypes.c_float
    return lib


def _on_all_cores(fn, n: int, threads: int) -> float:
    """``threads`` threads each run ``fn(n)`` at once (ctypes drops the GIL); returns the
    least CPU seconds one of them took (``time.thread_time``: the time it held a core, so a
    shared machine slows the wall clock but not this)."""
    cpu: list[float] = []

    def one():
        t = time.thread_time()
        fn(n)
        cpu.append(time.thread_time() - t)
    ts = [threading.Thread(target=one) for _ in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return min(cpu)


def roof(threads: int | None = None) -> dict:
    """The theoretical peak (with its parts and assumptions) and the measured FMA-loop peak,
    on ``threads`` threads (default: one per core)."""
    info = cpu_info()
    cores = max(1, info.cores // info.threads_per_core)
    threads = threads or cores
    units, why = info.fma_units()
    lib = _compile(info)
    out = {"cpu": info.model, "cores": cores, "threads": threads, "lanes": info.lanes,
           "fma_units": units, "assumption": why, "nominal_ghz": info.nominal_mhz / 1e3}
    if lib is None:
        out.update(clock_ghz=info.nominal_mhz / 1e3, clock_source="/proc/cpuinfo (no C "
                   "compiler to measure it)", fma_loop_gflops=None)
    else:
        n = 20_000_000
        _on_all_cores(lib.add_chain, n // 10, threads)   # wake the cores up
        secs = min(_on_all_cores(lib.add_chain, n, threads) for _ in range(3))
        out.update(clock_ghz=n * ADDS_PER_ITER / secs / 1e9,
                   clock_source=f"measured: dependent integer adds on {threads} thread(s) at once")
        m = 50_000_000
        secs = min(_on_all_cores(lib.fma_loop, m, threads) for _ in range(3))
        out["fma_loop_gflops"] = threads * m * FMA_PER_ITER * lib.lanes() * 2 / secs / 1e9
    used = min(threads, cores)
    out["peak_gflops"] = used * out["clock_ghz"] * info.lanes * 2 * units
    return out


def _best(fn, repeat: int = 5) -> tuple[float, float]:
    """(wall s, process CPU s) of the fastest of ``repeat`` calls after a warm-up."""
    fn()
    return min((_timed(fn) for _ in range(repeat)), key=lambda wc: wc[0])


def _timed(fn) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def sgemm(threads: int, sizes=(256, 512, 1024, 2048)) -> list[dict]:
    """GFLOP/s of an n x n x n fp32 matmul per size: torch.mm and ONNX Runtime MatMul (MLAS)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper
    torch.set_num_threads(threads)
    rows = []
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        flop = 2 * n ** 3
        t_torch = _best(lambda a=a, b=b: torch.mm(a, b), 3 if n >= 2048 else 5)[0]
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["A", "B"], ["C"])], "mm",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n]),
             helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        feeds = {"A": a.numpy(), "B": b.numpy()}
        t_ort = _best(lambda s=sess, f=feeds: s.run(None, f), 3 if n >= 2048 else 5)[0]
        assert np.allclose(sess.run(None, feeds)[0][:2, :2], (a @ b).numpy()[:2, :2], atol=1e-2)
        rows.append({"n": n, "torch": flop / t_torch / 1e9, "ort": flop / t_ort / 1e9})
    return rows


def unet_flops(unet, x, t, e) -> float:
    """FLOPs of one UNet call as FlopCounterMode counts them (module doc), math attention."""
    import torch
    from medfake.kernels.attention import apply_attention
    from torch.utils.flop_counter import FlopCounterMode
    apply_attention(unet, "math")
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        unet(x, t, encoder_hidden_states=e)
    return float(fc.get_total_flops())


def unet_rows(preset: str, unet_batch: int, threads: int, work: Path, repeat: int = 3,
              latent: int | None = None) -> list[dict]:
    """Achieved GFLOP/s of one UNet call at ``unet_batch`` and ``latent`` x ``latent`` latents
    (default: the preset's ``sample_size``; the export's height/width are dynamic): torch
    eager (SDPA), ORT one session of ``threads`` threads, ORT ``threads`` concurrent
    single-thread calls (as `medfake synth` streams run)."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort
    import torch
    from medfake.engine.diffusion.backends.manifest import ExportManifest
    from medfake.engine.diffusion.backends.ort_backend import session_options
    from medfake.engine.diffusion.sd_model import init_model, load_components
    from medfake.export.onnx_export import OnnxExportConfig, export_onnx
    from medfake.kernels.attention import apply_attention
    torch.set_num_threads(threads)
    model = work / preset
    if not model.exists():
        init_model(preset, model, seed=0)
    comps = load_components(str(model))
    cfg = comps.unet.config
    s = int(latent or cfg.sample_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(unet_batch, int(cfg.in_channels), s, s, generator=g)
    tt = torch.tensor(500.0)
    e = torch.randn(unet_batch, int(comps.text_encoder.config.max_position_embeddings),
                    int(cfg.cross_attention_dim), generator=g)
    flop = unet_flops(comps.unet, x, tt, e)
    apply_attention(comps.unet, "sdpa")
    unet = comps.unet

    @torch.inference_mode()
    def run_torch():
        return unet(x, tt, encoder_hidden_states=e).sample

    rows = [{"what": "torch eager (SDPA)", "s": _best(run_torch, repeat), "flop": flop}]
    comps = unet = None   # free the torch weights before ORT loads the graph
    export = work / f"{preset}-onnx"
    if not (export / "unet").is_dir():
        export_onnx(str(model), str(export), OnnxExportConfig(components=("unet",)))
    path = str(ExportManifest.load(export).component_path(export, "unet"))
    feeds = {"sample": x.numpy(), "timestep": tt.numpy(), "encoder_hidden_states": e.numpy()}
    sess = ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
    rows.append({"what": f"ONNX Runtime, 1 session x {threads} threads",
                 "s": _best(lambda: sess.run(None, feeds), repeat), "flop": flop})
    sess = None
    if threads > 1:
        one = ort.InferenceSession(path, session_options(1), providers=["CPUExecutionProvider"])
        with ThreadPoolExecutor(threads) as pool:
            def streams():
                return list(pool.map(lambda _: one.run(None, feeds), range(threads)))
            rows.append({"what": f"ONNX Runtime, {threads} streams x 1 thread",
                         "s": _best(streams, repeat), "flop": threads * flop})
    for r in rows:
        (r["s"], cpu) = r["s"]
        r["gflops"] = r["flop"] / r["s"] / 1e9
        # FLOP / (process CPU s / threads): the rate with the cores to itself, on a shared
        # machine (spinning worker threads count as busy, so it stays a lower bound)
        r["gflops_cpu"] = r["flop"] / max(cpu, 1e-9) * threads / 1e9
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sd15", action="store_true", help="also SD 1.5 size (HEAVY)")
    ap.add_argument("--work", help="where models and exports go (default: a temporary dir)")
    a = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    r = roof(a.threads)
    inconsistent = False
    print(f"CPU: {r['cpu']}, {r['cores']} core(s), {a.threads} thread(s); load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print(f"theoretical fp32 peak = {min(a.threads, r['cores'])} cores x {r['clock_ghz']:.2f} GHz "
          f"({r['clock_source']}; /proc/cpuinfo says {r['nominal_ghz']:.2f}) x {r['lanes']} "
          f"lanes x 2 (FMA) x {r['fma_units']} FMA unit(s) ({r['assumption']}) = "
          f"**{r['peak_gflops']:.1f} GFLOP/s**")
    if r["fma_loop_gflops"] is not None:
        print(f"measured FMA-loop peak (12 independent FMA chains per thread): "
              f"**{r['fma_loop_gflops']:.1f} GFLOP/s** "
              f"({r['fma_loop_gflops'] / r['peak_gflops']:.2f}x the theoretical)")
        agree = r["fma_loop_gflops"] / r["peak_gflops"]
        if not 0.8 <= agree <= 1.05:
            # the two roofs check each other: a loop above the peak, or far below it, means
            # the clock or the FMA-unit count is wrong, and every "/ peak" below with it
            print(f"\nERROR: the measured FMA loop is {agree:.2f}x the theoretical peak (expected "
                  f"0.8-1.05): the measured clock or the assumed FMA units ({r['assumption']}) "
                  "are wrong on this CPU; read the '/ peak' columns against the FMA loop",
                  file=sys.stderr)
            inconsistent = True
    rows = sgemm(a.threads)
    best = max(max(x["torch"], x["ort"]) for x in rows)
    print("\n| sgemm n | torch.mm GFLOP/s | ORT MatMul (MLAS) GFLOP/s | best / peak |\n"
          "|---|---|---|---|")
    for x in rows:
        print(f"| {x['n']} | {x['torch']:.1f} | {x['ort']:.1f} | "
              f"{max(x['torch'], x['ort']) / r['peak_gflops']:.2f} |")
    print(f"\nbest sgemm: {best:.1f} GFLOP/s = {best / r['peak_gflops']:.2f} of the peak")
    cases = [("tiny", 2, "tiny (32 px), UNet batch 2 (1 image + CFG), 8x8 latents", None),
             ("tiny", 16, "tiny (32 px), UNet batch 16, 8x8 latents", None)]
    if a.sd15:
        cases += [("sd15", 2, "SD 1.5 (256 px), UNet batch 2 (1 image + CFG), 32x32 latents",
                   32),
                  ("sd15", 2, "SD 1.5 (512 px), UNet batch 2 (1 image + CFG), 64x64 latents",
                   64)]
    over = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("\n| UNet | runtime | s per round | GFLOP per call (counted) | GFLOP/s (wall) | "
              "/ peak | / best sgemm | GFLOP/s (CPU time) | / peak |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for preset, ub, label, latent in cases:
            for row in unet_rows(preset, ub, a.threads, work,
                                 repeat=1 if preset != "tiny" else 5, latent=latent):
                over |= max(row["gflops"], row["gflops_cpu"]) > r["peak_gflops"]
                print(f"| {label} | {row['what']} | {row['s']:.4g} | "
                      f"{row['flop'] / 1e9 / (a.threads if 'streams' in row['what'] else 1):.3g}"
                      f" | {row['gflops']:.1f} | {row['gflops'] / r['peak_gflops']:.2f} | "
                      f"{row['gflops'] / best:.2f} | {row['gflops_cpu']:.1f} | "
                      f"{row['gflops_cpu'] / r['peak_gflops']:.2f} |")
    if over:
        print("\nERROR: an achieved rate exceeds the theoretical peak: the FLOP count or the "
              "clock is wrong", file=sys.stderr)
        return 1
    return 1 if inconsistent else 0


if __name__ == "__main__":
    sys.exit(main())
