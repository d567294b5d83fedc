"""One forward+backward at 128k GQA 32/8 d128 (full pattern, or the window alone with argv[1] == 'window'), for ncu."""
import sys, torch
from fibsparse_ext import fibsparse_attn, make_schedule
L, H, Hkv, d = 131072, 32, 8, 128
torch.manual_seed(0)
q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
offs = make_schedule("fixed", num_layers=1, window=128, max_distance=L).offsets(0)
o = torch.tensor(offs if sys.argv[1:] != ["window"] else [], device="cuda", dtype=torch.int32)
out = fibsparse_attn(q, k, v, 128, o)
out.backward(torch.randn_like(out))
torch.cuda.synchronize()
print("offsets", o.tolist())
