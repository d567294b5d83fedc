"""The GPU's SM clock, power draw and throttle reasons, sampled by nvidia-smi
while a benchmark runs, and summed up over any stretch of it.

A kernel that draws the card's power limit is clocked down the longer it
runs, so two methods timed one after the other may not run at the same clock:
on an H200 (700 W) our GQA forward+backward at 64k holds the cap, its SM clock
falling from 1980 MHz to as low as 1530 and its step from 6.6 to 7.3 ms over
two seconds, while FA4's sliding window draws 600 W at 1980 MHz. A benchmark
that prints each round's clock and power beside its time shows which of its
ratios met a throttled GPU.

    with GpuSampler.for_current_device() as sampler:
        start = time.monotonic(); run(); end = time.monotonic()
    print(sampler.summary(start, end))   # "1920 MHz (1530-1980), 681 W, power cap"
"""
from __future__ import annotations

import statistics
import subprocess
import threading
import time

# nvidia-smi's clocks_event_reasons bits that slow the clock for power or heat
# (nvml's nvmlClocksEventReason*): an idle GPU's own low clock is not among them.
THROTTLE_REASONS = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)",
                    0x40: "thermal (hardware)", 0x80: "power brake"}
QUERY = "clocks.sm,power.draw,clocks_throttle_reasons.active"


class GpuSampler:
    """Reads `command`'s lines (nvidia-smi's "MHz, W, reasons" every interval)
    on a thread, stamping each with time.monotonic() as it arrives."""

    def __init__(self, command: list[str]):
        self.command = command
        self.samples: list[tuple[float, float, float, int]] = []  # (time, MHz, W, reason bits)
        self._process = None
        self._reader = None

    @classmethod
    def for_current_device(cls, interval_ms: int = 50) -> GpuSampler | None:
        """A sampler of the current CUDA device, named by its UUID (nvidia-smi numbers GPUs without
        regard to CUDA_VISIBLE_DEVICES); None where there is no nvidia-smi or no UUID."""
        import torch

        uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
        if uuid is None:
            return None
        command = ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", f"--id=GPU-{uuid}",
                   f"--loop-ms={interval_ms}"]
        try:
            subprocess.run(command[:-1], capture_output=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return cls(command)

    def __enter__(self) -> GpuSampler:
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = parse_sample(line)
            if sample is not None:
                self.samples.append((time.monotonic(), *sample))

    def summary(self, start: float, end: float) -> str | None:
        """The samples taken between start and end (time.monotonic()): the SM clock's median and
        range, the median power, and the throttle reasons seen; None if there were none."""
        window = [s for s in list(self.samples) if start <= s[0] <= end]
        if not window:
            return None
        mhz = [s[1] for s in window]
        watts = statistics.median(s[2] for s in window)
        bits = 0
        for s in window:
            bits |= s[3]
        reasons = [name for bit, name in THROTTLE_REASONS.items() if bits & bit]
        text = f"{statistics.median(mhz):.0f} MHz ({min(mhz):.0f}-{max(mhz):.0f}), {watts:.0f} W"
        return f"{text}, {' + '.join(reasons)}" if reasons else text


def parse_sample(line: str) -> tuple[float, float, int] | None:
    """One line of nvidia-smi's "MHz, W, 0x..reasons" (csv, no header, no units): None if it is
    not one (a blank line, "[N/A]" where the card does not report a value)."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 3:
        return None
    try:
        return float(fields[0]), float(fields[1]), int(fields[2], 16)
    except ValueError:
        return None
