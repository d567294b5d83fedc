"""Rotary position embedding (RoPE), the same for every attention variant."""
import torch


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0):
    """cos, sin of shape (*positions.shape, head_dim // 2), float32. positions is
    (seqlen,) for one shared range, or (batch, seqlen) for per-sequence ones."""
    inv_freq = base ** (-torch.arange(0, head_dim // 2, device=positions.device, dtype=torch.float32) * 2 / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x (batch, seqlen, heads, head_dim) pairwise (first half, second half)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).to(x.dtype)
