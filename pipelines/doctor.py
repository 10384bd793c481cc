"""`medfake doctor`: what this machine can run, which backend each stage will use, which GPU
paths can run here, and which GPU each rank of this launch will use."""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.core import capabilities as cap


@dataclass(frozen=True)
class GpuPath:
    """One GPU code path: ``why_not`` is None when this machine can run it."""

    name: str
    why_not: str | None
    needs: str = ""           # the package it needs ("" when torch alone), for "not installed"


def _ort_provider(provider: str) -> str | None:
    o = cap.onnxruntime()
    if not o.available:
        return f"onnxruntime {o.detail}"
    if provider not in cap.ort_providers():
        return (f"{provider} is not in this onnxruntime build (has {o.detail}): install "
                f"onnxruntime-gpu")
    return None


def gpu_paths() -> list[GpuPath]:
    """Every GPU path medfake has, and whether it can run here (checks imports, not kernels)."""
    c = cap.cuda()
    no_gpu = None if c.available else f"no CUDA GPU ({c.detail})"

    def need(probe: cap.Probe) -> str | None:
        return no_gpu or (None if probe.available else f"{probe.name} {probe.detail}")

    import torch
    bf16 = no_gpu or (None if torch.cuda.is_bf16_supported() else "GPU has no bf16")
    ds = cap.deepspeed()
    two = no_gpu or (None if torch.cuda.device_count() >= 2 else
                     f"{torch.cuda.device_count()} GPU visible; needs 2")
    return [
        GpuPath("torch fp16 eager (SDPA)", no_gpu),
        GpuPath("torch bf16 eager (SDPA)", bf16),
        GpuPath("torch + xformers", need(cap.xformers()), "xformers"),
        GpuPath("ORT CUDA EP (I/O binding)", no_gpu or _ort_provider("CUDAExecutionProvider"),
                "onnxruntime-gpu"),
        GpuPath("ORT TensorRT EP", no_gpu or _ort_provider("TensorrtExecutionProvider")
                or (None if cap.tensorrt().available else f"tensorrt {cap.tensorrt().detail}"),
                "onnxruntime-gpu"),
        GpuPath("native TensorRT", need(cap.tensorrt()), "tensorrt"),
        GpuPath("Triton GroupNorm+SiLU", need(cap.triton()), "triton"),
        GpuPath("DreamBooth LoRA fp16/bf16", no_gpu, "peft"),
        GpuPath("CLIP DeepSpeed ZeRO-2 (NCCL)", no_gpu or (None if ds.available else
                                                          f"deepspeed {ds.detail}"), "deepspeed"),
        GpuPath("two synthesis ranks on two GPUs", two),
    ]


def rank_devices(environ: dict | None = None, device_names: list[str] | None = None
                 ) -> list[tuple[str, str]]:
    """(rank, device it will use) for this process and the other local ranks of its launch.
    ``device_names``: the visible GPUs (default: torch's; [] on a CPU machine)."""
    from dataclasses import replace

    from ..engine.core.distributed import detect_env, local_device_index
    env = detect_env(environ)
    if device_names is None:
        import torch
        device_names = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                        if cap.cuda().available else [])
    rows = [("launch", f"launcher {env.launcher}: rank {env.rank} of {env.world_size}, local "
                       f"rank {env.local_rank} of {env.local_world_size}")]
    for local in range(max(1, env.local_world_size, env.local_rank + 1)):
        if device_names:
            i = local_device_index(replace(env, local_rank=local), len(device_names))
            where = f"cuda:{i} ({device_names[i]})"
        else:
            where = "cpu"
        rows.append((f"local rank {local}" + (" (this process)" if local == env.local_rank
                                              else ""), where))
    return rows


def stage_plan() -> list[tuple[str, str]]:
    """(stage, what it will use here) for each stage of the chain."""
    from ..engine.diffusion.backends import BACKENDS, resolve_backend
    from ..kernels.attention import resolve_attention
    from ..kernels.groupnorm_silu import triton_status
    gpu = cap.cuda().available
    device = "cuda" if gpu else "cpu"
    synth = resolve_backend("auto")
    why_not = {n: s.unavailable() for n, s in BACKENDS.items() if s.unavailable()}
    synth_note = f"{synth}" + (f" (not: {'; '.join(f'{k}: {v}' for k, v in why_not.items())})"
                               if why_not else "")
    if "tensorrt" not in why_not:
        synth_note += "; tensorrt only for an engine dir whose profiles fit the job"
    if synth == "onnx":
        from ..engine.diffusion.backends.ort_backend import provider_names, select_providers
        synth_note += f", providers {provider_names(select_providers('auto'))}"
    if not gpu:
        from ..engine.diffusion.backends.select import candidates
        cands, _ = candidates()
        synth_note += (f"; on this CPU a job large enough measures "
                       f"{', '.join(c.label for c in cands)} once per model (cached) and runs "
                       f"the fastest that passes the precision gate"
                       + ("" if cap.cpu_bf16().available else "; no bf16: "
                          + cap.cpu_bf16().detail))
    ok, reason = triton_status(device)
    ds = cap.deepspeed()
    return [
        ("synthesis (--backend auto)", synth_note),
        ("attention (torch backend)", resolve_attention("auto", device)),
        ("fused GroupNorm+SiLU (Triton)", "active" if ok else f"off: {reason}"),
        ("CLIP training", f"DeepSpeed {'nccl' if gpu else 'gloo'}" if ds.available
         else f"single process torch (DeepSpeed {ds.detail})"),
        ("device", device),
    ]


def doctor_report(environ: dict | None = None) -> str:
    lines = ["component      available  version       detail"]
    for p in cap.all_probes():
        lines.append(f"{p.name:14s} {'yes' if p.available else 'no':10s} {p.version:13s} {p.detail}")
    lines += ["", "stage                          will use"]
    lines += [f"{stage:30s} {use}" for stage, use in stage_plan()]
    lines += ["", "GPU path                         can run here"]
    lines += [f"{p.name:32s} {'yes' if p.why_not is None else 'no: ' + p.why_not}"
              for p in gpu_paths()]
    lines += ["", "rank                           device"]
    lines += [f"{r:30s} {d}" for r, d in rank_devices(environ)]
    return "\n".join(lines)
