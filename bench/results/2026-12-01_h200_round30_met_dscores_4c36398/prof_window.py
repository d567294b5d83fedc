"""The window alone (no offsets) at 64k MHA d 64, bf16, window 128: forward and backward, twice."""
import torch
from fibsparse_ext import fibsparse_attn
torch.manual_seed(0)
q, k, v = (torch.randn(1, 65536, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
none = torch.empty(0, dtype=torch.int32, device="cuda")
g = torch.randn(1, 65536, 8, 64, device="cuda", dtype=torch.bfloat16)
for _ in range(2):
    out = fibsparse_attn(q, k, v, 128, none)
    torch.autograd.grad(out, (q, k, v), g)
torch.cuda.synchronize()
print("ran the window alone twice")
