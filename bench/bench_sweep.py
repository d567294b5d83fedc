"""The performance sweep (the tables of docs/performance.md): fibsparse_attn
against FlashAttention (SDPA, dense causal), FlexAttention with the same sparse
mask, and the byte floor, over seqlen 1k..128k, head_dim 64/128, window
64/128/256, integer vs fractional offsets, with and without GQA. One run
prints everything, with ratios and peak extra memory, and writes CSV, JSON and
a PNG plot.

    python bench/bench_sweep.py --out bench/results/sweep_$(date +%F)
    python bench/bench_sweep.py --quick          # three configurations
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_attention import copy_bandwidth, flex_attention, fwd_bwd, sparse_mask_mod
from fibsparse_ext import fibsparse_attn, make_schedule
from timing import graphed_ms, median_ms, peak_extra_mb

if flex_attention is not None:
    from torch.nn.attention.flex_attention import create_block_mask

FLEX_MAX_SEQLEN = 65536  # above this, building FlexAttention's block mask ran out of memory in the sweep


@dataclass
class Config:
    batch: int
    seqlen: int
    heads: int = 8
    heads_kv: int = 8
    head_dim: int = 64
    window: int = 128
    fractional: bool = False


def sweep_configs(quick: bool) -> list[Config]:
    lengths = [(16, 1024), (4, 4096), (1, 16384), (1, 65536), (1, 131072)]
    if quick:
        return [Config(16, 1024), Config(1, 16384), Config(1, 16384, fractional=True)]
    configs = [Config(b, n, fractional=f) for b, n in lengths for f in (False, True)]
    configs += [Config(b, n, head_dim=128) for b, n in lengths]
    configs += [Config(b, n, heads_kv=2) for b, n in lengths]  # GQA: 8 query heads, 2 kv heads
    configs += [Config(1, 16384, window=w) for w in (64, 256)]
    return configs


def measure(config: Config, bandwidth: float) -> dict:
    torch.manual_seed(0)
    c = config
    q = torch.randn(c.batch, c.seqlen, c.heads, c.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(c.batch, c.seqlen, c.heads_kv, c.head_dim, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    grad = torch.randn_like(q)
    offsets = torch.tensor(make_schedule("fixed", num_layers=1, window=c.window, max_distance=c.seqlen).offsets(0),
                           dtype=torch.int32, device="cuda")
    positions = offsets.float() * 0.97 if c.fractional else offsets
    gqa = c.heads != c.heads_kv
    methods = {
        "fibsparse": lambda q, k, v: fibsparse_attn(q, k, v, c.window, positions),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=gqa).transpose(1, 2),
    }
    if flex_attention is not None and not c.fractional and c.seqlen <= FLEX_MAX_SEQLEN:
        block_mask = create_block_mask(sparse_mask_mod(c.window, offsets, c.seqlen), None, None, c.seqlen, c.seqlen)
        flex = torch.compile(flex_attention)
        methods["flex"] = lambda q, k, v: flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               block_mask=block_mask, enable_gqa=gqa).transpose(1, 2)
    row = {**asdict(c), "num_offsets": len(offsets)}
    runs = 10 if c.seqlen >= 65536 else 20
    for name, attend in methods.items():
        try:
            row[f"{name}_fwd_ms"] = median_ms(lambda: attend(q, k, v), runs=runs)
            row[f"{name}_fwdbwd_ms"] = median_ms(fwd_bwd(attend, q, k, v, grad), runs=runs)
            row[f"{name}_peak_mb"] = peak_extra_mb(fwd_bwd(attend, q, k, v, grad))
            if name != "flex":  # the step replayed from a CUDA graph: GPU time without the host path
                try:
                    row[f"{name}_fwdbwd_graph_ms"] = graphed_ms(fwd_bwd(attend, q, k, v, grad), runs=runs)
                except RuntimeError as error:  # a capture failure is reported, not fatal to the sweep
                    print(f"({name}: CUDA graph capture failed: {str(error).splitlines()[0]}) ", end="")
                    row[f"{name}_fwdbwd_graph_ms"] = None
        except torch.OutOfMemoryError:
            row[f"{name}_fwd_ms"] = row[f"{name}_fwdbwd_ms"] = row[f"{name}_peak_mb"] = None
            row[f"{name}_fwdbwd_graph_ms"] = None
            torch.cuda.empty_cache()
    io_bytes = q.element_size() * (2 * q.numel() + 2 * k.numel())
    row["floor_fwd_ms"] = io_bytes / bandwidth * 1e3
    fib_fwd, fib_all = row["fibsparse_fwd_ms"], row["fibsparse_fwdbwd_ms"]
    row["fwd_vs_floor"] = fib_fwd / row["floor_fwd_ms"]
    row["fwdbwd_vs_floor"] = fib_all / row["floor_fwd_ms"]
    for other in ("sdpa", "flex"):
        if row.get(f"{other}_fwdbwd_ms"):
            row[f"speedup_vs_{other}_fwd"] = row[f"{other}_fwd_ms"] / fib_fwd
            row[f"speedup_vs_{other}_fwdbwd"] = row[f"{other}_fwdbwd_ms"] / fib_all
    if row.get("fibsparse_fwdbwd_graph_ms") and row.get("sdpa_fwdbwd_graph_ms"):
        row["speedup_vs_sdpa_fwdbwd_graph"] = row["sdpa_fwdbwd_graph_ms"] / row["fibsparse_fwdbwd_graph_ms"]
    return row


def print_row(row: dict) -> None:
    name = (f"B={row['batch']:<2d} L={row['seqlen']:<6d} H={row['heads']}/{row['heads_kv']} d={row['head_dim']} "
            f"w={row['window']} K={row['num_offsets']} {'frac' if row['fractional'] else 'int '}")
    fmt = lambda x: "   -   " if x is None else f"{x:7.3f}"  # noqa: E731
    print(f"{name:44s} fib {fmt(row['fibsparse_fwd_ms'])}/{fmt(row['fibsparse_fwdbwd_ms'])}  "
          f"sdpa {fmt(row.get('sdpa_fwd_ms'))}/{fmt(row.get('sdpa_fwdbwd_ms'))}  "
          f"flex {fmt(row.get('flex_fwd_ms'))}/{fmt(row.get('flex_fwdbwd_ms'))}  floor {row['floor_fwd_ms']:.3f}  "
          f"x floor {row['fwd_vs_floor']:5.1f}/{row['fwdbwd_vs_floor']:5.1f}  "
          f"vs sdpa {row.get('speedup_vs_sdpa_fwdbwd', 0):6.2f}x  vs flex {row.get('speedup_vs_flex_fwdbwd', 0):5.2f}x  "
          f"peak MB fib {fmt(row.get('fibsparse_peak_mb'))} sdpa {fmt(row.get('sdpa_peak_mb'))}  "
          f"graphed fwd+bwd fib {fmt(row.get('fibsparse_fwdbwd_graph_ms'))} sdpa {fmt(row.get('sdpa_fwdbwd_graph_ms'))} "
          f"({row.get('speedup_vs_sdpa_fwdbwd_graph', 0):.2f}x)", flush=True)


def plot(rows: list, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the tables above are the results; the PNG is for docs/performance.md
        print(f"matplotlib is not installed: no {path.name} (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = [r for r in rows if r["head_dim"] == 64 and r["heads_kv"] == 8 and r["window"] == 128]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, label, style in [("fibsparse_fwdbwd_ms", "fibsparse (int)", "-"), ("sdpa_fwdbwd_ms", "SDPA causal", "--"),
                              ("flex_fwdbwd_ms", "Flex, same mask", ":")]:
        points = [(r["seqlen"] * r["batch"], r[key]) for r in base if not r["fractional"] and r.get(key)]
        axes.plot(*zip(*points), marker="o", linestyle=style, label=label)
    frac = [(r["seqlen"] * r["batch"], r["fibsparse_fwdbwd_ms"]) for r in base if r["fractional"]]
    axes.plot(*zip(*frac), marker="s", label="fibsparse (fractional)")
    axes.set(xscale="log", yscale="log", xlabel="tokens per batch", ylabel="forward+backward ms (bf16)",
             title="8 heads, head_dim 64, window 128")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="folder for sweep.csv, sweep.json, sweep.png")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the sweep needs a CUDA GPU")
    bandwidth = copy_bandwidth()
    commit = os.environ.get("FIBSPARSE_COMMIT") or subprocess.run(  # the device copy's .git may be stale
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": commit or "unknown",
            "copy_bandwidth_tb_s": bandwidth / 1e12}
    print(meta)
    rows = []
    configs = sweep_configs(args.quick)
    for n, config in enumerate(configs):
        print(f"[{n + 1}/{len(configs)}] ", end="")
        rows.append(measure(config, bandwidth))
        print_row(rows[-1])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        with open(args.out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({key for row in rows for key in row}))
            writer.writeheader()
            writer.writerows(rows)
        plot(rows, args.out / "sweep.png")
        print(f"wrote {args.out}/sweep.{{json,csv,png}}")


if __name__ == "__main__":
    main()
