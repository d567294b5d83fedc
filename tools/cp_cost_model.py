"""Context parallelism on paper: per-rank bytes received, messages and key
memory of context_parallel_attn's exchange (the plan it actually computes,
distributed.rows_read_before), against an all-gather of the prefix and an
all-to-all over heads (Ulysses-style: each rank receives q, k and v of its
heads for the whole sequence and returns the other heads' output), for 8 to 1024 ranks and
1M to 16M tokens. Equal shards; the last rank is the one that reads the most.

    python tools/cp_cost_model.py [--max-distance 16384] [--plot cp_cost.png]

Bytes are bf16 with 8 query heads, 8 kv heads, head_dim 64 (a k row and a v row
are 2 KiB). --max-distance is the farthest offset: the training length for a
schedule built for it (the offsets never depend on the sequence), or 0 for
offsets up to the whole sequence.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fibsparse_ext import make_schedule  # noqa: E402
from fibsparse_ext.distributed import reach_behind, rows_read_before  # noqa: E402

HEADS, HEADS_KV, HEAD_DIM, ELEMENT = 8, 8, 64, 2
KV_ROW = 2 * HEADS_KV * HEAD_DIM * ELEMENT  # bytes of one k row and one v row
WINDOW = 128


def per_rank(tokens: int, ranks: int, max_distance: int) -> dict:
    reach = max_distance or tokens
    offsets = torch.tensor(make_schedule("fixed", num_layers=1, window=WINDOW, max_distance=reach).offsets(0))
    behind = reach_behind(WINDOW, offsets)
    shard = tokens // ranks
    worst = {"received": 0, "messages": 0, "memory": 0}
    for rank in (1, ranks // 2, ranks - 1):  # the first reader, a middle one, the last (reads the farthest)
        reads = rows_read_before(rank * shard, shard, behind)
        owners = {pos // shard for lo, hi in reads for pos in (lo, hi - 1)}
        owners |= {o for lo, hi in reads for o in range(lo // shard, (hi - 1) // shard + 1)}
        received = sum(hi - lo for lo, hi in reads)
        memory = shard + (rank * shard - reads[0][0] if reads else 0)
        worst = {"received": max(worst["received"], received), "messages": max(worst["messages"], len(owners)),
                 "memory": max(worst["memory"], memory)}
    return {
        "strips MiB": worst["received"] * KV_ROW / 2**20,
        "messages": worst["messages"],
        "key rows (memory)": worst["memory"],
        "all-gather MiB": (tokens - shard) * KV_ROW / 2**20,
        # Received: q, k, v of its own heads from the other ranks' shards, then its shard's
        # output of the other heads back: 4 tensors of the shard, less its own part.
        "all-to-all MiB": 4 * shard * HEADS * HEAD_DIM * ELEMENT * (ranks - 1) / ranks / 2**20,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-distance", type=int, default=16384)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    reach = "the whole sequence" if args.max_distance == 0 else str(args.max_distance)
    print(f"window {WINDOW}, Fibonacci offsets (alpha 1) up to {reach}; bf16, heads {HEADS}/{HEADS_KV}, "
          f"head_dim {HEAD_DIM}; per rank, the worst of the first, a middle and the last rank")
    print(f"{'tokens':>9s} {'ranks':>6s} {'shard':>8s} {'strips MiB':>11s} {'messages':>9s} {'key rows':>9s} "
          f"{'all-gather MiB':>15s} {'all-to-all MiB':>15s} {'best':>10s}")
    rows = []
    for tokens in [2**20, 2**22, 2**24]:
        for ranks in [2, 8, 64, 256, 1024]:  # 2: the measured case
            if tokens // ranks < 1:
                continue
            r = per_rank(tokens, ranks, args.max_distance)
            cheapest = min(("strips", r["strips MiB"]), ("all-gather", r["all-gather MiB"]),
                           ("all-to-all", r["all-to-all MiB"]), key=lambda item: item[1])[0]
            rows.append((tokens, ranks, r))
            print(f"{tokens:9d} {ranks:6d} {tokens // ranks:8d} {r['strips MiB']:11.1f} {r['messages']:9d} "
                  f"{r['key rows (memory)']:9d} {r['all-gather MiB']:15.1f} {r['all-to-all MiB']:15.1f} {cheapest:>10s}")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("no matplotlib: no plot")
            return
        figure, axes = plt.subplots(figsize=(8, 4.5))
        for tokens in sorted({t for t, _, _ in rows}):
            ranks = [n for t, n, _ in rows if t == tokens]
            for key, style in (("strips MiB", "-"), ("all-gather MiB", ":"), ("all-to-all MiB", "--")):
                axes.plot(ranks, [r[key] for t, _, r in rows if t == tokens], style, marker="o",
                          label=f"{tokens // 2**20}M tokens, {key.split()[0]}")
        axes.set(xscale="log", yscale="log", xlabel="ranks", ylabel="MiB received per rank")
        axes.set_title("bytes each rank receives: strips (ours), all-gather, all-to-all over heads", fontsize=9)
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
