"""Reduced precision on the CPU: torch bf16 autocast, the image-difference gate, and the
measured choice behind ``--backend auto``.

This CPU may lack native bf16; torch's bf16 autocast still runs there (emulated), so the tests
that check bf16 numerics pretend the CPU has it (``cap.cpu_bf16`` patched)."""
from __future__ import annotations

import json

import pytest
from medfake.engine.core import capabilities as cap
from medfake.engine.diffusion.precision_check import DEFAULT_BOUND, compare_images
from medfake.engine.diffusion.sampler import SamplerConfig
from medfake.engine.diffusion.sd_model import init_model
from medfake.pipelines.models import load_model

CFG = SamplerConfig("dpm++", 4, 4.0, "", 32, 32)
PROMPTS, SEEDS = ["a CT image of a cyst", "a CT image of a hemangioma"], [3, 4]
NATIVE = cap.Probe("cpu_bf16", True, "", "native bf16: avx512_bf16 (patched by the test)")
NONE = cap.Probe("cpu_bf16", False, "", "no native bf16 on this CPU (patched by the test)")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the micro model is too small to gain from more, and several threads
    spin-wait for each other on a busy machine (100x slower here under load)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return init_model("micro", tmp_path_factory.mktemp("micro") / "model", seed=0)


def test_torch_bf16_autocast_is_close_to_fp32(micro, monkeypatch):
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    fp32 = load_model(str(micro), "torch")
    bf16 = load_model(str(micro), "torch", precision="bf16")
    assert fp32.backend.precision == "fp32" and fp32.details["precision"] == "fp32"
    assert bf16.backend.precision == "bf16" and bf16.details["precision"] == "bf16"
    ref = fp32.sampler(CFG).generate(PROMPTS, SEEDS, output="float")
    got = bf16.sampler(CFG).generate(PROMPTS, SEEDS, output="float")
    diff = compare_images(ref, got)
    # bf16 really ran (a silent fp32 run would be identical), and within the stated bound
    assert 0 < diff.mean_abs < 0.005 and diff.max_abs < 0.05, diff
    assert diff.passes(DEFAULT_BOUND)
    # the VAE decode stays fp32: the same latents decode identically on both
    import torch
    lat = torch.randn(1, 4, 8, 8)
    assert torch.equal(fp32.backend.vae_decode(lat), bf16.backend.vae_decode(lat))


def test_torch_bf16_refused_without_native_bf16(micro, monkeypatch):
    from medfake.engine.diffusion.backends.torch_backend import resolve_precision
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NONE)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(cap.CapabilityError, match="native bf16.*--precision fp32"):
        load_model(str(micro), "torch", precision="bf16")
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    assert resolve_precision("bf16", "cpu") == "bf16"
    # torch is the reference: auto stays fp32 even with native bf16 (bf16 only when asked,
    # or when --backend auto's gated measurement picks torch/bf16)
    assert resolve_precision("auto", "cpu") == resolve_precision("auto", "cuda:0") == "fp32"


def test_cpu_bf16_probe_reads_the_cpu_flags(monkeypatch):
    cap.cpu_bf16.cache_clear()
    try:
        monkeypatch.setattr(cap, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
        assert cap.cpu_bf16().available and "amx_bf16" in cap.cpu_bf16().detail
        cap.cpu_bf16.cache_clear()
        monkeypatch.setattr(cap, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
        assert not cap.cpu_bf16().available
    finally:
        cap.cpu_bf16.cache_clear()


def test_synth_torch_bf16_records_precision(micro, small_world, tmp_path, monkeypatch):
    """Every sample of a bf16 torch job says bf16, and bf16 is part of the job's identity (a
    resume at fp32 is a different job); an fp32 torch plan keeps its old identity."""
    from medfake.engine.data.reader import load_split
    from medfake.pipelines.synth import SynthConfig, run_job
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    _, hospital = small_world
    out = tmp_path / "bf16"
    res = run_job(SynthConfig(str(micro), str(hospital), str(out), per_class=1, steps=2,
                              samples_per_shard=4, batch_size=2, backend="torch",
                              precision="bf16", threads=1))
    assert res.complete
    assert {m["precision"] for m in load_split(out, "train").metas} == {"bf16"}
    assert json.loads((out / "synth_plan.json").read_text())["precision"] == "bf16"
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NONE)
    with pytest.raises(cap.CapabilityError, match="native bf16"):
        run_job(SynthConfig(str(micro), str(hospital), str(tmp_path / "refused"), per_class=1,
                            steps=2, backend="torch", precision="bf16"))
    assert not (tmp_path / "refused" / "synth_plan.json").exists()   # refused before writing


# ------------------------------------------------------------ --backend auto on a CPU

COST = {"torch/fp32": 3.0, "torch/bf16": 1.0, "onnx/fp32": 2.0, "openvino/fp32": 2.5}


def fake_timer(costs):
    """A timer that runs the call (so the real measuring loop runs) and reports ``costs``."""
    seen = []

    def timer(cand, fn):
        fn()
        seen.append(cand.label)
        return costs[cand.label]
    timer.seen = seen
    return timer


def test_auto_picks_the_fastest_that_passes_the_gate_and_caches_it(micro, monkeypatch, caplog):
    from medfake.engine.diffusion.backends import choose_auto, select
    from medfake.engine.diffusion.backends.components import JobShape
    from medfake.pipelines.models import prepare_export
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    monkeypatch.setattr(cap, "openvino_bf16", lambda: False)
    job = JobShape(1, 32, 32, True)
    timer = fake_timer(COST)
    labels = {c.label for c in select.candidates()[0]}
    assert "torch/bf16" in labels and "openvino/bf16" not in labels
    with caplog.at_level("INFO"):
        choice = choose_auto(str(micro), job, prepare=prepare_export, threads=1, timer=timer)
    assert (choice.backend, choice.precision) == ("torch", "bf16")
    assert "torch/bf16" in caplog.text and "fastest" in choice.why and "openvino/bf16" in \
        choice.why   # says what it left out and why
    rows = {r.candidate.label: r for r in choice.rows}
    assert set(rows) == labels and all(r.passed for r in rows.values())
    assert rows["torch/fp32"].diff["max_abs"] == 0   # the reference
    assert 0 < rows["torch/bf16"].diff["mean_abs"] < 0.005
    assert sorted(timer.seen) == sorted(lab for lab in labels for _ in range(select.CALLS))
    assert all(r.peak_bytes is not None for r in rows.values())
    # the second choice reads the cache: nothing is loaded or timed
    again = choose_auto(str(micro), job, prepare=prepare_export, threads=1,
                        timer=fake_timer({}))
    assert (again.backend, again.precision) == ("torch", "bf16")
    assert all(r.cached for r in again.rows)
    # a machine with less memory free than a candidate's measured peak passes it over
    with pytest.raises(cap.CapabilityError, match="available"):
        choose_auto(str(micro), job, prepare=prepare_export, threads=1, available=1)
    # without native bf16 there is no bf16 candidate, and asking for bf16 is one clear error
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NONE)
    assert all(c.precision == "fp32" for c in select.candidates()[0])
    no_bf16 = choose_auto(str(micro), job, prepare=prepare_export, threads=1)
    assert (no_bf16.backend, no_bf16.precision) == ("onnx", "fp32")   # cached costs
    with pytest.raises(cap.CapabilityError, match="native"):
        select.candidates("bf16")


def test_auto_passes_over_a_candidate_that_fails_the_gate(micro, monkeypatch):
    from medfake.engine.core.measured import save_measured
    from medfake.engine.diffusion import precision_check
    from medfake.engine.diffusion.backends import select
    from medfake.engine.diffusion.backends.components import JobShape
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    monkeypatch.setattr(select, "candidates", lambda precision="auto": (
        [select.Candidate("torch", "fp32"), select.Candidate("torch", "bf16")], []))
    # a bound no reduced-precision path can meet: bf16 is faster but fails it
    monkeypatch.setattr(precision_check, "DEFAULT_BOUND", precision_check.ImageDiffBound(0, 0))
    choice = select.choose(str(micro), "micro-test", JobShape(1, 32, 32, True), threads=1,
                           calls=1, timer=fake_timer(COST))
    assert (choice.backend, choice.precision) == ("torch", "fp32")
    assert [r.passed for r in choice.rows] == [True, False]
    assert "FAIL" in choice.why
    # a candidate new to the cache is gated against a reference sampled for it (the cached
    # fp32 row is not re-measured)
    monkeypatch.setattr(precision_check, "DEFAULT_BOUND", precision_check.ImageDiffBound())
    monkeypatch.setattr(select, "GATE_SEEDS", [5, 6])   # a new cache key for both rows
    save_measured(select.KIND, "micro-test", select._key(
        select.Candidate("torch", "fp32"), JobShape(1, 32, 32, True), 1, 1),
        {"seconds_per_call": 3.0, "peak_bytes": 1, "passed": True, "excluded": None,
         "diff": {"mean_abs": 0.0, "p99_abs": 0.0, "max_abs": 0.0}})
    timer = fake_timer(COST)
    choice = select.choose(str(micro), "micro-test", JobShape(1, 32, 32, True), threads=1,
                           calls=1, timer=timer)
    assert timer.seen == ["torch/bf16"] and choice.rows[0].cached
    assert (choice.backend, choice.precision) == ("torch", "bf16") and choice.rows[1].passed


def test_auto_times_stream_runtimes_as_their_jobs_run_them(micro, monkeypatch):
    """With 2 threads, ONNX Runtime is also timed as 2 concurrent single-thread streams (how a
    calibrated job runs it); the better of its two times counts, so a runtime whose lead is its
    streams is not misjudged by a one-stream measurement. torch has no stream rounds."""
    from medfake.engine.diffusion.backends import select
    from medfake.engine.diffusion.backends.components import JobShape
    from medfake.pipelines.models import prepare_export
    monkeypatch.setattr(select, "candidates", lambda precision="auto": (
        [select.Candidate("torch", "fp32"), select.Candidate("onnx", "fp32")], []))
    seen = []

    def timer(cand, fn):
        fn()
        streams = getattr(fn, "streams", 1)
        seen.append((cand.label, streams))
        # one stream: torch 1.0 s, onnx 1.5 s per call; a round of 2 onnx streams: 1.6 s
        return {("torch/fp32", 1): 1.0, ("onnx/fp32", 1): 1.5, ("onnx/fp32", 2): 1.6}[
            (cand.label, streams)]
    job = JobShape(2, 32, 32, True)
    choice = select.choose(str(micro), "micro-streams", job, threads=2, calls=1, timer=timer,
                           prepare=prepare_export)
    assert sorted(seen) == [("onnx/fp32", 1), ("onnx/fp32", 2), ("torch/fp32", 1)]
    rows = {r.candidate.label: r.seconds_per_call for r in choice.rows}
    assert rows == {"torch/fp32": 1.0, "onnx/fp32": 0.8}   # 1.6 s per round of 2 calls
    assert (choice.backend, choice.precision) == ("onnx", "fp32")
    assert select._key(select.Candidate("onnx", "fp32"), job, 2, 1)["stream_rounds"] == 2
    assert "stream_rounds" not in select._key(select.Candidate("torch", "fp32"), job, 2, 1)
    # one thread: no stream rounds, the one-stream times decide
    seen.clear()
    one = select.choose(str(micro), "micro-streams", job, threads=1, calls=1, timer=timer,
                        prepare=prepare_export)
    assert sorted(seen) == [("onnx/fp32", 1), ("torch/fp32", 1)]
    assert (one.backend, one.precision) == ("torch", "fp32")


def test_auto_measures_only_jobs_that_pay_for_it():
    from medfake.engine.diffusion.backends import select
    cost = 4 * (select.GATE_STEPS + select.CALLS + 1)
    assert not select.worth_measuring(select.WORTH_FACTOR * cost - 1, 4)
    assert select.worth_measuring(select.WORTH_FACTOR * cost, 4)
    streams = 2 * (select.CALLS + 1)   # two candidates that also time stream rounds
    assert not select.worth_measuring(select.WORTH_FACTOR * cost, 4, stream_candidates=2)
    assert select.worth_measuring(select.WORTH_FACTOR * (cost + streams), 4,
                                  stream_candidates=2)


# ------------------------------------------------------------ medfake bench precision-gate

def test_precision_gate_prints_a_table_and_exits_1_on_a_failing_candidate(
        micro, small_world, monkeypatch, capsys):
    """One real run (micro model): under an impossible bound bf16 fails and the exit status is
    1; its measured difference is within the stated bound (it would pass that)."""
    from medfake.engine.diffusion import precision_check
    from medfake.pipelines.cli import main
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NATIVE)
    monkeypatch.setattr(cap, "openvino_bf16", lambda: False)
    monkeypatch.setattr(precision_check, "DEFAULT_BOUND", precision_check.ImageDiffBound(0, 0))
    _, hospital = small_world
    with pytest.raises(SystemExit) as e:
        main(["bench", "precision-gate", "--model", str(micro), "--real", str(hospital),
              "--candidates", "torch/bf16", "openvino/bf16", "--seeds", "0", "1",
              "--per-class", "2", "--steps", "2", "--cnn-steps", "5", "--batch-size", "8"])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "| torch/fp32 | pass (reference) | 0.0000 / 0.0000 / 0.0000 |" in out
    assert "| openvino/bf16 | not run: no native bf16 on this CPU |" in out
    row = next(line for line in out.splitlines() if line.startswith("| torch/bf16 |"))
    assert "FAIL (image diff over the bound)" in row
    mean, p99, _ = (float(v) for v in row.split("|")[3].split("/"))
    assert 0 < mean <= DEFAULT_BOUND.mean_abs and p99 <= DEFAULT_BOUND.p99_abs


def test_precision_gate_judges_fd_and_accuracy_against_the_reference_seed_ci():
    from medfake.pipelines.precision_gate import GateReport, GateRow, judge, seed_ci
    same = {"mean_abs": 0.001, "p99_abs": 0.004, "max_abs": 0.01}
    rows = [GateRow("torch/fp32", "pass", dict(same), [10.0, 11.0, 12.0], [0.6, 0.7, 0.8]),
            GateRow("onnx/fp32", "pass", dict(same), [11.0, 11.2, 10.9], [0.7, 0.71, 0.69]),
            GateRow("torch/bf16", "pass", dict(same), [15.0, 16.0, 15.5], [0.7, 0.7, 0.7]),
            GateRow("openvino/bf16", "pass", dict(same), [11.0, 11.0, 11.0], [0.2, 0.3, 0.2]),
            GateRow("openvino/fp32", "not run: OpenVINO not installed")]
    report = judge(GateReport("m", rows, (0, 0), (0, 0), ""), DEFAULT_BOUND)
    lo, hi = seed_ci([10.0, 11.0, 12.0])
    assert lo < 11 < hi and report.fd_ci == (lo, hi)
    assert [r.status for r in rows] == ["pass", "pass", "FAIL", "FAIL",
                                        "not run: OpenVINO not installed"]
    assert rows[2].why == "FD outside the reference's seed CI"
    assert rows[3].why == "CNN accuracy outside the reference's seed CI"
    assert report.failed


def test_synth_auto_runs_the_cached_choice_and_records_it(micro, small_world, tmp_path,
                                                          monkeypatch):
    """A job on `--backend auto` uses the cached measurement of this model and machine (here
    written by the test: openvino fastest where installed) and its samples say what ran."""
    from medfake.engine.core.measured import save_measured
    from medfake.engine.data.reader import DatasetInfo, load_split
    from medfake.engine.diffusion.backends import select, source_hash
    from medfake.pipelines.synth import SynthConfig, run_job, synth_job_shape
    monkeypatch.setattr(cap, "cpu_bf16", lambda: NONE)
    monkeypatch.setattr(cap, "openvino_bf16", lambda: False)
    _, hospital = small_world
    cfg = SynthConfig(str(micro), str(hospital), str(tmp_path / "auto"), per_class=1, steps=2,
                      batch_size=2, backend="auto", threads=1)
    job = synth_job_shape(cfg, DatasetInfo.load(hospital).image_size)
    fake = {"torch/fp32": 1.0, "onnx/fp32": 2.0, "openvino/fp32": 0.5}
    cands = select.candidates()[0]
    for c in cands:
        save_measured(select.KIND, source_hash(str(micro)), select._key(c, job, 1, select.CALLS),
                      {"seconds_per_call": fake[c.label], "peak_bytes": 1, "passed": True,
                       "diff": {"mean_abs": 0.0, "p99_abs": 0.0, "max_abs": 0.0},
                       "excluded": None})
    best = min(cands, key=lambda c: fake[c.label])
    assert run_job(cfg).complete
    metas = load_split(tmp_path / "auto", "train").metas
    assert {(m["backend"], m["precision"]) for m in metas} == {(best.backend, "fp32")}
