"""The compiled ops (torch.ops.fibsparse.fwd / bwd / decode): their fake (meta)
implementations for torch.compile / export, and their autograd.

The ops themselves are declared and implemented in C++ (csrc/fibsparse_api.cpp);
importing the extension module registers them.
"""
import torch

from . import _C  # noqa: F401  (registers torch.ops.fibsparse.*)

build_info = _C.build_info


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fibsparse::fwd")
def _fwd_fake(q, k, v, offsets, window, softmax_scale):
    batch, seqlen_q, heads, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty((batch, heads, seqlen_q), dtype=_acc_dtype(q.dtype))
    return out, lse


@torch.library.register_fake("fibsparse::decode")
def _decode_fake(q, k_cache, v_cache, cache_seqlens, offsets, window, softmax_scale, ring):
    return _fwd_fake(q, k_cache, v_cache, offsets, window, softmax_scale)


@torch.library.register_fake("fibsparse::bwd")
def _bwd_fake(dout, q, k, v, out, lse, dlse, offsets, window, softmax_scale):
    contiguous = torch.contiguous_format
    if offsets.is_floating_point():
        doffsets = torch.empty_like(offsets, memory_format=contiguous)
    else:
        doffsets = q.new_empty((0,), dtype=_acc_dtype(q.dtype))
    return (torch.empty_like(q, memory_format=contiguous), torch.empty_like(k, memory_format=contiguous),
            torch.empty_like(v, memory_format=contiguous), doffsets)


def _setup_context(ctx, inputs, output):
    q, k, v, offsets, window, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, offsets, out, lse)
    ctx.window, ctx.softmax_scale = window, softmax_scale


def _backward(ctx, dout, dlse):
    q, k, v, offsets, out, lse = ctx.saved_tensors
    if dout is None:  # only lse was used
        dout = torch.zeros_like(out)
    dq, dk, dv, doffsets = torch.ops.fibsparse.bwd(
        dout, q, k, v, out, lse, dlse, offsets, ctx.window, ctx.softmax_scale)
    return dq, dk, dv, (doffsets if offsets.is_floating_point() else None), None, None


torch.library.register_autograd("fibsparse::fwd", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fibsparse_attn does not support double backward (gradients of gradients)")


# Without this, autograd would treat bwd's outputs as constants and a second
# derivative would silently come out as zero.
torch.library.register_autograd("fibsparse::bwd", _no_double_backward, setup_context=lambda ctx, inputs, output: None)
