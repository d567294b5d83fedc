"""Forward and forward+backward time of fibsparse_attn, side by side in one run
with FlashAttention (SDPA, dense causal), FlexAttention with the same sparse
mask, and the byte floor (q, k, v read and o written once at the measured copy
bandwidth). CUDA events, warm-up, median of many runs.

    python bench/bench_attention.py            # the default sweep
    python bench/bench_attention.py --quick    # one small config
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fibsparse_ext import fibsparse_attn, make_schedule
from timing import median_ms

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # older torch
    flex_attention = None


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MB, far above L2
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), runs=50)
    return 2 * src.numel() / (ms * 1e-3)


def fwd_bwd(attend, q, k, v, grad):
    def run():
        out = attend(q, k, v)
        torch.autograd.grad(out, (q, k, v), grad)
    return run


def sparse_mask_mod(window: int, offsets: torch.Tensor, seqlen: int):
    """FlexAttention mask_mod for the same pattern: a lookup table over distances."""
    attended = torch.zeros(seqlen, dtype=torch.bool, device="cuda")
    attended[:window] = True
    attended[offsets[offsets < seqlen].long()] = True

    def mask_mod(b, h, q_idx, kv_idx):
        distance = q_idx - kv_idx
        return (distance >= 0) & attended[distance.clamp(min=0)]
    return mask_mod


def bench_config(batch, seqlen, heads, heads_kv, head_dim, window, offsets, dtype, bandwidth, fractional):
    torch.manual_seed(0)
    q = torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(batch, seqlen, heads_kv, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    grad = torch.randn_like(q)
    positions = offsets.float() * 0.97 if fractional else offsets
    fib = lambda q, k, v: fibsparse_attn(q, k, v, window, positions)  # noqa: E731
    gqa = heads != heads_kv
    flash = lambda q, k, v: F.scaled_dot_product_attention(  # noqa: E731
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=gqa).transpose(1, 2)

    rows = {}
    rows["fibsparse"] = (median_ms(lambda: fib(q, k, v)), median_ms(fwd_bwd(fib, q, k, v, grad)))
    rows["sdpa dense causal"] = (median_ms(lambda: flash(q, k, v)), median_ms(fwd_bwd(flash, q, k, v, grad)))
    if flex_attention is not None and not fractional:
        block_mask = create_block_mask(sparse_mask_mod(window, offsets, seqlen), None, None, seqlen, seqlen)
        flex_compiled = torch.compile(flex_attention)
        flex = lambda q, k, v: flex_compiled(  # noqa: E731
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
            enable_gqa=gqa).transpose(1, 2)
        rows["flex same mask"] = (median_ms(lambda: flex(q, k, v)), median_ms(fwd_bwd(flex, q, k, v, grad)))

    element = q.element_size()
    io_bytes = element * (2 * q.numel() + 2 * k.numel())  # q, k, v read, o written
    floor_ms = io_bytes / bandwidth * 1e3
    # backward floor: q, k, v, o, do read; dq, dk, dv written (plus the forward)
    bwd_floor_ms = floor_ms + element * (3 * q.numel() + 4 * k.numel()) / bandwidth * 1e3
    rows["byte floor"] = (floor_ms, bwd_floor_ms)

    kind = "fractional" if fractional else "integer"
    print(f"\nB={batch} L={seqlen} H={heads} Hkv={heads_kv} d={head_dim} window={window} "
          f"K={len(offsets)} {kind} {str(dtype)[6:]}")
    print(f"  {'':20s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'fwd vs fib':>11s} {'f+b vs fib':>11s}")
    fib_fwd, fib_all = rows["fibsparse"]
    for name, (fwd_ms, all_ms) in rows.items():
        print(f"  {name:20s} {fwd_ms:9.3f} {all_ms:11.3f} {fwd_ms / fib_fwd:10.2f}x {all_ms / fib_all:10.2f}x")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU")
    bandwidth = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    window = 128
    schedule = make_schedule("fixed", num_layers=1, window=window, max_distance=16384)
    offsets = torch.tensor(schedule.offsets(0), dtype=torch.int32, device="cuda")
    print(f"offsets (fibonacci, alpha 1, window {window}): {offsets.tolist()}")
    configs = [(1, 4096, 16, 16, 64)] if args.quick else [
        (4, 4096, 16, 16, 64), (1, 16384, 32, 8, 128)]
    for batch, seqlen, heads, heads_kv, head_dim in configs:
        for fractional in ([False] if args.quick else [False, True]):
            bench_config(batch, seqlen, heads, heads_kv, head_dim, window, offsets, torch.bfloat16, bandwidth,
                         fractional)


if __name__ == "__main__":
    main()
