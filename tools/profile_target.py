"""One call of each kernel at the benchmark workload (bf16, 8 heads, head_dim 64,
window 128, Fibonacci offsets; seqlen and batch from argv, default 16384 and 1), integer then
fractional, forward then backward: what tools/profile_ncu.sh profiles.

    python tools/profile_target.py [seqlen] [batch]
"""
import sys

import torch

from fibsparse_ext import fibsparse_attn, make_schedule

seqlen = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.manual_seed(0)
q, k, v = (torch.randn(batch, seqlen, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
offsets = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=seqlen).offsets(0),
                       dtype=torch.int32, device="cuda")
for positions in (offsets, (offsets.float() * 0.97).requires_grad_(True)):
    out = fibsparse_attn(q, k, v, 128, positions)
    out.backward(torch.randn_like(out))
torch.cuda.synchronize()
print(f"profile_target: ran forward and backward, integer and fractional, seqlen {seqlen}, batch {batch}")
