"""End-to-end decoding speed and memory of generate() (FibSparseLM with random
weights): tokens/s of the decode loop, one new token per sequence per step
(the model step, then greedy sampling), at batch 1/8/32 and contexts 4k..1M,
for the sparse model (`stagger` schedule, ring caches) and the same model with
dense attention (the `dense` schedule and the same weights: static full caches
of the whole context, read by SDPA with the slots not yet written masked, as
a transformers model with a static cache does), each replayed
from a CUDA graph ("graph") and run eagerly ("eager").

The context is not prefilled: the caches are allocated as generate() would
allocate them (rings for the sparse layers, a full cache of context + new
tokens for the dense ones) and their lengths set as if `context` tokens were
there, so a run takes minutes instead of the prefill of every context. The
time of a step does not depend on the cached values. Dense configurations
whose full caches do not fit in free memory are marked "skipped".

Times: warm-up (which includes the graph's capture), then the median of
`--new-tokens` back-to-back steps between CUDA events (bench/timing.py).
"peak MB" is the most memory allocated during the configuration above what
was allocated before it (caches, activations, the graph's pool; not the
weights), "cache MB" the caches alone.

    python bench/bench_generate.py [--quick] [--presets small,paper] [--batches 1,8,32]
                                   [--contexts 4096,32768,131072,1048576] [--new-tokens 32]
    python bench/bench_generate.py --device cpu --presets tiny --contexts 1024 --batches 1 --new-tokens 8
"""
from __future__ import annotations

import argparse
import os
import subprocess

import torch

from fibsparse_ext.lm.generation import DecodeStep, next_token
from fibsparse_ext.lm.models import FibSparseLM, LMConfig
from timing import median_ms

WARMUP_STEPS = DecodeStep.WARMUP_STEPS + 3  # eager warm-up, the capture, then a few replays


def commit() -> str:
    if os.environ.get("FIBSPARSE_COMMIT"):  # set where the checkout's git metadata is not the code's
        return os.environ["FIBSPARSE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cache_bytes(model: FibSparseLM, batch: int, capacity_of_full: int, dtype: torch.dtype) -> int:
    """What model.make_caches would allocate, computed without allocating it."""
    total = 0
    for block in model.blocks:
        attn = block.attn
        capacity = capacity_of_full if attn.window is None else attn.make_cache(1, 1, device="meta").capacity
        total += 2 * batch * capacity * attn.num_kv_heads * attn.head_dim * dtype.itemsize
    return total


def run_config(model, batch, context, new_tokens, graphed, device, dtype):
    """(tok/s, cache MB, peak MB) of decoding after `context` tokens, or a reason it was skipped."""
    steps = WARMUP_STEPS + new_tokens
    needed = cache_bytes(model, batch, context + steps, dtype)
    free = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
            else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    if needed > 0.9 * free:
        return f"skipped ({needed / 2**30:.1f} GiB of cache > free {free / 2**30:.1f} GiB)"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        caches = model.make_caches(batch, context + steps)
        for cache in caches:  # as if `context` tokens had been prefilled
            cache.seqlens.fill_(context)
        step = DecodeStep(model, caches, cuda_graph=graphed)
        token = torch.zeros(batch, dtype=torch.long, device=device)

        def one_token():
            token.copy_(next_token(step(token), 0.0, None, None))

        with torch.no_grad():
            ms = median_ms(one_token, warmup=WARMUP_STEPS, runs=new_tokens, device=device)
        if graphed and step.graph is None:
            return "no graph (see the warning)"
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else float("nan")
        result = (batch / ms * 1e3, needed / 2**20, peak)
        del step, caches
        return result
    except torch.OutOfMemoryError:
        return "out of memory"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--contexts", default="4096,32768,131072,1048576")
    parser.add_argument("--new-tokens", type=int, default=32, help="timed decode steps per configuration")
    parser.add_argument("--modes", default=None, help="graph,eager (CUDA default); eager on the CPU")
    parser.add_argument("--quick", action="store_true",
                        help="small preset, batch 1 and 32, contexts 4k and 128k, 16 timed steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.batches, args.contexts, args.new_tokens = "small", "1,32", "4096,131072", 16
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    modes = (args.modes or ("graph,eager" if device.type == "cuda" else "eager")).split(",")
    if device.type != "cuda" and "graph" in modes:
        parser.error("CUDA graphs need a CUDA device: use --modes eager on the CPU")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, commit {commit()}, {dtype}; "
          f"greedy, {args.new_tokens} timed steps after {WARMUP_STEPS} warm-up steps")
    print(f"{'preset':>6s} {'batch':>5s} {'context':>8s} {'mode':>5s} | {'sparse tok/s':>12s} {'dense tok/s':>12s} "
          f"{'speed-up':>8s} | {'sparse cache MB':>15s} {'dense cache MB':>14s} | {'sparse peak MB':>14s} "
          f"{'dense peak MB':>13s}")
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        sparse = FibSparseLM(LMConfig.preset(preset, schedule="stagger")).to(device, dtype).eval()
        dense = FibSparseLM(LMConfig.preset(preset, schedule="dense")).to(device, dtype).eval()
        dense.load_state_dict(sparse.state_dict())  # the same weights: only the attention differs
        for batch in map(int, args.batches.split(",")):
            for context in map(int, args.contexts.split(",")):
                for mode in modes:
                    results = [run_config(model, batch, context, args.new_tokens, mode == "graph", device, dtype)
                               for model in (sparse, dense)]
                    cells = []
                    for r in results:
                        cells.append(f"{r[0]:12.0f}" if isinstance(r, tuple) else f"{'-':>12s}")
                    speedup = (f"{results[0][0] / results[1][0]:7.1f}x" if all(isinstance(r, tuple) for r in results)
                               else f"{'-':>8s}")
                    sizes = [f"{r[1]:15.2f}" if isinstance(r, tuple) else f"{'-':>15s}" for r in results]
                    peaks = [f"{r[2]:14.0f}" if isinstance(r, tuple) and r[2] == r[2] else f"{'-':>14s}"
                             for r in results]  # (NaN on the CPU: no allocator statistics)
                    notes = "  ".join(f"{which}: {r}" for which, r in zip(("sparse", "dense"), results)
                                      if not isinstance(r, tuple))
                    print(f"{preset:>6s} {batch:5d} {context:8d} {mode:>5s} | {cells[0]} {cells[1]} {speedup} | "
                          f"{sizes[0]} {sizes[1][1:]} | {peaks[0]} {peaks[1][1:]}" + (f"  {notes}" if notes else ""),
                          flush=True)


if __name__ == "__main__":
    main()
