"""bench/gpu_power.py: nvidia-smi's samples parsed, stamped as they arrive and summed over a
stretch of time, and the query chosen by what nvidia-smi answers. CPU only: Python stand-ins
print nvidia-smi's lines."""
import os
import stat
import sys
import time

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
from gpu_power import QUERIES, GpuSampler, parse_sample  # noqa: E402  (bench/ is not a package)


def test_parse_sample_reads_clock_power_and_reason_bits():
    assert parse_sample("1920, 681.25, 0x0000000000000004\n") == (1920.0, 681.25, 4)
    assert parse_sample("1980, 600.10, 0x0000000000000000") == (1980.0, 600.1, 0)
    assert parse_sample("") is None
    assert parse_sample("[N/A], 600.10, 0x0000000000000000") is None
    assert parse_sample("1980, 600.10") is None


def stand_in(lines, go_file):
    """A command that prints `lines` at once, then, once `go_file` exists, one more line, then waits
    to be stopped, as nvidia-smi --loop-ms does."""
    code = (f"import os, sys, time\nfor line in {lines!r}: print(line, flush=True)\n"
            f"while not os.path.exists({str(go_file)!r}): time.sleep(0.01)\n"
            f"print('1000, 100.0, 0x1', flush=True)\ntime.sleep(60)\n")
    return [sys.executable, "-c", code]


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_sampler_sums_up_the_samples_within_a_stretch(tmp_path):
    go = tmp_path / "go"
    lines = ["1980, 600.0, 0x0", "1530, 700.0, 0x4", "1920, 690.0, 0x4", "bad line"]
    with GpuSampler(stand_in(lines, go)) as sampler:
        wait_for(lambda: len(sampler.samples) == 3)
        middle = time.monotonic()
        go.touch()
        wait_for(lambda: len(sampler.samples) == 4)  # the bad line is skipped
    assert sampler.summary(0.0, middle) == "1920 MHz (1530-1980), 690 W, power cap, 3 samples"
    # the idle bit (0x1) is no throttle reason
    assert sampler.summary(middle, time.monotonic()) == "1000 MHz (1000-1000), 100 W, 1 sample"
    assert sampler.summary(time.monotonic() + 1, time.monotonic() + 2) is None  # no sample in that stretch


def test_sampler_sums_up_the_samples_of_several_stretches():
    """One A/B side's rounds alternate with the other's: its summary takes the samples
    within any of its stretches, and none between them."""
    sampler = GpuSampler(["unused"])
    sampler.samples = [(1.0, 1980.0, 600.0, 0x0), (2.0, 1500.0, 700.0, 0x4), (3.0, 1900.0, 650.0, 0x0),
                       (4.0, 1800.0, 690.0, 0x4)]
    assert sampler.summary_over([(0.5, 1.5), (2.5, 3.5)]) == "1940 MHz (1900-1980), 625 W, 2 samples"
    assert sampler.summary_over([(1.5, 2.5), (3.5, 4.5)]) == "1650 MHz (1500-1800), 695 W, power cap, 2 samples"
    assert sampler.summary_over([(1.0, 4.0)]) == sampler.summary(1.0, 4.0)
    assert sampler.summary_over([]) is None


def test_sampler_stops_its_command_and_reader_on_exit(tmp_path):
    sampler = GpuSampler(stand_in([], tmp_path / "never"))
    with sampler:
        pass
    assert sampler._process.poll() is not None
    assert not sampler._reader.is_alive()
    assert sampler._process.stdout.closed


def test_a_sampler_whose_command_is_missing_samples_nothing():
    with GpuSampler(["no-such-command-for-fibsparse"]) as sampler:
        pass
    assert sampler.summary(0.0, time.monotonic()) is None


def fake_nvidia_smi(directory, answers):
    """An `nvidia-smi` on PATH that prints `answers[query]` for --query-gpu=query and fails for
    any other query."""
    script = directory / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\nanswers = {answers!r}\n"
                      "query = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--query-gpu='))\n"
                      "if query not in answers: sys.exit(2)\nprint(answers[query])\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("answered", [0, 1])
def test_the_query_is_the_first_that_nvidia_smi_answers(tmp_path, monkeypatch, answered):
    fake_nvidia_smi(tmp_path, {QUERIES[answered]: "1980, 83.4, 0x0000000000000001"})
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler, how = GpuSampler.for_uuid("1234", interval_ms=50)
    assert sampler.command[1] == f"--query-gpu={QUERIES[answered]}"
    assert "--id=GPU-1234" in sampler.command and sampler.command[-1] == "--loop-ms=50"
    assert how == f"nvidia-smi {QUERIES[answered]} every 50 ms"


def test_no_sampler_where_nvidia_smi_answers_no_query(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, {})
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler, how = GpuSampler.for_uuid("1234")
    assert sampler is None and how.startswith("off: nvidia-smi reads none of")
