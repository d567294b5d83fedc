"""A small decoder-only language model whose only varying part is the attention
pattern: every variant uses the same blocks, the same rotary positions and the
same tied embedding, so comparisons isolate the schedule.

    config = LMConfig.preset("tiny", schedule="stagger")
    model = FibSparseLM(config)
    logits = model(tokens)                    # tokens: (batch, seqlen) int64
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..decode import KVCache
from .data import PackedBatch
from ..modules import FibSparseAttention
from ..schedules import (ARGUMENT_USERS, BASES, DEFAULT_ALPHA_MAX, DEFAULT_ALPHA_MIN, DEFAULT_BASE, SCHEDULES,
                         Schedule, make_schedule)

# Variants an experiment can name: a schedule, optionally prefixed by its base
# ("pow2-stagger"); "custom" needs explicit alphas or offsets and is for the Python API.
VARIANT_SCHEDULES = tuple(name for name in SCHEDULES if name != "custom")


@dataclass(frozen=True)
class LMConfig:
    """Model shape and attention pattern. The offsets are fixed from `seq_len`
    (the training length) at construction, never from the input length."""
    embed_dim: int
    num_layers: int
    num_heads: int
    seq_len: int
    window: int
    num_kv_heads: Optional[int] = None
    mlp_ratio: int = 4
    vocab_size: int = 256
    schedule: str = "stagger"
    base: str = DEFAULT_BASE
    alpha_min: float = DEFAULT_ALPHA_MIN
    alpha_max: float = DEFAULT_ALPHA_MAX
    rotary_base: float = 10000.0

    @staticmethod
    def preset(name: str, **overrides) -> "LMConfig":
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @staticmethod
    def parse_variant(variant: str) -> dict:
        """'stagger' -> {schedule: stagger, base: fibonacci}; 'pow2-fixed' -> pow2 base."""
        base, _, schedule = variant.rpartition("-")
        base = base or DEFAULT_BASE
        if base not in BASES or schedule not in VARIANT_SCHEDULES:
            raise ValueError(f"unknown schedule variant {variant!r}: use one of {list(VARIANT_SCHEDULES)}, "
                             f"optionally prefixed by a base ({', '.join(b + '-' for b in BASES)})")
        return {"schedule": schedule, "base": base}

    def make_schedule(self) -> Schedule:
        """The named schedule, given those of our fields it reads (schedules.ARGUMENT_USERS)."""
        fields = {"window": self.window, "base": self.base, "alpha_min": self.alpha_min, "alpha_max": self.alpha_max}
        kwargs = {arg: value for arg, value in fields.items() if self.schedule in ARGUMENT_USERS[arg]}
        if self.schedule != "dense":  # dense has no bound: it reads every earlier position at any length
            kwargs["max_distance"] = self.seq_len
        return make_schedule(self.schedule, num_layers=self.num_layers, **kwargs)


PRESETS = {
    # CPU, seconds: what CI trains.
    "tiny": LMConfig(embed_dim=64, num_layers=2, num_heads=2, seq_len=64, window=8),
    # One GPU, minutes.
    "small": LMConfig(embed_dim=256, num_layers=6, num_heads=4, seq_len=256, window=16),
    # Between small and paper (14M parameters), for several seeds on one GPU:
    # the paper's training length; width, depth and window between small's and
    # the paper's. The band (32) is 1/32 of the training length, so the offsets
    # carry the long reach. Every non-learned variant's offsets are at most
    # 987 < 1024, so every one of them is read during training.
    "medium": LMConfig(embed_dim=384, num_layers=8, num_heads=6, seq_len=1024, window=32),
    # The paper's shape: 512 hidden, 16 layers, ~60M parameters with its vocabulary
    # (here bytes, so fewer embedding parameters).
    "paper": LMConfig(embed_dim=512, num_layers=16, num_heads=8, seq_len=1024, window=64),
}


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LMConfig, schedule: Schedule, layer_idx: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.embed_dim)
        self.attn = FibSparseAttention(config.embed_dim, config.num_heads, schedule, layer_idx,
                                       num_kv_heads=config.num_kv_heads, rotary_base=config.rotary_base)
        self.mlp_norm = nn.RMSNorm(config.embed_dim)
        hidden = config.mlp_ratio * config.embed_dim
        self.mlp = nn.Sequential(nn.Linear(config.embed_dim, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, config.embed_dim, bias=False))

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None, start_pos: int = 0, context_parallel_group=None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), start_pos=start_pos, cache=cache, cu_seqlens=cu_seqlens,
                          max_seqlen=max_seqlen, context_parallel_group=context_parallel_group)
        return x + self.mlp(self.mlp_norm(x))


class FibSparseLM(nn.Module):
    """Decoder-only LM over tokens (batch, seqlen) -> logits (batch, seqlen, vocab)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.schedule = config.make_schedule()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.blocks = nn.ModuleList(Block(config, self.schedule, i) for i in range(config.num_layers))
        self.norm = nn.RMSNorm(config.embed_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, caches: Optional[list] = None, cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None, start_pos: int = 0, context_parallel_group=None) -> torch.Tensor:
        """Logits for tokens (batch, seqlen); with caches (one per block, from
        make_caches), the tokens continue what the caches hold. Packed
        documents: tokens (1, total) with cu_seqlens and max_seqlen
        (FibSparseAttention.forward), each document as if alone. Context
        parallelism: tokens are this rank's shard of one sequence, starting at
        start_pos, and context_parallel_group the ranks that hold the others."""
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], cu_seqlens, max_seqlen, start_pos,
                      context_parallel_group)
        return self.norm(x) @ self.embed.weight.t()  # tied output head

    def make_caches(self, batch: int, max_seqlen: int, page_size: Optional[int] = None) -> list:
        """One KV cache per block: constant-size rings for sparse layers, or
        with page_size paged caches of bounded size (FibSparseAttention.make_cache)."""
        return [block.attn.make_cache(batch, max_seqlen, page_size=page_size) for block in self.blocks]

    def check_caches_fit(self, caches: list, new_tokens: int) -> None:
        """Each layer's offsets are valid and its ring holds what `new_tokens`
        queries read (FibSparseAttention.check_cache_fits): a lookup per layer
        unless the offsets changed."""
        for block, cache in zip(self.blocks, caches, strict=True):
            block.attn.check_cache_fits(cache, new_tokens)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over a (batch, seqlen + 1) token window."""
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))

    def packed_loss(self, batch: PackedBatch) -> torch.Tensor:
        """Mean next-token cross-entropy over a packed batch of documents (data.PackedBatch)."""
        logits = self(batch.inputs, cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.reshape(-1))

    def alphas(self) -> list:
        """The learned alphas, one per layer (empty unless the schedule is learned)."""
        return [block.attn.alpha.item() for block in self.blocks if hasattr(block.attn, "alpha")]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
