"""One forward+backward for ncu: argv = L H Hkv d full|window."""
import sys, torch
from fibsparse_ext import fibsparse_attn, make_schedule
L, H, Hkv, d = map(int, sys.argv[1:5])
torch.manual_seed(0)
q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
offs = make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0)
o = torch.tensor(offs if sys.argv[5] == "full" else [], device="cuda", dtype=torch.int32)
out = fibsparse_attn(q, k, v, 128, o)
out.backward(torch.randn_like(out))
torch.cuda.synchronize()
print("offsets", o.tolist())
