"""bench/bench_fractional.py's rounds: the order of its columns, the backward
route each is timed on, and the user's route switch left as it was (its
--rounds option: test_bench_sweep.py). CPU only: the timing is replaced, so no
GPU is needed."""
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import bench_fractional  # noqa: E402  (bench/ is not a package)

SWITCH = "FIBSPARSE_STORED_DSCORES"


def test_rounds_rotate_the_columns_and_time_each_on_its_route(monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    calls = []

    def fake_time_column(column):
        calls.append((column, os.environ.get(SWITCH)))
        return float(len(calls)), 10.0 * len(calls)

    times = bench_fractional.time_in_rounds(fake_time_column, rounds=4)
    assert [c for c, _ in calls] == ["integer", "frac_stored", "frac_general",
                                     "frac_stored", "frac_general", "integer",
                                     "frac_general", "integer", "frac_stored",
                                     "integer", "frac_stored", "frac_general"]
    # The general passes' column runs with the switch at 0, the others on the default route.
    assert all((switch == "0") == (column == "frac_general") for column, switch in calls)
    assert all(switch in (None, "0") for _, switch in calls)
    # Each column keeps its rounds in order: integer ran 1st, 6th, 8th and 10th.
    assert times["integer"] == [(1.0, 10.0), (6.0, 60.0), (8.0, 80.0), (10.0, 100.0)]


@pytest.mark.parametrize("users_setting", [None, "1", "0"])
def test_the_users_route_switch_is_left_as_it_was(monkeypatch, users_setting):
    """Even when the run fails part-way, after a column set the switch to 0."""
    if users_setting is None:
        monkeypatch.delenv(SWITCH, raising=False)
    else:
        monkeypatch.setenv(SWITCH, users_setting)
    monkeypatch.setattr(bench_fractional, "USERS_SWITCH", users_setting)
    monkeypatch.setattr(bench_fractional.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_fractional.torch.cuda, "get_device_name", lambda: "a fake device")

    def failing_compare(rounds):
        bench_fractional.use_route("frac_general")
        assert os.environ[SWITCH] == "0"
        raise RuntimeError("the run failed")

    monkeypatch.setattr(bench_fractional, "compare", failing_compare)
    with pytest.raises(RuntimeError, match="the run failed"):
        bench_fractional.main(["--rounds", "1"])
    assert os.environ.get(SWITCH) == users_setting
