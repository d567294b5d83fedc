"""The full pattern (integer Fibonacci offsets, alpha 1) at 64k GQA 32/8 d 128, bf16, window 128: forward and
backward, twice."""
import torch
from fibsparse_ext import fibsparse_attn
from fibsparse_ext.schedules import make_schedule
torch.manual_seed(0)
L = 65536
q = torch.randn(1, L, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k, v = (torch.randn(1, L, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
offs = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0), dtype=torch.int32,
                    device="cuda")
g = torch.randn_like(q)
for _ in range(2):
    torch.autograd.grad(fibsparse_attn(q, k, v, 128, offs), (q, k, v), g)
torch.cuda.synchronize()
print("ran the full pattern twice")
