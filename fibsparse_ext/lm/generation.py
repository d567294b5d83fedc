"""Autoregressive generation with the bounded KV caches of decode.py.

Each new token runs one decode step (DecodeStep): the model on one token per
sequence against its caches. On CUDA the step is captured once in a CUDA
graph and replayed for every later token, so a token costs one launch of the
host's time instead of one per kernel; the caches' lengths, and the rotary
positions computed from them, live in device tensors that the graph itself
advances, so no host value is baked into it.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from ..decode import KVCache
from ..paged import PagedKVCache
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


def check_step_options(cuda_graph, compile) -> None:
    """DecodeStep's options (generate() checks them before its prompt runs)."""
    if cuda_graph is not None and not isinstance(cuda_graph, bool):
        raise ValueError(f"cuda_graph must be True, False or None (on CUDA devices), got {cuda_graph!r}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")


class DecodeStep:
    """step(token (batch,)) -> logits (batch, vocab): the model on one new token
    per sequence, continuing `caches` (which it advances by one).

    With a CUDA graph, the first WARMUP_STEPS steps run eagerly on a side
    stream (lazy initialisation, cuBLAS workspaces), the next one is captured
    and every step from then on is a replay. The token is copied into a static
    input buffer and the logits come back in a static output buffer, which the
    next step overwrites: read it before calling again. Where capture is
    impossible the steps stay eager, with a warning naming why.

    Every step that is not a replay first checks the layers' offsets against
    their caches (a lookup unless they changed), then reserves the paged
    caches' pages (PagedKVCache.reserve); a step that fails gives its
    reservations back.

    compile=True: after the first (eager, checked) step, the step runs through
    torch.compile (one graph, fullgraph), which fuses the step's small kernels
    (norms, rotary embeddings, residual adds) before the CUDA graph captures
    it. The host checks cannot sit inside a compiled graph: the offsets are
    checked before every call as above, and the layouts were checked by the
    first step on the same tensors (the token buffer, the caches and the
    model's weights do not change between steps). From then on the ring
    caches keep their lengths on the device, as with a graph. Where compiling
    fails, the step stays uncompiled, with a warning."""

    WARMUP_STEPS = 2
    MAX_COMPILED_SHAPES = 64

    def __init__(self, model: FibSparseLM, caches: list, cuda_graph: Optional[bool] = None, compile: bool = False):
        check_step_options(cuda_graph, compile)
        device = caches[0].k.device
        self.model, self.caches = model, caches
        self.graph, self.logits, self.steps = None, None, 0
        self.use_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.use_graph and device.type != "cuda":
            warnings.warn(f"decoding without a CUDA graph: the model is on {device}, CUDA graphs need a CUDA device",
                          stacklevel=3)
            self.use_graph = False
        self.rings = [cache for cache in caches if isinstance(cache, KVCache)]
        # Paged caches plan their pages on the host before every step (reserve),
        # and the step itself only writes and reads through the block table.
        self.paged = [cache for cache in caches if isinstance(cache, PagedKVCache)]
        if self.use_graph:
            # The graph replays its writes and length updates with values it never
            # sees on the host: from here on the caches keep their lengths on the device.
            for cache in self.rings:
                cache.keep_lengths_on_device()
            self.stream = torch.cuda.Stream(device)
        self.compile, self.compiled = compile, None
        self.token = torch.zeros(caches[0].seqlens.shape[0], 1, dtype=torch.long, device=device)  # the static input

    def _forward(self) -> torch.Tensor:
        return self.model(self.token, self.caches)[:, -1]

    def _run(self) -> torch.Tensor:
        """One step: eager for the first (every check on the host), compiled
        after it when asked."""
        if not self.compile or self.steps == 0:
            return self._forward()
        if self.compiled is None:
            for cache in self.rings:
                cache.enter_compiled_step()
            self.compiled = torch.compile(self._forward, dynamic=False, fullgraph=True)
            from torch._dynamo import exc  # (loaded by torch.compile above)
            self.compile_errors = tuple(getattr(exc, name) for name in ("TorchDynamoException",
                                                                        "FailOnRecompileLimitHit")
                                        if hasattr(exc, name))
        try:
            # Steps of every shape and model share one compiled function (the
            # code of _forward): a new batch size or model compiles a graph for
            # it, beyond dynamo's default of 8 per function, and past the limit
            # fails loudly (the warning below) instead of running uncompiled.
            with torch._dynamo.config.patch(recompile_limit=self.MAX_COMPILED_SHAPES,
                                            fail_on_recompile_limit_hit=True):
                return self.compiled()
        except self.compile_errors as error:  # raised while compiling, before the step runs: the caches are unchanged
            warnings.warn(f"decoding without torch.compile: compiling the decode step failed "
                          f"({str(error).splitlines()[0] if str(error) else type(error).__name__})", stacklevel=5)
            self.compile = False
            for cache in self.rings:
                cache.in_compiled_step = False
            return self._forward()

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token.view(-1, 1))
        if self.graph is not None:
            for cache in self.paged:  # the host half of the step's paged calls (a counter between page boundaries)
                cache.reserve(1)
            self.graph.replay()
            return self.logits
        # Not replayed: what can be refused is refused before any reservation or
        # write, and a step that fails gives its reservations back.
        self.model.check_caches_fit(self.caches, new_tokens=1)
        reserved = []
        try:
            for cache in self.paged:
                cache.reserve(1)
                reserved.append(cache)
                cache.decode_reserved = True  # this step's model calls take attend_reserved
            return self._step()
        except BaseException:
            for cache in reserved:
                cache.cancel_reservation(1)
            raise
        finally:
            for cache in self.paged:
                cache.decode_reserved = False

    def _step(self) -> torch.Tensor:
        """A step that is not a replay: eager warm-up, the capture (which
        replays once), or an eager step without a graph."""
        if self.use_graph and self.steps >= self.WARMUP_STEPS:
            self._capture()
            if self.graph is not None:
                self.graph.replay()  # capture records the step without running it
                return self.logits
        if not self.use_graph:
            logits = self._run()
            self.steps += 1
            return logits
        current = torch.cuda.current_stream(self.token.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            logits = self._run()
        self.steps += 1
        current.wait_stream(self.stream)
        logits.record_stream(current)  # made on the side stream, read on this one
        return logits

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                logits = self._run()
        except Exception as error:  # the caches are unchanged: a capture runs nothing
            warnings.warn(f"decoding without a CUDA graph: capturing the decode step failed ({error})", stacklevel=4)
            self.use_graph = False
            return
        self.graph, self.logits = graph, logits


@torch.no_grad()
def generate(model: FibSparseLM, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
             cuda_graph: Optional[bool] = None, compile: bool = False,
             page_size: Optional[int] = None) -> torch.Tensor:
    """prompt (batch, prompt_len) -> (batch, prompt_len + max_new_tokens).

    The prompt is run once through the fused kernels, filling one cache per
    layer; then each new token reads only its window and offsets from a ring
    of constant size (dense layers keep every position). cuda_graph: replay
    the decode step from a CUDA graph (DecodeStep); None uses one on CUDA.
    compile: run the decode step through torch.compile first (DecodeStep),
    which fuses its small kernels; it costs the compilation once per call
    (tens of seconds), so it pays off for long generations. page_size: the
    sparse layers keep paged caches (PagedKVCache) instead of rings: the same
    tokens, memory bounded the same way."""
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
    check_step_options(cuda_graph, compile)  # before the prompt runs; page_size: where the caches are made
    model.eval()
    # Every token this call writes fits (a linear cache holds prompt_len +
    # max_new_tokens), which is what lets the graphed step skip the host's
    # length checks.
    caches = model.make_caches(prompt.shape[0], prompt.shape[1] + max_new_tokens, page_size=page_size)
    tokens = [prompt]
    logits = model(prompt, caches)[:, -1]
    step = DecodeStep(model, caches, cuda_graph, compile)
    for i in range(max_new_tokens):
        token = next_token(logits, temperature, top_k, generator)
        tokens.append(token[:, None])
        if i + 1 < max_new_tokens:
            logits = step(token)
    return torch.cat(tokens, 1)
