"""python -m fibsparse_ext: what was built, a self-check of the compiled kernels
against the reference on every available device, and a schedule table.

    python -m fibsparse_ext [--schedule stagger] [--layers 16] [--window 64] [--max-distance 2048]
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import SCHEDULES, BASES, build_info, fibsparse_attn, fibsparse_attn_ref, make_schedule
from ._cli import positive_int
from .accuracy import TOLERANCE, relative_error
from .decode import KVCache, fibsparse_attn_with_kvcache, required_capacity

def forward_backward(attention, tensors, offsets, fractional):
    """out and the gradients of a fixed random projection of it."""
    tensors = [t.detach().requires_grad_(True) for t in tensors]
    if fractional:
        offsets = offsets.detach().requires_grad_(True)
    out = attention(*tensors, 16, offsets)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    return [out, *torch.autograd.grad(out, tensors + ([offsets] if fractional else []), grad)]


def self_check(device: str, dtype: torch.dtype, fractional: bool) -> bool:
    """One random case (GQA, window 16, three offsets), forward and backward,
    against the float64 reference."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 300, 4, 64), (2, 300, 2, 64), (2, 300, 2, 64)]
    tensors = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    offsets = torch.tensor([64.5, 99.25, 160.75] if fractional else [64, 99, 160], dtype=torch.float64)
    position_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    kernel_offsets = offsets.to(device, position_dtype if fractional else torch.int32)

    kernel = forward_backward(fibsparse_attn, [t.to(device, dtype) for t in tensors], kernel_offsets, fractional)
    reference = forward_backward(fibsparse_attn_ref, tensors,
                                 offsets if fractional else offsets.to(torch.int32), fractional)
    names = ["out", "dq", "dk", "dv"] + (["dpos"] if fractional else [])
    errors = {name: relative_error(a, b) for name, a, b in zip(names, kernel, reference)}
    ok = all(err < TOLERANCE[dtype] for err in errors.values())
    text = "  ".join(f"{name} {err:.1e}" for name, err in errors.items())
    print(f"  {device:4s} {str(dtype)[6:]:8s} {'fractional' if fractional else 'integer':10s} {text}  "
          f"{'ok' if ok else 'FAILED'}")
    return ok


def decode_check(device: str) -> bool:
    """The last token's attention through a ring KV cache that has wrapped,
    against the reference over the whole sequence."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=generator) for s in [(2, 300, 4, 64), (2, 300, 2, 64), (2, 300, 2, 64)])
    offsets = [20, 33, 54, 88]
    cache = KVCache(2, required_capacity(16, offsets), 2, 64, ring=True, device=device)
    cache.write(k.to(device), v.to(device))
    out = fibsparse_attn_with_kvcache(q[:, -1:].to(device), cache.k, cache.v, cache.seqlens, 16, offsets, ring=True)
    error = relative_error(out, fibsparse_attn_ref(q.double(), k.double(), v.double(), 16, offsets)[:, -1:])
    ok = error < TOLERANCE[torch.float32]
    print(f"  {device:4s} float32  decode     out {error:.1e} (ring of {cache.capacity} slots, 300 tokens)  "
          f"{'ok' if ok else 'FAILED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fibsparse_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", default="stagger", choices=SCHEDULES)
    parser.add_argument("--base", default="fibonacci", choices=BASES)
    parser.add_argument("--layers", type=positive_int, default=16)
    parser.add_argument("--window", type=positive_int, default=64)
    parser.add_argument("--max-distance", type=positive_int, default=2048)
    args = parser.parse_args()
    # The schedule is built before the self-check, so that arguments it refuses
    # stop the command at once, as a usage error.
    kwargs = {} if args.schedule == "dense" else dict(window=args.window, base=args.base)
    if args.schedule == "custom":
        kwargs["alphas"] = [1.0] * args.layers
    try:
        schedule = make_schedule(args.schedule, num_layers=args.layers, max_distance=args.max_distance, **kwargs)
    except ValueError as e:
        parser.error(str(e))

    info = build_info()
    print(f"fibsparse_ext built for {'CUDA (archs ' + info['cuda_archs'] + ')' if info['cuda'] else 'CPU only'}, "
          f"against torch {info['torch_version']}; running torch {torch.__version__}")
    if info["cuda"] and not torch.cuda.is_available():
        print("  (no GPU visible here: only the CPU kernels are checked)")

    print("\nself-check against the float64 reference (relative errors):")
    checks = [("cpu", torch.float32), ("cpu", torch.float64)]
    if info["cuda"] and torch.cuda.is_available():
        checks += [("cuda", dtype) for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64)]
    ok = all([self_check(device, dtype, fractional) for device, dtype in checks for fractional in (False, True)])
    ok = all([decode_check(device) for device in sorted({device for device, _ in checks})]) and ok

    print()
    print(schedule.describe())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
