"""What fractional positions (a learned alpha) cost against integer offsets, on
one build: forward and forward+backward of the full pattern (bf16, window 128,
the `fixed` schedule's Fibonacci offsets up to the sequence length), with the
same offsets as int32 and as float positions x 0.97 that require grad, the
fractional backward on both of its routes: with stored dS where the build
takes it (head_dim 64 and 128) and on the general passes (FIBSPARSE_STORED_DSCORES=0).

Each configuration runs --rounds rounds, rotating the order of its columns
from round to round, and keeps each column's fastest round (the log prints
every round): single rounds come out slower now and then. Times are medians of
back-to-back calls between CUDA events (bench/timing.py). Both ratios divide by
the integer offsets on their default route (stored dS where it applies).

    python bench/bench_fractional.py            # four configurations, ~20 s on an H200
    python bench/bench_fractional.py --kernels  # then each kernel's time per call at 64k
"""
import argparse
import os

import torch

from fibsparse_ext import fibsparse_attn, make_schedule
from run_commit import measured_commit
from timing import median_ms

CONFIGS = ((16384, 8, 8, 64), (65536, 8, 8, 64), (16384, 32, 8, 128), (65536, 32, 8, 128))
COLUMNS = ("integer", "frac_stored", "frac_general")


def inputs(seqlen, heads, heads_kv, head_dim):
    torch.manual_seed(0)
    q = torch.randn(1, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, seqlen, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, seqlen, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    schedule = make_schedule("fixed", num_layers=1, window=128, max_distance=seqlen)
    offsets = torch.tensor(schedule.offsets(0), dtype=torch.int32, device="cuda")
    positions = (offsets.float() * 0.97).requires_grad_(True)
    return q, k, v, torch.randn_like(q), offsets, positions


USERS_SWITCH = os.environ.get("FIBSPARSE_STORED_DSCORES")


def use_route(column):
    """The backward route: the switch is read at each call. The general
    passes' column sets it to 0, the others take the default route."""
    if column == "frac_general":
        os.environ["FIBSPARSE_STORED_DSCORES"] = "0"
    else:
        os.environ.pop("FIBSPARSE_STORED_DSCORES", None)


def restore_users_switch():
    if USERS_SWITCH is None:
        os.environ.pop("FIBSPARSE_STORED_DSCORES", None)
    else:
        os.environ["FIBSPARSE_STORED_DSCORES"] = USERS_SWITCH


def calls(column, q, k, v, grad, offsets, positions):
    if column == "integer":
        where, wrt = offsets, (q, k, v)
    else:
        where, wrt = positions, (q, k, v, positions)
    return (lambda: fibsparse_attn(q, k, v, 128, where),
            lambda: torch.autograd.grad(fibsparse_attn(q, k, v, 128, where), wrt, grad))


def time_in_rounds(time_column, rounds):
    """Each column's (forward, forward+backward) times over `rounds` rounds,
    the columns' order rotated one place each round, each timed on its route."""
    times = {c: [] for c in COLUMNS}
    for r in range(rounds):
        shift = r % len(COLUMNS)
        for column in COLUMNS[shift:] + COLUMNS[:shift]:
            use_route(column)
            times[column].append(time_column(column))
    return times


def compare(rounds):
    for seqlen, heads, heads_kv, head_dim in CONFIGS:
        tensors = inputs(seqlen, heads, heads_kv, head_dim)

        def time_column(column):
            forward, forward_backward = calls(column, *tensors)
            return median_ms(forward, warmup=10, runs=50), median_ms(forward_backward, warmup=10, runs=50)

        times = time_in_rounds(time_column, rounds)
        best_fwd = {c: min(t[0] for t in times[c]) for c in COLUMNS}
        best = {c: min(t[1] for t in times[c]) for c in COLUMNS}
        print(f"L={seqlen} H={heads}/{heads_kv} d={head_dim} K={len(tensors[4])}", flush=True)
        for column in COLUMNS:
            print(f"  {column:13s} fwd {' '.join(f'{t[0]:.3f}' for t in times[column])}"
                  f"  f+b {' '.join(f'{t[1]:.3f}' for t in times[column])}", flush=True)
        print(f"  fractional / integer: fwd {best_fwd['frac_stored'] / best_fwd['integer']:.3f}x,"
              f" f+b {best['frac_stored'] / best['integer']:.3f}x (the build's route),"
              f" {best['frac_general'] / best['integer']:.3f}x (general passes)", flush=True)
        del tensors, time_column  # the closure holds this configuration's tensors
        torch.cuda.empty_cache()


def kernel_times():
    from torch.profiler import ProfilerActivity, profile
    for seqlen, heads, heads_kv, head_dim in CONFIGS[1::2]:
        tensors = inputs(seqlen, heads, heads_kv, head_dim)
        for column in COLUMNS:
            use_route(column)
            _, forward_backward = calls(column, *tensors)
            for _ in range(3):
                forward_backward()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    forward_backward()
                torch.cuda.synchronize()
            print(f"L={seqlen} H={heads}/{heads_kv} d={head_dim} {column}: per call (us)", flush=True)
            for event in prof.key_averages():
                if "fibsparse" in event.key:
                    print(f"  {event.device_time_total / 5:10.1f}  {event.key[:150]}", flush=True)
            del forward_backward
        del tensors
        torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration, order rotated (default 3)")
    parser.add_argument("--kernels", action="store_true", help="then each kernel's time per call at 64k")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_fractional: needs a CUDA device")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, commit {measured_commit()}", flush=True)
    try:
        compare(args.rounds)
        if args.kernels:
            kernel_times()
    finally:
        restore_users_switch()


if __name__ == "__main__":
    main()
