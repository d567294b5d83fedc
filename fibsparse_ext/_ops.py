"""The compiled ops (torch.ops.fibsparse.fwd / bwd / decode): their fake (meta)
implementations for torch.compile / export. The derivative of fwd is
registered in C++ (csrc/autograd.cpp), so a training step runs no Python of
ours; bwd's registration here only makes a second derivative raise.

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


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fibsparse_attn does not support double backward (gradients of gradients)")


# Without this, autograd would treat bwd's outputs as constants and a second
# derivative would silently come out as zero.
torch.library.register_autograd("fibsparse::bwd", _no_double_backward, setup_context=lambda ctx, inputs, output: None)
