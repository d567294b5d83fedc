"""An A/B of one environment switch in one build and one process: the kernels
a switch selects (FIBSPARSE_STORED_DSCORES=0, FIBSPARSE_HOPPER=0, or a
temporary one that an experiment adds) against the default ones. For each
configuration (tools/kernel_times.py's) it alternates the two settings over
rounds, and in each round takes the device time of the kernels whose names
contain --kernel, for each --kernel given (torch.profiler, the mean of five
steps), and the forward+backward step (the median of back-to-back calls
between CUDA events); the fastest round of each side and the median of its
rounds are reported, with every round beside them so that the spread shows,
and the gradients of the two sides compared bit for bit. The median is there
because the fastest round alone favours the default side: its first round
comes right after the configuration's setup, when the GPU has idled and runs
at its highest clock, and it is often the fastest of all. It names the timed
kernels of each side where they differ, and says so where they do not: a
misspelt switch, which nothing reads, would otherwise compare the default
with itself. Where nvidia-smi runs, it samples the GPU's SM clock, power and
throttle reasons while each side's forward+backward rounds run
(bench/gpu_power.py) and prints them per side: a side whose rounds met the
power cap was clocked down.

    python tools/ab_switch.py FIBSPARSE_STORED_DSCORES=0 --kernel dkdv --kernel dq
    python tools/ab_switch.py FIBSPARSE_HOPPER=0 --kernel fwd --config dense,65536,32,8,128,integer
"""
import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from kernel_times import CONFIGS, KINDS, LAYOUTS, PROFILED_STEPS, inputs_of  # noqa: E402
from gpu_power import GpuSampler  # noqa: E402
from timing import kernel_times_us, median_ms  # noqa: E402


def parse_switch(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("FIBSPARSE_") or not value:
        raise argparse.ArgumentTypeError(f"the switch must read FIBSPARSE_NAME=VALUE, got '{text}'")
    return name, value


def parse_config(text: str) -> tuple:
    """layout,tokens,heads,kv_heads,head_dim,kind, as in tools/kernel_times.py."""
    parts = text.split(",")
    if len(parts) != 6:
        raise argparse.ArgumentTypeError(f"a configuration has 6 fields (layout,tokens,heads,kv_heads,head_dim,kind), "
                                         f"got {len(parts)} in '{text}'")
    layout, kind = parts[0], parts[5]
    if layout not in LAYOUTS:
        raise argparse.ArgumentTypeError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"kind must be one of {KINDS}, got '{kind}'")
    try:
        tokens, heads, kv_heads, head_dim = (int(x) for x in parts[1:5])
    except ValueError:
        raise argparse.ArgumentTypeError(f"tokens, heads, kv_heads and head_dim must be whole numbers, got '{text}'")
    return layout, tokens, heads, kv_heads, head_dim, kind


class Setting:
    """The switch set (side B) or as the caller's environment had it (side A)."""

    def __init__(self, name: str, value: str):
        self.name, self.value, self.default = name, value, os.environ.get(name)

    def apply(self, switched: bool):
        if switched:
            os.environ[self.name] = self.value
        elif self.default is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.default


def percent(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.1f}%"


def sides(default: list[float], switched: list[float], digits: int) -> str:
    """The two sides' rounds as the fastest of each and the median of each, with default/switched for both."""
    fa, fb = min(default), min(switched)
    ma, mb = median(default), median(switched)
    return (f"fastest: default {fa:.{digits}f}  switched {fb:.{digits}f}  default/switched {percent(fa, fb)};  "
            f"median: default {ma:.{digits}f}  switched {mb:.{digits}f}  default/switched {percent(ma, mb)}   "
            f"rounds {[round(x, digits) for x in default]} / {[round(x, digits) for x in switched]}")


def kernel_line(part: str, default: list[float], switched: list[float], ran: dict) -> str:
    """The report of the kernels named by `part`. A kernel that only one side runs (a pass the
    switch removes or adds) is timed on that side alone; there is nothing to divide by."""
    if ran[False] and ran[True]:
        return f"   '{part}' kernels, us: {sides(default, switched, 1)}\n"
    if not ran[False] and not ran[True]:
        return f"   '{part}' kernels: none ran on either side\n"
    side, times = ("default", default) if ran[False] else ("switched", switched)
    return (f"   '{part}' kernels, us: only the {side} side runs them: fastest {min(times):.1f}  "
            f"median {median(times):.1f}   rounds {[round(x, 1) for x in times]}\n")


def gpu_line(sampler, stretches: dict) -> str:
    """Each side's GPU clock and power over the stretches its step rounds ran ("-" where no
    sample fell in them); empty without a sampler."""
    if sampler is None:
        return ""
    default, switched = (sampler.summary_over(stretches[side]) or "-" for side in (False, True))
    return f"   GPU while the forward+backward rounds ran: default {default} | switched {switched}\n"


def compare(config, setting: Setting, kernel_parts: list[str], rounds: int, sampler=None) -> str:
    attend, q, k, v, grad = inputs_of(*config)

    def step():
        return torch.autograd.grad(attend(q, k, v), (q, k, v), grad)

    kernel_us = {part: {False: [], True: []} for part in kernel_parts}
    step_ms, grads, stretches = {False: [], True: []}, {}, {False: [], True: []}
    names = {False: set(), True: set()}
    for rnd in range(rounds):
        for switched in ((False, True) if rnd % 2 == 0 else (True, False)):
            setting.apply(switched)
            if rnd == 0:
                grads[switched] = step()
            kernels = kernel_times_us(step, PROFILED_STEPS)
            for part in kernel_parts:
                kernel_us[part][switched].append(sum(us for key, us, _ in kernels if part in key))
                names[switched].update(key for key, _, _ in kernels if part in key)
            start = time.monotonic()
            step_ms[switched].append(median_ms(step, warmup=3, runs=30))
            stretches[switched].append((start, time.monotonic()))
    setting.apply(False)
    same = all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))
    layout, tokens, heads, kv_heads, head_dim, kind = config
    kernel_lines = ""
    for part, us in kernel_us.items():
        ran = {side: any(part in key for key in names[side]) for side in (False, True)}
        kernel_lines += kernel_line(part, us[False], us[True], ran)
    return (f"{layout} {tokens} H={heads}/{kv_heads} d={head_dim} {kind}\n"
            f"{kernel_lines}"
            f"   forward+backward, ms: {sides(step_ms[False], step_ms[True], 4)}\n"
            f"{gpu_line(sampler, stretches)}"
            f"   gradients bitwise equal: {same}\n"
            f"   {kernel_names(names[False], names[True])}")


def kernel_names(default: set, switched: set) -> str:
    if default == switched:
        return ("the same timed kernels on both sides (a switch that picks a template flag inside one kernel, "
                "or one that nothing reads)")
    return f"timed kernels: default {sorted(default - switched)}; switched {sorted(switched - default)}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("switch", type=parse_switch, help="FIBSPARSE_NAME=VALUE: side B's setting")
    parser.add_argument("--kernel", required=True, action="append",
                        help="a part of the timed kernels' names (e.g. dkdv); repeatable, each timed on its own")
    parser.add_argument("--config", type=parse_config, action="append",
                        help="layout,tokens,heads,kv_heads,head_dim,kind (repeatable; default: kernel_times.py's)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a side, alternating (default 3)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    setting = Setting(*args.switch)
    sampler, sampling = GpuSampler.for_current_device()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, window 128; "
          f"default against {setting.name}={setting.value}, {args.rounds} rounds a side; GPU sampling: {sampling}",
          flush=True)
    with sampler if sampler is not None else contextlib.nullcontext():
        for config in args.config or CONFIGS:
            print(compare(config, setting, args.kernel, args.rounds, sampler), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
