"""Where the time of one forward+backward step goes: every GPU kernel it
launches (torch.profiler, device time per step) against the step's time
between CUDA events and the host time its Python call takes. If the host
time exceeds the kernels' sum, the step is host-bound and faster kernels
will not show in bench_sweep.py.

    python tools/profile_step.py [seqlen] [batch]     # bf16, 8 heads, d=64, window 128
"""
import sys
from pathlib import Path

import torch

# The step is timed exactly as the benchmarks time it, with their own helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_attention import fwd_bwd  # noqa: E402
from fibsparse_ext import fibsparse_attn, make_schedule  # noqa: E402
from timing import host_us, kernel_times_us, median_ms  # noqa: E402

seqlen = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
steps = 20
torch.manual_seed(0)
q, k, v = (torch.randn(batch, seqlen, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3))
grad = torch.randn_like(q)
offsets = torch.tensor(make_schedule("fixed", num_layers=1, window=128, max_distance=seqlen).offsets(0),
                       dtype=torch.int32, device="cuda")

print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  B={batch} L={seqlen} H=8 d=64 w=128 "
      f"K={len(offsets)}")
for name, positions in (("integer", offsets), ("fractional", offsets.float() * 0.97),
                        ("fractional, offsets.requires_grad", (offsets.float() * 0.97).requires_grad_(True))):
    # as bench_sweep.py times it: torch.autograd.grad, no accumulation into .grad
    step = fwd_bwd(lambda q, k, v, positions=positions: fibsparse_attn(q, k, v, 128, positions), q, k, v, grad)

    event_ms = median_ms(step, runs=steps)
    host_ms = host_us(step, runs=steps, warmup=0) / 1e3  # returns before the GPU is done, unless host-bound
    kernels = [(key, us / 1e3, count) for key, us, count in kernel_times_us(step, steps)]
    kernels.sort(key=lambda x: -x[1])
    print(f"\n{name}: step {event_ms:.3f} ms (CUDA events)   host call {host_ms:.3f} ms   "
          f"kernels {sum(ms for _, ms, _ in kernels):.3f} ms")
    for key, ms, count in kernels[:12]:
        print(f"  {ms:8.4f} ms  x{count:<3d} {key[:100]}")
