"""The GPU paths' logic, on CPU: device mapping from launchers, ORT providers (device_id, fp16,
actual-provider fallback, I/O-binding stream order), TensorRT profiles from the job, the
engines' tolerance from their precision, per-thread execution contexts and the profile check
(fake TensorRT objects), fp32 timesteps in fp16 graphs, external data with the dynamo exporter,
engine-cache builds racing in threads and processes, the packaging extras, and
bench/gpu_acceptance.py (CPU: every GPU path skipped; its comparison logic with torch fp32 vs
ONNX Runtime CPU). The GPU halves run in bench/gpu_acceptance.py on a GPU machine."""
from __future__ import annotations

import ast
import json
import multiprocessing
import sys
import threading
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medfake.engine.core import capabilities as cap
from medfake.engine.core.distributed import detect_env, local_device_index
from medfake.engine.diffusion import backends as B
from medfake.engine.diffusion.backends import ort_backend as O
from medfake.engine.diffusion.backends.components import (SPECS, JobShape, ModelGeometry,
                                                          input_shapes)
from medfake.engine.diffusion.backends.manifest import ExportManifest
from medfake.export import tensorrt_build as T
from medfake.export.config import TensorRTBuildConfig

ROOT = Path(__file__).resolve().parents[1]
SD15 = ModelGeometry(image_size=512, image_channels=3, latent_channels=4, vae_scale_factor=8,
                     scaling_factor=0.18215, unet_in_channels=4, text_length=77, text_dim=768)


# ------------------------------------------------------------------------ packaging, devices

def test_gpu_extra_leaves_torch_alone():
    """setup.py's extras, read statically: xformers (whose wheels pin one torch) is its own
    extra, and no extra names torch."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    env: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id in ("_ONNX", "EXTRAS"):
            exec(compile(ast.Module([node], []), "setup.py", "exec"), env)  # noqa: S102 (our file)
    extras = env["EXTRAS"]
    names = {k: {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in v}
             for k, v in extras.items()}
    assert "xformers" not in names["gpu"] and names["xformers"] == {"xformers"}
    assert not any({"torch", "torchvision"} & n for n in names.values())


@pytest.mark.parametrize("environ, devices, want", [
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4",
      "TORCHELASTIC_RUN_ID": "x"}, 4, 3),                                  # torchrun
    ({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
      "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "n1"}, 4, 1),  # srun
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 1, 0),  # array
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8"}, 4, 1),
    ({}, 8, 0),
])
def test_local_rank_maps_to_its_own_gpu(environ, devices, want):
    assert local_device_index(detect_env(environ), devices) == want


def test_providers_get_the_ranks_device_and_fp16_only_for_fp16(monkeypatch):
    """Old code: no device_id (every rank on GPU 0) and trt_fp16_enable always on."""
    monkeypatch.setattr(cap, "cuda", lambda: cap.Probe("cuda", True, "12", "fake"))
    monkeypatch.setattr(cap, "ort_providers", lambda: list(O.PROVIDERS.values()))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    def opts(providers):
        return {p if isinstance(p, str) else p[0]: None if isinstance(p, str) else p[1]
                for p in providers}
    fp32 = opts(O.select_providers("tensorrt", "/c", fp16=False))
    assert fp32["TensorrtExecutionProvider"]["device_id"] == 2
    assert fp32["TensorrtExecutionProvider"]["trt_fp16_enable"] is False
    assert fp32["CUDAExecutionProvider"] == {"device_id": 2}
    fp16 = opts(O.select_providers("auto", "/c", fp16=True))
    assert fp16["TensorrtExecutionProvider"]["trt_fp16_enable"] is True


def test_trainers_auto_device_is_the_ranks_gpu(monkeypatch):
    """DreamBooth's --device auto: old code took cuda (GPU 0) on every rank."""
    from medfake.engine.training.accel import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "n1")
    assert resolve_device("auto") == torch.device("cuda", 1)


def test_doctor_reports_each_ranks_device_and_gpu_paths():
    from medfake.pipelines.doctor import gpu_paths, rank_devices
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    rows = dict(rank_devices(env, ["H100", "H100"]))
    assert rows["local rank 0"] == "cuda:0 (H100)"
    assert rows["local rank 1 (this process)"] == "cuda:1 (H100)"
    assert dict(rank_devices(env, []))["local rank 1 (this process)"] == "cpu"
    paths = {p.name: p.why_not for p in gpu_paths()}
    assert {"native TensorRT", "ORT CUDA EP (I/O binding)", "torch + xformers"} <= set(paths)
    if not cap.cuda().available:
        assert all(w and "no CUDA GPU" in w for w in paths.values())


# ------------------------------------------------------------------- profiles and tolerance

def _trt_manifest(tmp_path: Path, cfg: TensorRTBuildConfig, geom=SD15) -> Path:
    m = ExportManifest("tensorrt", "src", "h" * 64, "fp32", geom)
    for name in SPECS:
        m.components[name] = {"file": f"{name}.plan", "profile": {
            k: [list(s) for s in v] for k, v in T.profile_shapes(name, geom, cfg).items()}}
    tmp_path.mkdir(parents=True)
    m.save(tmp_path)
    return tmp_path


def test_input_shapes_match_the_specs_at_native_size():
    for name, spec in SPECS.items():
        assert {k: tuple(v) for k, v in spec.shapes(SD15, 3).items()} == \
            input_shapes(name, SD15, 3)


def test_profiles_cover_the_jobs_size_and_batch_and_auto_skips_engines_that_cannot(
        tmp_path, monkeypatch):
    """SD 1.5 at 256 px, batch 24 with CFG: the old fixed profile (512 px, 1:8:16) cannot
    serve it; the profile derived from the job does; --backend auto picks tensorrt only for
    an engine dir whose profiles serve the job, never for a diffusers dir (a build)."""
    from medfake.engine.diffusion.backends.trt_backend import job_misfit
    job = JobShape(24, 256, 256, guidance=True)
    cfg = T.profile_for_job(job, SD15)
    unet = T.profile_shapes("unet", SD15, cfg)
    assert unet["sample"] == ((1, 4, 32, 32), (48, 4, 32, 32), (48, 4, 64, 64))
    fit = _trt_manifest(tmp_path / "fit", cfg)
    old = _trt_manifest(tmp_path / "old", TensorRTBuildConfig())
    assert job_misfit(ExportManifest.load(fit), job) is None
    assert "outside the profile" in job_misfit(ExportManifest.load(old), job)
    assert job_misfit(ExportManifest.load(old), JobShape(8, 512, 512)) is None
    monkeypatch.setitem(B.BACKENDS, "tensorrt", replace(B.BACKENDS["tensorrt"],
                                                        unavailable=lambda: None))
    assert B.resolve_backend("auto", str(fit), job) == "tensorrt"
    assert B.resolve_backend("auto", str(old), job) != "tensorrt"
    assert B.resolve_backend("auto", str(tmp_path), job) != "tensorrt"   # not an engine dir
    from medfake.engine.diffusion.backends.trt_backend import EngineShapeError
    with pytest.raises(EngineShapeError, match=r"cannot serve 24 image\(s\) per call of "
                       r"256x256: .*rebuild with `medfake export tensorrt --batch 1:24:24 "
                       r"--size 256:256:256`"):
        B.check_engines_serve(str(old), job)
    B.check_engines_serve(str(fit), job)
    with pytest.raises(ValueError, match="MIN <= OPT <= MAX"):
        TensorRTBuildConfig(**TensorRTBuildConfig.parse_size("512:256:768")).check()


def test_engine_tolerance_follows_the_graphs_precision_and_tf32():
    """Old code: tolerance from --fp16 only (1e-3 for TF32 engines) and a 'rebuild without
    --fp16' message for engines that were never fp16."""
    c = TensorRTBuildConfig()
    assert T.engine_precision(c, "fp32", weakly_typed=True) == "tf32"
    assert T.engine_precision(replace(c, strict_fp32=True), "fp32", True) == "fp32"
    assert T.engine_precision(replace(c, fp16=True), "fp32", True) == "fp16"
    assert T.engine_precision(c, "fp16", weakly_typed=False) == "fp16"   # an fp16 graph
    tol = T.ENGINE_TOLERANCE
    assert tol["fp32"] < tol["tf32"] < tol["fp16"]
    msg = T.validation_failure(["unet"], "tf32")
    assert "--strict-fp32" in msg and "without --fp16" not in msg


def test_fp16_engine_keeps_the_timestep_embedding_fp32():
    """Native TensorRT --fp16: the layers from the timestep input up to the embedding's first
    matrix multiply are constrained to fp32 (a fake network: timestep -> Mul -> Sin -> Concat
    -> MatMul -> ...; the sample path stays free)."""
    trt = types.SimpleNamespace(float32="f32", float16="f16", int32="i32", LayerType=types.
                                SimpleNamespace(MATRIX_MULTIPLY="mm", CONVOLUTION="conv"))
    tensor = lambda name, dtype="f32": types.SimpleNamespace(name=name, dtype=dtype)  # noqa: E731

    class Layer:
        def __init__(self, kind, ins, outs):
            self.type, self.ins, self.outs = kind, ins, outs
            self.precision, self.out_types = None, {}

        num_inputs = property(lambda self: len(self.ins))
        num_outputs = property(lambda self: len(self.outs))
        get_input = lambda self, j: self.ins[j]   # noqa: E731
        get_output = lambda self, j: self.outs[j]  # noqa: E731

        def set_output_type(self, j, dtype):
            self.out_types[j] = dtype

    t, x = tensor("timestep"), tensor("sample")
    layers = [Layer("elementwise", [t, tensor("freqs")], [tensor("m")]),
              Layer("unary", [tensor("m")], [tensor("s")]),
              Layer("shape", [tensor("s")], [tensor("n", "i32")]),
              Layer("concat", [tensor("s"), None], [tensor("c")]),
              Layer("mm", [tensor("c")], [tensor("emb")]),
              Layer("act", [tensor("emb")], [tensor("e2")]),
              Layer("conv", [x], [tensor("h")])]
    net = types.SimpleNamespace(num_inputs=2, get_input=[t, x].__getitem__,
                                num_layers=len(layers), get_layer=layers.__getitem__)
    assert T.pin_fp32_from(net, trt, ("timestep",)) == 3
    assert [l.precision for l in layers] == ["f32", "f32", None, "f32", None, None, None]
    assert layers[2].out_types == {} and layers[3].out_types == {0: "f32"}
    assert T.pin_fp32_from(net, trt, ()) == 0


# --------------------------------------------------------------------------- export details

class _Record(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.dtypes: list = []

    def forward(self, sample, timestep, text):
        self.dtypes = [sample.dtype, timestep.dtype, text.dtype]
        return sample


def test_fp16_graph_keeps_the_timestep_fp32():
    """980.7 rounds to 980.5 in fp16; the UNet's timestep input stays float32."""
    from medfake.export.onnx_export import fp16_compute
    rec = _Record()
    m = fp16_compute(rec, SPECS["unet"])
    m(torch.zeros(1, 4, 2, 2), torch.tensor(980.7), torch.zeros(1, 3, 2))
    assert rec.dtypes == [torch.float16, torch.float32, torch.float16]
    assert torch.tensor(980.7).half().item() != pytest.approx(980.7, abs=0.1)


def test_dynamo_export_writes_external_data_over_the_threshold(tmp_path, monkeypatch):
    """Old code saved with external_data=False: a > 2 GB UNet could not be written."""
    from medfake.export import onnx_export as E
    from medfake.export.config import OnnxExportConfig
    saved = []

    class Program:
        def save(self, path, **kw):
            saved.append(kw)

    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: Program())
    spec = SPECS["vae_decoder"]
    for threshold in (0, 2 ** 31):
        cfg = OnnxExportConfig(exporter="dynamo", external_data_threshold=threshold)
        E._run_exporter(torch.nn.Linear(4, 4), spec, (), 23, tmp_path / "m.onnx", cfg)
    assert saved == [{"external_data": True}, {"external_data": None}]


# ---------------------------------------------------------------------- ONNX Runtime, fakes

class FakeSession:
    def __init__(self, path, so, providers, actual):
        self.providers, self.actual = providers, actual

    def get_providers(self):
        return self.actual

    def get_outputs(self):
        return [types.SimpleNamespace(name="out")]

    def run(self, _, feeds):
        k = next(iter(feeds))
        return [np.zeros((feeds[k].shape[0], 1), np.float32)]


def _onnx_export_dir(tmp_path: Path) -> Path:
    m = ExportManifest("onnx", "src", "h" * 64, "fp32", SD15)
    for name in ("text_encoder", "unet", "vae_decoder"):
        m.components[name] = {"file": f"{name}/model.onnx"}
    m.save(tmp_path)
    return tmp_path


def test_session_device_comes_from_the_providers_it_actually_got(tmp_path, monkeypatch):
    """A CUDA EP that failed to load (ORT only logs it): asked for by name, one clear error;
    under auto the session computes on the CPU (old code bound GPU pointers to it)."""
    monkeypatch.setattr(cap, "cuda", lambda: cap.Probe("cuda", True, "12", "fake"))
    monkeypatch.setattr(cap, "ort_providers", lambda: ["CUDAExecutionProvider",
                                                       "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    export = _onnx_export_dir(tmp_path)
    cpu_only = lambda p, so, providers: FakeSession(p, so, providers, ["CPUExecutionProvider"])
    with pytest.raises(cap.CapabilityError, match="could not load CUDAExecutionProvider"):
        O.OrtBackend(str(export), provider="cuda", session_factory=cpu_only)
    b = O.OrtBackend(str(export), provider="auto", session_factory=cpu_only)
    assert b.device.type == "cpu" and b.session_devices["unet"].type == "cpu"
    gpu = lambda p, so, providers: FakeSession(p, so, providers, ["CUDAExecutionProvider",
                                                                  "CPUExecutionProvider"])
    b = O.OrtBackend(str(export), provider="cuda", session_factory=gpu, device_id=1)
    assert b.device == torch.device("cuda", 1)


def test_trt_ep_engine_cache_is_built_by_one_process_at_a_time(tmp_path, monkeypatch):
    """Issue 17: every rank wrote the TensorRT EP's engine cache outside any lock. Sessions
    (which build engines) and the warm-up calls (which build lazy ones) now run under the
    cache's file lock: two concurrent backends never interleave, and the TensorRT EP gets
    profiles covering the job."""
    import time
    monkeypatch.setattr(cap, "cuda", lambda: cap.Probe("cuda", True, "12", "fake"))
    monkeypatch.setattr(cap, "ort_providers", lambda: list(O.PROVIDERS.values()))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    export = _onnx_export_dir(tmp_path)
    events, seen = [], []

    class Slow(FakeSession):
        def __init__(self, path, so, providers):
            seen.append(dict(p for p in providers if not isinstance(p, str)))
            events.append(threading.get_ident())
            time.sleep(0.02)
            super().__init__(path, so, providers, ["CPUExecutionProvider"])

        def run(self, _, feeds):
            events.append(threading.get_ident())
            time.sleep(0.02)
            return super().run(_, feeds)

    job = JobShape(2, 512, 512)
    threads = [threading.Thread(target=O.OrtBackend, args=(str(export),),
                                kwargs={"session_factory": Slow, "job": job}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(events) == 12   # 3 sessions + 3 warm-up runs per backend
    assert len({tuple(events[:6]), tuple(events[6:])}) == 2 and len(set(events[:6])) == 1
    trt = seen[0]["TensorrtExecutionProvider"]
    assert trt["trt_profile_max_shapes"] == "input_ids:2x77"     # the text encoder's
    assert trt["trt_engine_cache_path"] == str(export / "trt_cache")


def test_io_binding_orders_ort_after_torch_and_torch_after_ort(monkeypatch):
    """Old code ran ORT without waiting for torch's stream, and returned before ORT's."""
    events = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(
        synchronize=lambda: events.append("torch stream synchronized")))

    class Binding:
        def bind_input(self, *a):
            events.append("bind input")

        def bind_output(self, *a):
            events.append("bind output")

        def synchronize_outputs(self):
            events.append("outputs synchronized")

    class Sess:
        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            events.append("run")

    O.run_bound(Sess(), {"x": torch.zeros(2)}, torch.zeros(2), "out", 0)
    assert events == ["bind input", "bind output", "torch stream synchronized", "run",
                      "outputs synchronized"]


def test_trt_ep_profiles_cover_the_job():
    m = ExportManifest("onnx", "src", "h", "fp32", SD15)
    opts = O.trt_profile_options("unet", m, JobShape(4, 768, 768))
    assert opts["trt_profile_min_shapes"] == "sample:1x4x64x64,encoder_hidden_states:1x77x768"
    assert opts["trt_profile_opt_shapes"] == "sample:8x4x96x96,encoder_hidden_states:8x77x768"
    assert opts["trt_profile_max_shapes"] == "sample:8x4x96x96,encoder_hidden_states:8x77x768"
    assert O.DEFAULT_JOB_BATCH == TensorRTBuildConfig().max_batch   # one default profile


# --------------------------------------------------------------------- TensorRT, fake module

class FakeContext:
    def __init__(self, profile):
        self.profile, self.shapes, self.threads = profile, {}, set()

    def set_input_shape(self, name, shape):
        lo, _, hi = self.profile[name]
        ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if ok:
            self.shapes[name] = shape
        return ok

    def set_tensor_address(self, name, ptr):
        self.threads.add(threading.get_ident())

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def execute_async_v3(self, stream):
        self.threads.add(threading.get_ident())
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self):
        self.profile = {"x": ((1, 4), (2, 4), (4, 4))}
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i):
        return ["x", "y"][i]

    def get_tensor_mode(self, name):
        return "out" if name == "y" else "in"

    def get_tensor_profile_shape(self, name, profile):
        return self.profile[name]

    def get_tensor_dtype(self, name):
        return "f32"

    def create_execution_context(self):
        self.contexts.append(FakeContext(self.profile))
        return self.contexts[-1]


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    engine = FakeEngine()
    trt = types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 0, "__init__": lambda self, *a: None}),
        TensorIOMode=types.SimpleNamespace(OUTPUT="out"), float32="f32", float16="f16")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=0))
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"plan")
    runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: engine)
    from medfake.engine.diffusion.backends.trt_backend import TrtEngine
    return TrtEngine(plan, torch.device("cpu"), runtime_factory=runtime), engine


def test_trt_execution_context_per_stream_thread(fake_trt):
    """--streams N: each thread gets its own context (old code shared one per engine)."""
    trt_engine, engine = fake_trt
    barrier = threading.Barrier(3)

    def call():
        barrier.wait()
        for _ in range(5):
            assert trt_engine({"x": torch.zeros(2, 4)}).shape == (2, 4)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(engine.contexts) == 3
    assert all(len(c.threads) == 1 for c in engine.contexts)


def test_trt_shape_outside_the_profile_is_one_clear_error(fake_trt):
    from medfake.engine.diffusion.backends.trt_backend import EngineShapeError
    trt_engine, _ = fake_trt
    with pytest.raises(EngineShapeError, match=r"input x of shape \(8, 4\) is outside the "
                       r"engine's profile \(1, 4\)\.\.\(4, 4\); rebuild"):
        trt_engine({"x": torch.zeros(8, 4)})


# ------------------------------------------------------------------- engine-cache races

def _slow_build(log: str) -> bytes:
    import time
    with open(log, "a") as f:
        f.write("built\n")
    time.sleep(0.3)
    return b"P" * 100_000


def _build_in_process(path: str, log: str) -> None:
    T.cached_build(Path(path), lambda: _slow_build(log))


def test_engine_cache_builds_once_when_threads_and_processes_race(tmp_path):
    """Old code: a fixed `.plan.tmp` name shared by concurrent builders, no lock: two builds,
    and one could publish the other's half-written file."""
    path, log = tmp_path / "cache" / "unet.plan", tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build_in_process, args=(str(path), str(log))) for _ in range(2)]
    threads = [threading.Thread(target=_build_in_process, args=(str(path), str(log)))
               for _ in range(3)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert log.read_text() == "built\n"
    assert path.read_bytes() == b"P" * 100_000
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []
    a, b = T._unique_tmp(path), T._unique_tmp(path)
    assert a != b and a.parent == path.parent


# ---------------------------------------------------------------------- gpu_acceptance.py

def _acceptance():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_acceptance
    finally:
        sys.path.pop(0)
    return gpu_acceptance


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU report; a GPU runs the paths")
def test_gpu_acceptance_on_cpu_skips_every_path_and_exits_0(tmp_path, capsys):
    ga = _acceptance()
    assert ga.main([str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "gpu_acceptance.json").read_text())
    statuses = {r["path"]: (r["status"], r["detail"]) for r in data["results"]}
    assert len(statuses) == 16
    assert all(s == "skipped" and "no CUDA GPU" in d for s, d in statuses.values())
    assert "| TensorRT fp16, dynamic profile | skipped |" in capsys.readouterr().out
    assert not (tmp_path / "out" / "work").exists()   # nothing built on a CPU


def test_gpu_acceptance_reports_missing_packages_and_failures_without_crashing():
    ga = _acceptance()
    r = ga.run_path("x", lambda: 1 / 0, packages=("no_such_package_medfake",))
    assert (r.status, r.detail) == ("not installed", "missing: no_such_package_medfake")
    r = ga.run_path("x", lambda: 1 / 0)
    assert r.status == "failed" and "ZeroDivisionError" in r.detail
    assert ga.exit_status([r]) == 1


def test_gpu_acceptance_compares_onnx_runtime_cpu_with_the_torch_fp32_reference(tmp_path):
    """The acceptance's sampler check (txt2img vs torch fp32; inpainting, which only adds the
    same comparison, is left out for time) on CPU backends:
    ONNX Runtime CPU passes the fp32 bound; images shifted by 0.1, or NaN, fail it."""
    ga = _acceptance()
    from medfake.engine.diffusion.backends import load_model
    acc = ga.Acceptance(tmp_path, "micro", 32, 2, 2, simplify=False, inpaint=False)

    def ort(size):
        return load_model(str(acc.onnx_export()), "onnx", provider="cpu").sampler(
            acc.sampler_config(size))
    r = ga.run_path("ORT CPU", lambda: acc.sampler_path(ort, "fp32"))
    assert r.status == "ran", r.detail
    assert r.max_diff < 1e-3 and r.images_per_s > 0

    # the FAST rows: CFG truncation + DeepCache through the export's shallow-pass graph,
    # against the torch fp32 reference made with the same options (and not the plain one)
    fast = ga.run_path("ORT CPU fast", lambda: acc.sampler_path(
        lambda size: load_model(str(acc.onnx_export(deep=True)), "onnx", provider="cpu")
        .sampler(acc.sampler_config(size, fast=True)), "fp32", fast=True))
    assert fast.status == "ran", fast.detail
    assert fast.max_diff < 1e-3 and fast.extra["sampler_options"] == ga.FAST
    assert ga.image_diff(acc.reference(), acc.reference(fast=True)) > 1e-3

    ref = acc.reference()
    with pytest.raises(ga.PathFailed, match="over the bound"):
        ga.compare("shifted", ref, ref + 0.1, ga.BOUNDS["fp32"])
    with pytest.raises(ga.PathFailed, match="NaN"):
        ga.image_diff(ref, ref * np.nan)


def test_gpu_acceptance_cli_commands_parse(tmp_path):
    """The training and synthesis paths run medfake's CLI: their flags must exist."""
    ga = _acceptance()
    from medfake.pipelines.cli import build_parser
    p = build_parser()
    p.parse_args(ga.dreambooth_args(tmp_path, tmp_path, tmp_path, "bf16", eight_bit=True))
    p.parse_args(ga.clip_args(tmp_path, tmp_path))
    p.parse_args(ga.synth_args(tmp_path, tmp_path, tmp_path, 20))
