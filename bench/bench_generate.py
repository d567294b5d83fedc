"""End-to-end decoding speed and memory of generate() (FibSparseLM with random
weights): tokens/s of the decode loop, one new token per sequence per step
(the model step, then greedy sampling), at batch 1/8/32 and contexts 4k..1M,
for the sparse model (`stagger` schedule) with ring caches ("ring") and with
paged caches ("paged": PagedKVCache, its pages planned on the host before
each step, which then writes and reads through the block table), and the same model with
dense attention (the `dense` schedule and the same weights: static full caches
of the whole context, read by SDPA with the slots not yet written masked, as
a transformers model with a static cache does), each replayed
from a CUDA graph ("graph"), compiled with torch.compile and then replayed
from a CUDA graph ("compiled": DecodeStep(compile=True), both models), and
run eagerly ("eager").

The context is not prefilled: the caches are allocated as generate() would
allocate them (rings or paged pools for the sparse layers, a full cache of
context + new tokens for the dense ones) and their lengths set as if
`context` tokens were there (a paged cache takes a prompt of `context` zero
rows, of which it keeps the positions decoding reads), so a run takes
minutes instead of the prefill of every context. The time of a step does not
depend on the cached values. Dense configurations
whose full caches do not fit in free memory are marked "skipped".

Times: warm-up (which includes the graph's capture), then the median of
`--new-tokens` back-to-back steps between CUDA events (bench/timing.py).
"peak MB" is the most memory allocated during the configuration above what
was allocated before it (caches, activations, the graph's pool; not the
weights), "cache MB" the caches alone.

    python bench/bench_generate.py [--quick] [--presets small,paper] [--batches 1,8,32]
                                   [--contexts 4096,32768,131072,1048576] [--new-tokens 32]
                                   [--modes graph,compiled,eager] [--page-size 256]
    python bench/bench_generate.py --device cpu --presets tiny --contexts 1024 --batches 1 --new-tokens 8
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

import torch

from fibsparse_ext.lm.generation import DecodeStep, next_token
from fibsparse_ext.paged import PagedKVCache
from fibsparse_ext.lm.models import FibSparseLM, LMConfig
from run_commit import measured_commit
from timing import median_ms

WARMUP_STEPS = DecodeStep.WARMUP_STEPS + 3  # eager warm-up, the capture, then a few replays


def cache_bytes(model: FibSparseLM, batch: int, capacity_of_full: int, dtype: torch.dtype,
                page_size: Optional[int]) -> int:
    """What model.make_caches would allocate (pools and rings; not block
    tables), computed without allocating it."""
    total = 0
    for block in model.blocks:
        attn = block.attn
        if attn.window is None:
            rows = batch * capacity_of_full
        elif page_size is None:
            rows = batch * attn.make_cache(1, 1, device="meta").capacity
        else:
            rows = page_size * PagedKVCache.pages_needed(attn.window, attn.positions().detach(), page_size, batch)
        total += 2 * rows * attn.num_kv_heads * attn.head_dim * dtype.itemsize
    return total


def run_config(model, batch, context, new_tokens, mode, device, dtype, page_size=None):
    """(tok/s, cache MB, peak MB) of decoding after `context` tokens, or a reason it was skipped."""
    steps = WARMUP_STEPS + new_tokens
    needed = cache_bytes(model, batch, context + steps, dtype, page_size)
    free = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
            else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    if needed > 0.9 * free:
        return f"skipped ({needed / 2**30:.1f} GiB of cache > free {free / 2**30:.1f} GiB)"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        caches = model.make_caches(batch, context + steps, page_size=page_size)
        for cache in caches:  # as if `context` tokens had been prefilled
            if isinstance(cache, PagedKVCache):  # a prompt (one zero row, expanded) of which it keeps the end
                prompt = cache.k.new_zeros(1, 1, *cache.k.shape[2:]).expand(batch, context, -1, -1)
                cache.add_sequences(prompt, prompt)
            else:
                cache.seqlens.fill_(context)
        graphed = mode == "graph" or (mode == "compiled" and device.type == "cuda")
        step = DecodeStep(model, caches, cuda_graph=graphed, compile=mode == "compiled")
        token = torch.zeros(batch, dtype=torch.long, device=device)

        def one_token():
            token.copy_(next_token(step(token), 0.0, None, None))

        with torch.no_grad():
            ms = median_ms(one_token, warmup=WARMUP_STEPS, runs=new_tokens, device=device)
        if graphed and step.graph is None:
            return "no graph (see the warning)"
        if mode == "compiled" and not step.compile:
            return "not compiled (see the warning)"
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
    parser.add_argument("--modes", default=None,
                        help="graph,compiled,eager (CUDA default); eager or compiled on the CPU")
    parser.add_argument("--quick", action="store_true",
                        help="small preset, batch 1 and 32, contexts 4k and 128k, 16 timed steps")
    parser.add_argument("--page-size", type=int, default=256,
                        help="rows per page of the paged run (the sparse model with paged caches); 0: no paged run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.batches, args.contexts, args.new_tokens = "small", "1,32", "4096,131072", 16
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    modes = (args.modes or ("graph,compiled,eager" if device.type == "cuda" else "eager")).split(",")
    if not set(modes) <= {"graph", "compiled", "eager"}:
        parser.error(f"--modes takes graph, compiled and eager, got {args.modes}")
    if device.type != "cuda" and "graph" in modes:
        parser.error("CUDA graphs need a CUDA device: use --modes eager (or compiled: without a graph) on the CPU")
    page_size = args.page_size or None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, commit {measured_commit()}, {dtype}; "
          f"greedy, {args.new_tokens} timed steps after {WARMUP_STEPS} warm-up steps; paged: pages of {page_size} rows")
    kinds = ["ring", "paged", "dense"] if page_size else ["ring", "dense"]
    print(f"{'preset':>6s} {'batch':>5s} {'context':>8s} {'mode':>8s} | "
          + " ".join(f"{kind + ' tok/s':>11s}" for kind in kinds)
          + f" | {'ring/dense':>10s}" + (f" {'paged/ring time':>15s}" if page_size else "")
          + " | cache MB " + "/".join(kinds) + " | peak MB " + "/".join(kinds))
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        sparse = FibSparseLM(LMConfig.preset(preset, schedule="stagger")).to(device, dtype).eval()
        dense = FibSparseLM(LMConfig.preset(preset, schedule="dense")).to(device, dtype).eval()
        dense.load_state_dict(sparse.state_dict())  # the same weights: only the attention differs
        runs = {"ring": (sparse, None), "paged": (sparse, page_size), "dense": (dense, None)}
        for batch in map(int, args.batches.split(",")):
            for context in map(int, args.contexts.split(",")):
                for mode in modes:
                    results = {kind: run_config(runs[kind][0], batch, context, args.new_tokens, mode, device, dtype,
                                                runs[kind][1]) for kind in kinds}
                    done = {kind: r for kind, r in results.items() if isinstance(r, tuple)}

                    def ratio(a, b, time=False):
                        if a not in done or b not in done:
                            return "-"
                        return f"{(done[b][0] / done[a][0] if time else done[a][0] / done[b][0]):.2f}x"

                    cells = " ".join(f"{done[k][0]:11.0f}" if k in done else f"{'-':>11s}" for k in kinds)
                    ratios = f"{ratio('ring', 'dense'):>10s}" + (f" {ratio('paged', 'ring', time=True):>15s}"
                                                                 if page_size else "")
                    sizes = "/".join(f"{done[k][1]:.1f}" if k in done else "-" for k in kinds)
                    peaks = "/".join(f"{done[k][2]:.0f}" if k in done and done[k][2] == done[k][2] else "-"
                                     for k in kinds)  # (NaN on the CPU: no allocator statistics)
                    notes = "  ".join(f"{kind}: {r}" for kind, r in results.items() if not isinstance(r, tuple))
                    print(f"{preset:>6s} {batch:5d} {context:8d} {mode:>8s} | {cells} | {ratios} | {sizes} | {peaks}"
                          + (f"  {notes}" if notes else ""), flush=True)


if __name__ == "__main__":
    main()
