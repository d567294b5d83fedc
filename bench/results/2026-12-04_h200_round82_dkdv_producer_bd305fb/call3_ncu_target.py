"""One backward at 16k GQA 32/8 d128 integer (bf16, window 128, Fibonacci offsets), for ncu."""
import torch
import fibsparse_ext  # noqa: F401
from fibsparse_ext.schedules import layer_offsets
torch.manual_seed(0)
n, window = 16384, 128
q = torch.randn(1, n, 32, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, n, 8, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
offsets = torch.tensor(layer_offsets("fibonacci", 1.0, window, n), dtype=torch.int32, device="cuda")
out, lse = torch.ops.fibsparse.fwd(q, k, v, offsets, [window], 128 ** -0.5)
dout = torch.randn_like(out)
torch.ops.fibsparse.bwd(dout, q, k, v, out, lse, None, offsets, [window], 128 ** -0.5)
torch.cuda.synchronize()
