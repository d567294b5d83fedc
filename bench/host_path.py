"""Host (CPU) time of one call, at a size where the GPU work is negligible:
what a step costs when the GPU is not the limit. Compares fibsparse_attn's
forward and forward+backward with scaled_dot_product_attention's.

    python bench/host_path.py
"""
import torch
import torch.nn.functional as F

from bench_attention import fwd_bwd
from fibsparse_ext import fibsparse_attn
from timing import host_us


torch.manual_seed(0)
q, k, v = (torch.randn(1, 128, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)
offsets = torch.tensor([128, 233], dtype=torch.int32, device="cuda")
positions = offsets.float() * 0.97


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)


print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  host time per call, us")
with torch.no_grad():
    print(f"  fwd, no grad:        fibsparse {host_us(lambda: fibsparse_attn(q, k, v, 128, offsets)):7.1f}"
          f"   op alone {host_us(lambda: torch.ops.fibsparse.fwd(q, k, v, offsets, [128], 0.125)):7.1f}"
          f"   sdpa {host_us(lambda: sdpa(q, k, v)):7.1f}")
print(f"  fwd, grad enabled:   fibsparse {host_us(lambda: fibsparse_attn(q, k, v, 128, offsets)):7.1f}"
      f"   sdpa {host_us(lambda: sdpa(q, k, v)):7.1f}")
integer = fwd_bwd(lambda q, k, v: fibsparse_attn(q, k, v, 128, offsets), q, k, v, grad)
fractional = fwd_bwd(lambda q, k, v: fibsparse_attn(q, k, v, 128, positions), q, k, v, grad)
print(f"  fwd+bwd:             fibsparse {host_us(integer):7.1f}   fractional {host_us(fractional):7.1f}"
      f"   sdpa {host_us(fwd_bwd(sdpa, q, k, v, grad)):7.1f}")
