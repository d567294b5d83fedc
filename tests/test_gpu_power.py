"""bench/gpu_power.py: nvidia-smi's samples parsed, stamped as they arrive and summed over a
stretch of time. CPU only: a Python stand-in prints nvidia-smi's lines."""
import os
import sys
import time

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
from gpu_power import GpuSampler, parse_sample  # noqa: E402  (bench/ is not a package)


def test_parse_sample_reads_clock_power_and_reason_bits():
    assert parse_sample("1920, 681.25, 0x0000000000000004\n") == (1920.0, 681.25, 4)
    assert parse_sample("1980, 600.10, 0x0000000000000000") == (1980.0, 600.1, 0)
    assert parse_sample("") is None
    assert parse_sample("[N/A], 600.10, 0x0000000000000000") is None
    assert parse_sample("1980, 600.10") is None


def stand_in(lines, pause=1.0):
    """A command that prints `lines` at once, then after `pause` seconds one more, then waits to be
    stopped, as nvidia-smi --loop-ms does."""
    code = (f"import sys, time\nfor line in {lines!r}: print(line, flush=True)\n"
            f"time.sleep({pause})\nprint('1000, 100.0, 0x0', flush=True)\ntime.sleep(60)\n")
    return [sys.executable, "-c", code]


def test_sampler_sums_up_the_samples_within_a_stretch():
    with GpuSampler(stand_in(["1980, 600.0, 0x0", "1530, 700.0, 0x4", "1920, 690.0, 0x4", "bad line"])) as sampler:
        deadline = time.monotonic() + 30
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        middle = time.monotonic()
        while len(sampler.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(sampler.samples) == 4  # the bad line is skipped
    first_three = sampler.summary(0.0, middle)
    assert first_three == "1920 MHz (1530-1980), 690 W, power cap"
    assert sampler.summary(middle, time.monotonic()) == "1000 MHz (1000-1000), 100 W"  # no reason bit set
    assert sampler.summary(time.monotonic() + 1, time.monotonic() + 2) is None  # no sample in that stretch


def test_sampler_stops_its_command_on_exit():
    sampler = GpuSampler(stand_in([]))
    with sampler:
        pass
    assert sampler._process.poll() is not None
