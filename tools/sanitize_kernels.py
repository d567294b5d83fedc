"""A small run of every CUDA kernel (forward, dq, dkdv, decode; each dtype; integer and
fractional; GQA, with per-head padded offsets and with shared ones (tensor-core blocks of
several heads); the window alone; integer and fractional offsets with stored dS, and on the general passes;
window > seqlen; seqlen_q < seqlen_k; a packed
batch with empty and one-token sequences, and one with as many queries as keys (stored dS); a paged cache with page sizes 1, 5 and 16 whose
given-back entries are -1; more rows of d(position) partials than their sums' kernel has blocks),
sized for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 python tools/sanitize_kernels.py

(torch's caching allocator off, so that an access past the end of a tensor is
past the end of an allocation, which memcheck reports.)
"""
import os

import torch

from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen
from fibsparse_ext.decode import fibsparse_attn_with_kvcache
from fibsparse_ext.paged import PagedKVCache


def run(dtype, fractional, head_dim, seqlen_q, seqlen_k, window):
    torch.manual_seed(0)
    q = torch.randn(2, seqlen_q, 4, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(2, seqlen_k, 2, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    offsets = torch.tensor([[5, 9, 30], [6, 17, -1], [7, 8, 200], [-1, -1, -1]], device="cuda")
    if fractional:
        offsets = torch.where(offsets < 0, offsets, offsets + 0.4).to(
            torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_(True)
    else:
        offsets = offsets.int()
    out, lse = fibsparse_attn(q, k, v, window, offsets, return_lse=True)
    (out.float().square().sum() + lse.sum()).backward()


def run_window_alone(dtype, head_dim, seqlen, window):
    """No offsets: on 16-bit inputs whose queries and keys line up, the dq pass
    reads the dS that the dk/dv pass stored (csrc/cuda/bwd_stored_dscores_kernel.cuh)."""
    torch.manual_seed(0)
    q = torch.randn(2, seqlen, 4, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(2, seqlen, 2, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    out, lse = fibsparse_attn(q, k, v, window, [], return_lse=True)
    (out.float().square().sum() + lse.sum()).backward()


def run_stored_dscores(dtype, head_dim, seqlen, window, offsets):
    """Offsets (integer, or at head_dim 64 and 128 fractional positions with a
    gradient) on 16-bit inputs whose queries and keys line up: the dk/dv pass
    runs first and stores every dS, which the dq pass reads (its blocks serve 2
    or 4 heads here: the offsets are shared)."""
    torch.manual_seed(0)
    q = torch.randn(2, seqlen, 8, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(2, seqlen, 2, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    out, lse = fibsparse_attn(q, k, v, window, offsets, return_lse=True)
    (out.float().square().sum() + lse.sum()).backward()


def run_shared_gqa(dtype, fractional, head_dim):
    """8 query heads over 2 kv heads sharing one row of offsets: the tensor-core
    forward and dq blocks serve 4 heads at head_dim 64 and 2 at 128 (the Hopper
    forward 4, two a warpgroup, in 32-query tiles, the last step of each holding
    one of the three offsets' strips); 100 queries end inside the second block,
    whose offsets are all within reach."""
    torch.manual_seed(0)
    q = torch.randn(2, 100, 8, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(2, 100, 2, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    offsets = torch.tensor([5.5, 9.25, 70.0], device="cuda", dtype=torch.float64 if dtype == torch.float64
                           else torch.float32, requires_grad=True) if fractional else [5, 9, 70]
    out, lse = fibsparse_attn(q, k, v, 4, offsets, return_lse=True)
    (out.float().square().sum() + lse.sum()).backward()


def run_decode(dtype, fractional, head_dim, new_tokens):
    """A wrapped ring (capacity 40) and a linear cache, ragged lengths."""
    torch.manual_seed(0)
    q = torch.randn(3, new_tokens, 4, head_dim, device="cuda", dtype=dtype)
    k_cache = torch.randn(3, 40, 2, head_dim, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    offsets = [9.5, 20.25, 30.0] if fractional else [9, 20, 30]
    fibsparse_attn_with_kvcache(q, k_cache, v_cache, torch.tensor([3, 77, 1000], device="cuda"), 8, offsets,
                                ring=True)
    fibsparse_attn_with_kvcache(q, k_cache, v_cache, torch.tensor([3, 17, 40], device="cuda"), 8, offsets)


def run_paged_decode(dtype, fractional, head_dim, page_size):
    """Three sequences (prompts of 0, 5 and 90 tokens) decoding 2 tokens per
    call through a PagedKVCache, past the point where pages are given back;
    one leaves and another joins on its pages."""
    torch.manual_seed(0)
    offsets = [9.5, 20.25, 30.0] if fractional else [9, 20, 30]
    pages = PagedKVCache.pages_needed(8, offsets, page_size, 3, 2)
    cache = PagedKVCache(pages, page_size, 2, head_dim, 8, offsets, max_batch=3, dtype=dtype, device="cuda")
    prompt = torch.randn(3, 90, 2, head_dim, device="cuda", dtype=dtype)
    cache.add_sequences(prompt, prompt, [0, 5, 90])
    for step in range(30):
        if step == 15:
            cache.remove_sequence(1)
            cache.add_sequences(prompt[:1], prompt[:1], [40])
        q = torch.randn(3, 2, 4, head_dim, device="cuda", dtype=dtype)
        k = torch.randn(3, 2, 2, head_dim, device="cuda", dtype=dtype)
        cache.attend(q, k, k)


def run_packed(dtype, fractional, head_dim):
    """Sequences of 70, 0, 1 and 129 queries over 75, 9, 1 and 129 keys: blocks
    past a sequence's end, a sequence with keys and no queries."""
    torch.manual_seed(0)
    cu_q = torch.tensor([0, 70, 70, 71, 200], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 75, 84, 85, 214], dtype=torch.int32, device="cuda")
    q = torch.randn(200, 4, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(214, 2, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    offsets = torch.tensor([5.5, 9.25, 30.0], device="cuda", dtype=torch.float64 if dtype == torch.float64
                           else torch.float32, requires_grad=True) if fractional else [5, 9, 30]
    out, lse = fibsparse_attn_varlen(q, k, v, cu_q, cu_k, 129, 129, 4, offsets, return_lse=True)
    (out.float().square().sum() + lse.sum()).backward()


def run_packed_stored_dscores(dtype, head_dim, window, offsets):
    """Sequences of 70, 0, 1 and 129 rows, as many queries as keys (in two
    boundaries tensors): in fp16 and bf16 the backward with stored dS, its dS
    tiles one sequence after another (fp32 and fp64 run the lane kernels)."""
    torch.manual_seed(0)
    cu = torch.tensor([0, 70, 70, 71, 200], dtype=torch.int32, device="cuda")
    q = torch.randn(200, 4, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(200, 2, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    out, lse = fibsparse_attn_varlen(q, k, v, cu, cu.clone(), 129, 129, window, offsets, return_lse=True)
    (out.float().square().sum() + lse.sum()).backward()


def run_position_sums_past_the_grid_cap():
    """64 heads of 1030 fractional positions each: more rows of d(position)
    partials than the sums' kernel has blocks (65 536), so some blocks sum a
    second row after the barrier that guards their shared warp sums. A short
    sequence keeps the attention kernels small; most rows are then zeros,
    which the sums read all the same."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 40, 64, 32, device="cuda", requires_grad=True) for _ in range(3))
    positions = (16.5 + torch.arange(1030, device="cuda", dtype=torch.float32)).expand(64, -1).contiguous()
    out = fibsparse_attn(q, k, v, 16, positions.requires_grad_(True))
    out.square().sum().backward()


def with_general_backward(fn, *args):
    """fn(*args) on the general backward passes: offsets on dense 16-bit batches
    whose queries and keys line up otherwise take stored dS."""
    os.environ["FIBSPARSE_STORED_DSCORES"] = "0"
    try:
        fn(*args)
    finally:
        del os.environ["FIBSPARSE_STORED_DSCORES"]


for dtype in [torch.float16, torch.bfloat16, torch.float32, torch.float64]:
    for head_dim, seqlen, window in [(64, 37, 4), (64, 200, 128), (128, 130, 129), (16, 70, 64), (32, 150, 128)]:
        run_window_alone(dtype, head_dim, seqlen, window)
    for head_dim, seqlen, window, offsets in [(64, 300, 128, [128, 200, 290, 400]), (128, 150, 129, [129, 140])]:
        run_stored_dscores(dtype, head_dim, seqlen, window, offsets)
    for head_dim, seqlen, window, positions in [(128, 300, 128, [0.5, 3.0, 130.25, 290.75]), (128, 150, 129, [129.5]),
                                                (64, 300, 128, [0.5, 3.0, 130.25, 290.75])]:
        run_stored_dscores(dtype, head_dim, seqlen, window,
                           torch.tensor(positions, device="cuda", requires_grad=True,
                                        dtype=torch.float64 if dtype == torch.float64 else torch.float32))
    for fractional in [False, True]:
        for head_dim in [16, 32, 64, 128]:
            run(dtype, fractional, head_dim, 37, 37, 4)
        run(dtype, fractional, 64, 3, 3, 5)      # window > seqlen
        run(dtype, fractional, 64, 11, 50, 5)    # fewer queries than keys
        for head_dim in [64, 128]:
            run_shared_gqa(dtype, fractional, head_dim)
            if dtype in (torch.float16, torch.bfloat16):
                with_general_backward(run_shared_gqa, dtype, fractional, head_dim)
                with_general_backward(run, dtype, fractional, head_dim, 37, 37, 4)
        for head_dim in [16, 128]:
            run_decode(dtype, fractional, head_dim, 1)
        run_decode(dtype, fractional, 64, 3)
        for page_size in [1, 5, 16]:
            run_paged_decode(dtype, fractional, 64, page_size)
        for head_dim in [64, 128]:
            run_packed(dtype, fractional, head_dim)
    for head_dim in [64, 128]:
        run_packed_stored_dscores(dtype, head_dim, 128, [])
        run_packed_stored_dscores(dtype, head_dim, 129, [129, 140])
    run_packed_stored_dscores(dtype, 128, 128, torch.tensor([0.5, 3.0, 130.25], device="cuda", requires_grad=True,
                                                            dtype=torch.float64 if dtype == torch.float64
                                                            else torch.float32))
run_position_sums_past_the_grid_cap()
torch.cuda.synchronize()
print("sanitize_kernels: all kernels ran")
