"""Round 41 profile: one forward+backward of fractional positions (the fixed schedule's offsets x 0.97, with a
gradient) and one of integer offsets on the general passes (FIBSPARSE_STORED_DSCORES=0), 64k MHA 8 heads d 64,
bf16; run under ncu, which picks the general dq pass (dq_mma_kernel) of each."""
import os
import torch
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule

L, H, d = 65536, 8, 64
torch.manual_seed(0)
q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k, v = (torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
g = torch.randn_like(q)
offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0), dtype=torch.int32,
                    device="cuda")
pos = (offs.float() * 0.97).requires_grad_(True)
torch.autograd.grad(fibsparse_attn(q, k, v, 128, pos), (q, k, v, pos), g)
os.environ["FIBSPARSE_STORED_DSCORES"] = "0"
torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
torch.cuda.synchronize()
print("done")
