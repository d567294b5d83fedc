"""Autoregressive generation with the bounded KV caches of decode.py."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .models import FibSparseLM


def next_token(logits: torch.Tensor, temperature: float, top_k: Optional[int],
               generator: Optional[torch.Generator]) -> torch.Tensor:
    """Greedy when temperature == 0, else sampled from softmax(logits / temperature)
    restricted to the top_k most likely tokens."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: FibSparseLM, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """prompt (batch, prompt_len) -> (batch, prompt_len + max_new_tokens).

    The prompt is run once through the fused kernels, filling one cache per
    layer; then each new token reads only its window and offsets from a ring
    of constant size (dense layers keep every position)."""
    if (not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] < 1
            or prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool):
        raise ValueError(f"prompt must be integer token ids of shape (batch >= 1, prompt_len >= 1), got "
                         f"{f'{prompt.dtype} {tuple(prompt.shape)}' if isinstance(prompt, torch.Tensor) else prompt!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be >= 1 (or None for no limit), got {top_k}")
    model.eval()
    caches = model.make_caches(prompt.shape[0], prompt.shape[1] + max_new_tokens)
    tokens = [prompt]
    logits = model(prompt, caches)[:, -1]
    for step in range(max_new_tokens):
        token = next_token(logits, temperature, top_k, generator)
        tokens.append(token[:, None])
        if step + 1 < max_new_tokens:
            logits = model(token[:, None], caches)[:, -1]
    return torch.cat(tokens, 1)
