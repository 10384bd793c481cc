"""Streams x threads x batch calibration (engine.diffusion.calibrate) on a fake clock (the
synth job using it on ONNX Runtime: tests/test_export.py::test_cli_export_doctor_and_synth_on_onnx)."""
from __future__ import annotations

import threading

import pytest
from medfake.engine.diffusion import calibrate as cal
from medfake.engine.diffusion.calibrate import (
    Setting,
    calibrate,
    candidates,
    choose,
    predict,
)


class FakeMachine:
    """A UNet whose calls advance a fake clock: a call at ``batch`` on a model of ``threads``
    threads costs ``cost(threads, batch)`` seconds; ``streams`` concurrent calls share the
    clock (one round costs one call, the streams run side by side)."""

    def __init__(self, cost):
        self.cost, self.now, self.calls, self.made = cost, 0.0, 0, []
        self._lock = threading.Lock()

    def timer(self) -> float:
        return self.now

    def make_unet(self, threads: int):
        self.made.append(threads)

        def run(batch: int):
            with self._lock:
                self.calls += 1
                # concurrent calls of one round: each advances the clock by its share
                self.now += self.cost(threads, batch) / self._streams
        return run

    _streams = 1


@pytest.fixture
def machine(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path))
    fake = FakeMachine(lambda t, b: 1.0)

    real_measure = cal.measure_round

    def measure(run, streams, batch, timer):
        fake._streams = streams
        return real_measure(run, streams, batch, timer)
    monkeypatch.setattr(cal, "measure_round", measure)
    return fake


def test_prediction_charges_the_tail_and_never_more_streams_than_batches():
    # 3 shards of 5 at batch 4: 2 batches each = 6 batches; 4 streams -> 2 rounds (tail idle)
    assert predict(Setting(4, 1, 4), 1.0, [5, 5, 5]) == 2.0
    assert predict(Setting(2, 2, 4), 1.0, [5, 5, 5]) == 3.0
    assert all(c.streams <= 1 for c in candidates(2, [1]))          # one image: one stream
    assert {c.streams for c in candidates(4, [8])} == {1, 2, 3, 4}
    assert max(c.streams for c in candidates(4, [8]) if c.batch == 8) == 1
    assert {c.batch for c in candidates(2, [3])} == {1, 2, 3}        # up to the largest shard
    assert all(c.threads * c.streams <= 4 for c in candidates(4, [64]))
    # a one-batch job: one stream of all threads even when two streams are faster per round
    table = {"1x2xb4": 1.0, "2x1xb4": 1.2}
    assert choose(table, [4], 2).setting == Setting(1, 2, 4)
    assert choose(table, [4] * 10, 2).setting == Setting(2, 1, 4)   # long job: 2 streams


def test_small_model_picks_streams_big_model_picks_one_stream(machine):
    # "tiny": a thread barely helps (sync overhead), batch amortises overhead
    machine.cost = lambda t, b: (0.01 + 0.004 * b) / (1.1 if t == 2 else 1.0)
    c = calibrate(machine.make_unet, [64] * 4, 2, "tiny", {"size": 32}, budget_s=1e9,
                  budget_fraction=1.0, timer=machine.timer)
    assert c.setting.streams == 2 and c.setting.threads == 1 and "calibrated" in c.why
    # "sd15": compute-bound, threads scale perfectly, one call's overhead 1 s; 2 images:
    # 2 streams x batch 1 and 1 stream x batch 2 both take 9 s; the tie goes to fewer streams
    machine.cost = lambda t, b: 8.0 * b / t + 1.0
    c = calibrate(machine.make_unet, [2], 2, "sd15", {"size": 512}, budget_s=1e9,
                  budget_fraction=1.0, timer=machine.timer)
    assert c.setting == Setting(1, 2, 2) and c.predicted_s == 9.0


def test_time_is_bounded_and_the_table_is_cached(machine):
    machine.cost = lambda t, b: 10.0 * b      # every call is expensive
    c = calibrate(machine.make_unet, [2], 2, "m", {"size": 64}, budget_s=5.0,
                  timer=machine.timer, steps=2)
    # the first candidate only: warm-up + one timed round, nothing else fits in the budget
    assert machine.calls == 2 and c.setting == Setting(1, 2, 1)
    calls = machine.calls
    again = calibrate(machine.make_unet, [2], 2, "m", {"size": 64}, budget_s=5.0,
                      timer=machine.timer, steps=2)
    assert machine.calls == calls and again.setting == c.setting and "cached" in again.why
    # another size is another measurement
    calibrate(machine.make_unet, [2], 2, "m", {"size": 128}, budget_s=5.0, timer=machine.timer)
    assert machine.calls > calls


def test_fixed_batch_or_streams_are_kept(machine):
    machine.cost = lambda t, b: 0.01 + 0.004 * b
    c = calibrate(machine.make_unet, [64] * 4, 2, "x", {}, budget_s=1e9, budget_fraction=1.0,
                  timer=machine.timer, batch=3)
    assert c.setting.batch == 3
    c = calibrate(machine.make_unet, [64] * 4, 2, "x", {}, budget_s=1e9, budget_fraction=1.0,
                  timer=machine.timer, streams=1)
    assert c.setting.streams == 1 and c.setting.threads == 2


def test_near_ties_go_to_the_larger_batch():
    # 48 images in shards of 16, 2 streams: batch 4 -> 12 batches, 6 rounds; batch 8 -> 3 rounds
    table = {"2x1xb4": 1.00, "2x1xb8": 2.08}      # b8 predicted 6.24 s vs 6.00 s: within 5%
    c = choose(table, [16] * 3, 2)
    assert c.setting == Setting(2, 1, 8) and "2x1xb4" in c.why   # the runner-up is still named
    table = {"2x1xb4": 1.00, "2x1xb8": 2.20}      # 6.6 s: 10% slower, a real difference
    assert choose(table, [16] * 3, 2).setting == Setting(2, 1, 4)
