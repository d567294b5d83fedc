"""bench/bench_sweep.py's timing in rounds (the fair comparison's): the order of the
methods, which round each column keeps, and its --rounds option (bench_fractional.py's
too). CPU only: the timing itself is replaced, so no GPU is needed."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import bench_sweep  # noqa: E402  (bench/ is not a package)


def test_rounds_alternate_the_order_and_keep_each_columns_fastest(monkeypatch):
    calls, times = [], iter([5.0, 1.0, 2.0, 7.0, 3.0, 4.0])

    def fake_time_method(name, attend, q, k, v, grad, runs):
        calls.append(name)
        fwd = next(times)
        return {f"{name}_fwd_ms": fwd, f"{name}_fwdbwd_ms": 10 * fwd, f"{name}_peak_mb": fwd,
                f"{name}_fwdbwd_graph_ms": None}

    monkeypatch.setattr(bench_sweep, "time_method", fake_time_method)
    row = bench_sweep.time_in_rounds({"ours": None, "peer": None}, None, None, None, None, runs=10, rounds=3)
    assert calls == ["ours", "peer", "peer", "ours", "ours", "peer"]
    # ours took 5, 7, 3 (rounds 1..3), peer 1, 2, 4
    assert row["ours_fwd_ms"] == 3.0 and row["ours_fwd_ms_rounds"] == [5.0, 7.0, 3.0]
    assert row["peer_fwdbwd_ms"] == 10.0 and row["peer_fwdbwd_ms_rounds"] == [10.0, 20.0, 40.0]
    assert row["ours_peak_mb"] == 7.0 and "ours_peak_mb_rounds" not in row  # memory: the largest round
    assert row["peer_fwdbwd_graph_ms"] is None  # no round measured it


@pytest.mark.parametrize("script", ["bench_sweep.py", "bench_fractional.py"])
@pytest.mark.parametrize("rounds", ["0", "-2"])
def test_rounds_below_one_are_refused(script, rounds):
    """Both benchmarks that time in rounds refuse fewer than one, before any GPU work."""
    result = subprocess.run([sys.executable, os.path.join(BENCH, script), "--rounds", rounds],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"--rounds must be at least 1, got {rounds}" in result.stderr


def test_rounds_record_the_gpu_state_while_each_round_ran(monkeypatch):
    """With a sampler, each method's rounds carry the GPU's state over that round's own stretch of
    time, in the order the rounds ran, and the rounds line prints them."""
    clock = iter(range(100))
    monkeypatch.setattr(bench_sweep, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))

    class FakeSampler:
        def summary(self, start, end):  # no sample in the peer's first round
            return None if start == 2 else f"{start:.0f}-{end:.0f}"

    def fake_time_method(name, attend, q, k, v, grad, runs):
        return {f"{name}_fwd_ms": 1.0, f"{name}_fwdbwd_ms": 2.0, f"{name}_peak_mb": 1.0,
                f"{name}_fwdbwd_graph_ms": None}

    monkeypatch.setattr(bench_sweep, "time_method", fake_time_method)
    row = bench_sweep.time_in_rounds({"ours": None, "peer": None}, None, None, None, None, runs=10, rounds=2,
                                     sampler=FakeSampler())
    # round 1: ours [0, 1], peer [2, 3]; round 2 (reversed): peer [4, 5], ours [6, 7]
    assert row["ours_gpu_rounds"] == ["0-1", "6-7"]
    assert row["peer_gpu_rounds"] == [None, "4-5"]
    row.update(gpu_before="b", gpu_after="a")
    line = bench_sweep.rounds_line(row)
    assert line.splitlines()[1].endswith("ours 0-1 | 6-7; peer - | 4-5")
    del row["ours_gpu_rounds"], row["peer_gpu_rounds"]  # without a sampler: one line, as before
    assert "\n" not in bench_sweep.rounds_line(row)
