"""The GPU's SM clock, power draw and throttle reasons, sampled by nvidia-smi
while a benchmark runs, and summed up over any stretch of it.

A kernel that draws the card's power limit is clocked down the longer it
runs, so two methods timed one after the other may not run at the same clock:
on an H200 (700 W) our GQA forward+backward at 64k held the cap, its SM clock
falling as low as 1530 MHz and its step from 6.6 to 7.3 ms over two seconds,
while FA4's sliding window drew 600 W at 1980 MHz on the same card. A
benchmark that prints each round's clock and power beside its time shows which
of its times met a throttled GPU.

    sampler, how = GpuSampler.for_current_device()   # None, and why, where it cannot sample
    with sampler:
        start = time.monotonic(); run(); end = time.monotonic()
    print(sampler.summary(start, end))   # "1920 MHz (1530-1980), 681 W, power cap, 6 samples"

Power is the instantaneous reading where nvidia-smi has one
(power.draw.instant); the older power.draw is an average over the last second,
which trails a short round's load.
"""
from __future__ import annotations

import statistics
import subprocess
import threading
import time

# The clocks_event_reasons bits that slow the clock for power or heat (nvml's
# nvmlClocksEventReason*); an idle GPU's own low clock (0x1) is not among them.
THROTTLE_REASONS = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)",
                    0x40: "thermal (hardware)", 0x80: "power brake"}
# Fields in the order parse_sample reads them: the current names, then those of older drivers.
QUERIES = ("clocks.sm,power.draw.instant,clocks_event_reasons.active",
           "clocks.sm,power.draw,clocks_throttle_reasons.active")


class GpuSampler:
    """Reads `command`'s lines (nvidia-smi's "MHz, W, reasons" every interval)
    on a thread, stamping each with time.monotonic() as it arrives."""

    def __init__(self, command: list[str]):
        self.command = command
        self.samples: list[tuple[float, float, float, int]] = []  # (time, MHz, W, reason bits)
        self._process = None
        self._reader = None

    @classmethod
    def for_current_device(cls, interval_ms: int = 50) -> tuple[GpuSampler | None, str]:
        """A sampler of the current CUDA device (current_device_uuid), and what it samples; or None,
        and why not."""
        uuid = current_device_uuid()
        if uuid is None:
            return None, "off: this torch gives the GPU no UUID"
        return cls.for_uuid(uuid, interval_ms)

    @classmethod
    def for_uuid(cls, uuid: str, interval_ms: int = 50) -> tuple[GpuSampler | None, str]:
        """for_current_device's sampler of the GPU with this UUID: the first of QUERIES that
        nvidia-smi answers."""
        for query in QUERIES:
            command = ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", f"--id=GPU-{uuid}"]
            try:
                once = subprocess.run(command, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.SubprocessError) as error:
                return None, f"off: nvidia-smi did not run ({error})"
            if once.returncode == 0 and parse_sample(once.stdout) is not None:
                return cls(command + [f"--loop-ms={interval_ms}"]), f"nvidia-smi {query} every {interval_ms} ms"
        return None, "off: nvidia-smi reads none of " + " or ".join(QUERIES)

    def __enter__(self) -> GpuSampler:
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True)
        except OSError:  # gone since for_current_device: the rounds print "-"
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._reader.join(timeout=5)
        self._process.stdout.close()

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = parse_sample(line)
            if sample is not None:
                self.samples.append((time.monotonic(), *sample))

    def summary(self, start: float, end: float) -> str | None:
        """The samples taken between start and end (time.monotonic()): the SM clock's median and
        range, the median power, the throttle reasons seen and how many samples; None if none."""
        return self.summary_over([(start, end)])

    def summary_over(self, stretches: list[tuple[float, float]]) -> str | None:
        """summary() of the samples taken within any of the (start, end) stretches: one side's
        rounds of an A/B, say, which alternate with the other side's."""
        window = [s for s in list(self.samples) if any(start <= s[0] <= end for start, end in stretches)]
        if not window:
            return None
        mhz = [s[1] for s in window]
        watts = statistics.median(s[2] for s in window)
        bits = 0
        for s in window:
            bits |= s[3]
        reasons = [name for bit, name in THROTTLE_REASONS.items() if bits & bit]
        parts = [f"{statistics.median(mhz):.0f} MHz ({min(mhz):.0f}-{max(mhz):.0f})", f"{watts:.0f} W", *reasons,
                 f"{len(window)} sample{'s' if len(window) > 1 else ''}"]
        return ", ".join(parts)


def current_device_uuid() -> str | None:
    """The current CUDA device's UUID, by which nvidia-smi is told which GPU to read (its own
    numbering ignores CUDA_VISIBLE_DEVICES); None where this torch gives none."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    return None if uuid is None else str(uuid)


def gpu_state() -> str | None:
    """The SM clock (MHz), temperature (C) and power (W) now, from nvidia-smi where there is one:
    whether a benchmark's times met a throttled GPU."""
    uuid = current_device_uuid()
    if uuid is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,temperature.gpu,power.draw",
                                 "--format=csv,noheader", f"--id=GPU-{uuid}"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


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
