"""Two forward+backward steps of the full pattern (bf16, window 128, Fibonacci offsets): L H Hkv d [frac]."""
import sys, torch
from fibsparse_ext import fibsparse_attn
L, H, Hkv, d = (int(x) for x in sys.argv[1:5])
frac = len(sys.argv) > 5 and sys.argv[5] == "frac"
torch.manual_seed(0)
q = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(1, L, Hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
offs, a, b = [], 1, 2
while b <= L:
    if b > 128: offs.append(b)
    a, b = b, a + b
o = torch.tensor(offs, device="cuda", dtype=torch.int32)
if frac: o = (o.float() * 0.97).requires_grad_(True)
g = torch.randn(1, L, H, d, device="cuda", dtype=torch.bfloat16)
for _ in range(2): fibsparse_attn(q, k, v, 128, o).backward(g)
torch.cuda.synchronize()
print("ran", L, H, Hkv, d, "frac" if frac else "int", len(offs), "offsets")
