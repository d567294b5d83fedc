"""The compiled ops (torch.ops.fibsparse.fwd / bwd / decode / varlen_fwd / varlen_bwd): their fake (meta)
implementations for torch.compile / export. The derivative of fwd is
registered in C++ (csrc/autograd.cpp), so a training step runs no Python of
ours; bwd's registration here only makes a second derivative raise.

The ops themselves are declared in C++ (csrc/fibsparse_api.cpp) and
implemented per device (csrc/cpu/ops_cpu.cpp, csrc/cuda/ops_cuda.cpp);
importing the extension module registers them.
"""
import torch

from . import _C  # noqa: F401  (registers torch.ops.fibsparse.*)
from ._checks import check_block_table, check_op_inputs, check_packed_op_inputs

build_info = _C.build_info


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# Each fake makes the real op's checks (check_op_inputs) before it returns
# shapes, so that a bad call fails at trace time as it would when run.


def _outputs_like(q):
    batch, seqlen_q, heads, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty((batch, heads, seqlen_q), dtype=_acc_dtype(q.dtype))
    return out, lse


@torch.library.register_fake("fibsparse::fwd")
def _fwd_fake(q, k, v, offsets, band, softmax_scale):
    check_op_inputs(q, k, v, offsets, band, softmax_scale)
    return _outputs_like(q)


@torch.library.register_fake("fibsparse::decode")
def _decode_fake(q, k_cache, v_cache, cache_seqlens, offsets, band, softmax_scale, ring, block_table=None):
    paged = block_table is not None
    check_op_inputs(q, k_cache, v_cache, offsets, band, softmax_scale, "k_cache", "v_cache", paged=paged)
    if paged:
        check_block_table(q, k_cache, block_table, ring)
    if (cache_seqlens.dim() != 1 or cache_seqlens.shape[0] != q.shape[0]
            or cache_seqlens.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"cache_seqlens must be an int32 or int64 tensor of shape (batch={q.shape[0]},), got "
                         f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens must be on q's device {q.device}, got {cache_seqlens.device}")
    return _outputs_like(q)


def _check_backward_tensors(dout, q, out, lse, dlse, lse_shape, lse_layout):
    for name, t in (("dout", dout), ("out", out)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, dtype {q.dtype} and device {q.device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    if tuple(lse.shape) != lse_shape or lse.dtype != _acc_dtype(q.dtype) or lse.device != q.device:
        raise ValueError(f"lse must be {_acc_dtype(q.dtype)} of shape {lse_layout} = {lse_shape} on "
                         f"{q.device}, got {lse.dtype} {tuple(lse.shape)} on {lse.device}")
    if dlse is not None and (dlse.shape != lse.shape or dlse.device != lse.device):
        raise ValueError(f"dlse must match lse {tuple(lse.shape)} on {lse.device}, got {tuple(dlse.shape)} on "
                         f"{dlse.device}")


def _grads_like(q, k, v, offsets):
    """(dq, dk, dv, doffsets): doffsets has a fractional offsets' shape, and is empty for integer ones."""
    contiguous = torch.contiguous_format
    if offsets.is_floating_point():
        doffsets = torch.empty_like(offsets, memory_format=contiguous)
    else:
        doffsets = q.new_empty((0,), dtype=_acc_dtype(q.dtype))
    return (torch.empty_like(q, memory_format=contiguous), torch.empty_like(k, memory_format=contiguous),
            torch.empty_like(v, memory_format=contiguous), doffsets)


@torch.library.register_fake("fibsparse::bwd")
def _bwd_fake(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale):
    check_op_inputs(q, k, v, offsets, band, softmax_scale)
    _check_backward_tensors(dout, q, out, lse, dlse, (q.shape[0], q.shape[2], q.shape[1]),
                            "(batch, heads, seqlen_q)")
    return _grads_like(q, k, v, offsets)


# Packed (varlen) batches: q (total_q, heads, head_dim), lse (heads, total_q).
@torch.library.register_fake("fibsparse::varlen_fwd")
def _varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale):
    check_packed_op_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band,
                           softmax_scale)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty((q.shape[1], q.shape[0]), dtype=_acc_dtype(q.dtype))


@torch.library.register_fake("fibsparse::varlen_bwd")
def _varlen_bwd_fake(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets,
                     band, softmax_scale):
    check_packed_op_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band,
                           softmax_scale)
    _check_backward_tensors(dout, q, out, lse, dlse, (q.shape[1], q.shape[0]), "(heads, total_q)")
    return _grads_like(q, k, v, offsets)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fibsparse_attn does not support double backward (gradients of gradients)")


# Without this, autograd would treat bwd's outputs as constants and a second
# derivative would silently come out as zero.
for _backward_op in ("fibsparse::bwd", "fibsparse::varlen_bwd"):
    torch.library.register_autograd(_backward_op, _no_double_backward, setup_context=lambda ctx, inputs, output: None)
