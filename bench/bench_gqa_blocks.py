"""GQA heads sharing forward and dq blocks, measured on one build: the same
Fibonacci offsets (the `fixed` schedule's, up to the sequence length) given as
one shared row (the heads of a kv group share blocks and each key strip is
staged once for them), as identical per-head rows (one head per block), and no
offsets at all (the window alone, one head per block). bf16, window 128, batch
1; forward and forward+backward medians from `triton.testing.do_bench`.

    python bench/bench_gqa_blocks.py
"""
import torch
import triton

from fibsparse_ext import fibsparse_attn, make_schedule

torch.manual_seed(0)
for L, H, Hkv, d in ((131072, 32, 8, 128), (65536, 32, 8, 128), (131072, 32, 8, 64)):
    q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs = make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0)
    shared = torch.tensor(offs, device="cuda", dtype=torch.int32)
    per_head = shared.expand(H, -1).contiguous()
    row = []
    for name, o in (("shared", shared), ("per_head", per_head), ("window_only", shared[:0])):
        def forward():
            return fibsparse_attn(q, k, v, 128, o)
        g = torch.randn_like(forward())

        def forward_backward():
            return torch.autograd.grad(fibsparse_attn(q, k, v, 128, o), (q, k, v), g)
        row.append((name, triton.testing.do_bench(forward, warmup=50, rep=300),
                    triton.testing.do_bench(forward_backward, warmup=50, rep=300)))
    print(f"L={L} H={H}/{Hkv} d={d} K={len(offs)}: " + "  ".join(f"{n} fwd {x:.3f} f+b {y:.3f}" for n, x, y in row)
          + f"  per_head/shared fwd {row[1][1] / row[0][1]:.2f}x f+b {row[1][2] / row[0][2]:.2f}x", flush=True)
