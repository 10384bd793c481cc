"""`medfake doctor`: what this machine can run, and which backend each stage will use."""
from __future__ import annotations

from ..engine.core import capabilities as cap


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
    if synth == "onnx":
        from ..engine.diffusion.backends.ort_backend import select_providers
        provs = [p if isinstance(p, str) else p[0] for p in select_providers("auto")]
        synth_note += f", providers {provs}"
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


def doctor_report() -> str:
    lines = ["component      available  version       detail"]
    for p in cap.all_probes():
        lines.append(f"{p.name:14s} {'yes' if p.available else 'no':10s} {p.version:13s} {p.detail}")
    lines += ["", "stage                          will use"]
    lines += [f"{stage:30s} {use}" for stage, use in stage_plan()]
    return "\n".join(lines)
