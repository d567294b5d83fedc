"""fibsparse attention in Hugging Face transformers models.

    from fibsparse_ext.integrations.transformers import enable_fibsparse
    model = AutoModelForCausalLM.from_config(config)            # or from_pretrained
    enable_fibsparse(model, schedule="stagger", window=128, max_distance=8192)

`enable_fibsparse` stores the pattern in the config (`config.fibsparse`, saved
with `save_pretrained`) and switches the model to `attn_implementation=
"fibsparse"`; after `register()`, a config that carries `fibsparse` can also be
loaded with `attn_implementation="fibsparse"` directly. Each attention layer
reads its own offsets from the schedule, by its `layer_idx`.

With the `learned` schedule each attention module owns a trainable scalar
`fibsparse_alpha` (a model parameter, saved and loaded with the weights) and
attends at the fractional positions alpha * b_k, as FibSparseAttention does;
the op's d(position) output carries the gradient to alpha.

`FibSparseCache(model)` is a transformers KV cache for generate() that keeps
per layer only the last tokens the pattern can read, so its memory stays flat.

Batches: a right-padded batch needs no packing (attention is causal, so a real
token never reads the padding after it); left-padded rows and documents packed
into a row (position_ids that restart) go through the packed kernels, each
sequence alone (packing.py). What the pattern cannot honour is refused with an
error that names it, never computed differently: attention dropout,
`output_attentions`, soft-capping, sliding windows and attention sinks of the
model itself, masks with padding between real tokens, and, under
torch.compile, left padding and packed rows (finding them reads values on the
host).
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)
from transformers import AttentionInterface, PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from ..decode import required_capacity
from ..functional import _attend_built_offsets
from ..modules import MIN_ALPHA
from ..schedules import Schedule, make_schedule
from .packing import packed_attention, packing_of

NAME = "fibsparse"
# The learned schedule's parameter, one scalar on each attention module.
ALPHA = "fibsparse_alpha"
# Arguments of attention functions that change what attention computes.
_UNSUPPORTED = ("softcap", "sliding_window", "s_aux")
_hooks: list = []


def register() -> None:
    """Make `attn_implementation="fibsparse"` available to every model. The
    mask is transformers' 2-D padding mask, None when nothing is padded.

    Also installs two torch module hooks (once per process) that give the
    attention modules of a model whose config carries a learned pattern their
    alphas as the model is built, so that from_pretrained finds the parameters
    its checkpoint holds (see _on_module_registered, _on_parameter_registered)."""
    AttentionInterface.register(NAME, fibsparse_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    if not _hooks:
        _hooks.append(register_module_module_registration_hook(_on_module_registered))
        _hooks.append(register_module_parameter_registration_hook(_on_parameter_registered))


def enable_fibsparse(model_or_config: Any, schedule: str = "stagger", **schedule_args: Any) -> Any:
    """Store the pattern in the config and switch the model (or the config) to
    fibsparse attention. `schedule` and `schedule_args` are make_schedule's
    (window, max_distance, base, alpha, ...); num_layers is the model's. With
    a model and a learned pattern, each attention module gets its alpha
    parameter (see _sync_alpha): create the optimizer after this call."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    pattern = {"schedule": schedule, **schedule_args}
    schedule_of(config, pattern)  # refuse a bad pattern before changing anything
    config.fibsparse = pattern
    register()
    if isinstance(model_or_config, PretrainedConfig):
        model_or_config._attn_implementation = NAME
    else:
        for module in attention_modules(model_or_config):
            _sync_alpha(module)
        model_or_config.set_attn_implementation(NAME)
    return model_or_config


def schedule_of(config: PretrainedConfig, pattern: dict | None = None) -> Schedule:
    """The schedule of a config's `fibsparse` pattern, over its layers."""
    pattern = dict((getattr(config, "fibsparse", None) if pattern is None else pattern) or {})
    if not pattern:
        raise ValueError(f"attn_implementation={NAME!r} needs config.fibsparse (a dict of make_schedule's arguments); "
                         "set it with fibsparse_ext.integrations.transformers.enable_fibsparse")
    name = pattern.pop("schedule", None)
    if name is None:
        raise ValueError(f"config.fibsparse must name a schedule, got {pattern}")
    try:
        built = make_schedule(name, num_layers=config.num_hidden_layers, **pattern)
    except TypeError as e:  # an argument make_schedule does not have
        raise ValueError(f"config.fibsparse holds an argument make_schedule does not take: {e}") from None
    return built


def is_attention_module(module: nn.Module) -> bool:
    """An attention module of a transformers model: its class is named
    *Attention and it knows its layer (`layer_idx`) and its config."""
    return (type(module).__name__.endswith("Attention") and isinstance(getattr(module, "layer_idx", None), int)
            and isinstance(getattr(module, "config", None), PretrainedConfig))


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_attention_module(m)]


def _learned_schedule(config: PretrainedConfig) -> Schedule | None:
    """The config's schedule if its pattern is learned, else None."""
    pattern = getattr(config, "fibsparse", None)
    if not isinstance(pattern, dict) or pattern.get("schedule") != "learned":
        return None
    return schedule_of(config)


def _sync_alpha(module: nn.Module) -> None:
    """Give an attention module the alpha its config's pattern asks for: a new
    parameter at the pattern's initial alpha; kept as it is (trained) while the
    pattern is the one it was made for, reset in place (the optimizer keeps
    its reference) when the pattern changes; removed when the pattern is not
    learned."""
    schedule = _learned_schedule(module.config)
    alpha = module._parameters.get(ALPHA)
    if schedule is None:
        if ALPHA in module._parameters:
            del module._parameters[ALPHA]
        return
    initial = schedule.alpha(module.layer_idx)
    pattern = dict(module.config.fibsparse)
    if alpha is None:
        like = next((p for p in module.parameters() if p.is_floating_point()), None)
        dtype, device = (like.dtype, like.device) if like is not None else (torch.get_default_dtype(), None)
        module.register_parameter(ALPHA, nn.Parameter(torch.full((), initial, dtype=dtype, device=device)))
    elif getattr(module, "_fibsparse_alpha_pattern", None) != pattern and not alpha.is_meta:
        with torch.no_grad():
            alpha.fill_(initial)
    module._fibsparse_alpha_pattern = pattern


def _on_module_registered(parent: nn.Module, name: str, child: nn.Module) -> None:
    """torch's hook for every submodule assignment: an attention module gets its
    alpha when its layer takes it, inside the model's __init__, so the
    parameter exists before from_pretrained loads the checkpoint into it."""
    if is_attention_module(child) and _learned_schedule(child.config) is not None:
        _sync_alpha(child)


def _on_parameter_registered(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    """torch's hook for every parameter assignment. from_pretrained builds the
    model on the meta device, then replaces each parameter by the checkpoint's
    tensor (marked `_is_hf_initialized`) or, for a key the checkpoint lacks, by
    uninitialised memory that the model's `_init_weights` is meant to fill. No
    model's `_init_weights` knows the alpha, so a checkpoint without alphas
    (a learned pattern put in the config of weights trained without one) gets
    the pattern's initial alpha here instead of whatever that memory held."""
    if name != ALPHA or param is None or param.is_meta or getattr(param, "_is_hf_initialized", False):
        return
    old = module._parameters.get(ALPHA)
    if old is None or not old.is_meta or not is_attention_module(module):
        return
    schedule = _learned_schedule(module.config)
    if schedule is not None:
        with torch.no_grad():
            param.fill_(schedule.alpha(module.layer_idx))


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # The kernels hold fractional positions in their accumulation type.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _layer_offsets(module: nn.Module, query: torch.Tensor) -> tuple[int | None, torch.Tensor]:
    """(window, offsets) of this attention layer: integer offsets, or, for a
    learned schedule, the positions alpha * b_k from the module's alpha (with
    its gradient). The constant part (offsets, or the b_k) is built once per
    layer, pattern, device and dtype (a new enable_fibsparse takes effect)."""
    pattern = getattr(module.config, "fibsparse", None)
    cached = getattr(module, "_fibsparse_pattern", None)
    dtype = _accumulation_dtype(query.dtype)
    if (cached is None or cached[0] != pattern or cached[2].device != query.device
            or (cached[2].is_floating_point() and cached[2].dtype != dtype)):
        schedule = schedule_of(module.config)
        if schedule.is_learned:
            table = torch.tensor(schedule.base_distances(module.layer_idx), dtype=dtype, device=query.device)
        else:
            table = torch.tensor(schedule.offsets(module.layer_idx), dtype=torch.int32, device=query.device)
        cached = (dict(pattern), schedule.window, table)
        module._fibsparse_pattern = cached
    window, table = cached[1], cached[2]
    if not table.is_floating_point():
        return window, table
    return window, _positions(_alpha_of(module), table)


def _alpha_of(module: nn.Module) -> nn.Parameter:
    alpha = getattr(module, ALPHA, None)
    if not isinstance(alpha, nn.Parameter):
        raise ValueError(f"config.fibsparse asks for the learned schedule, but attention layer {module.layer_idx} "
                         f"has no {ALPHA} parameter: call enable_fibsparse(model, schedule='learned', ...), or build "
                         f"or load the model after fibsparse_ext.integrations.transformers.register()")
    return alpha


def _positions(alpha: torch.Tensor, base_distances: torch.Tensor) -> torch.Tensor:
    """The same positions as FibSparseAttention.positions(), in the dtype of
    base_distances: alpha kept above MIN_ALPHA, so they stay positive and
    increasing."""
    return alpha.to(base_distances.dtype).clamp(min=MIN_ALPHA) * base_distances


class FibSparseCache(Cache):
    """transformers' KV cache for a fibsparse model whose memory stays flat
    however long generation runs: each sparse layer keeps only the last tokens
    its pattern can read (its farthest distance, decode.required_capacity's
    count, as the library's ring cache holds), a dense layer keeps every token.

        model.generate(input_ids, cache=FibSparseCache(model), max_new_tokens=...)
        # older transformers name the argument past_key_values

    Each layer is transformers' sliding-window layer with that window: a
    forward sees the kept tokens and its own (a prompt attends as a whole),
    and positions (rotary) count every token seen. The sizes come from the
    model's pattern and, for a learned schedule, from its alphas as they are
    when the cache is built; a cache refuses to go on once either changes (a
    new pattern or an optimizer step may read farther than it keeps), so
    build one per generate() call."""

    def __init__(self, model: nn.Module):
        modules = sorted(attention_modules(model), key=lambda m: m.layer_idx)
        if [m.layer_idx for m in modules] != list(range(len(modules))) or not modules:
            raise ValueError(f"FibSparseCache needs one attention module per layer 0..L-1, found layers "
                             f"{[m.layer_idx for m in modules]}")
        self.capacities: list[int | None] = []  # tokens kept per layer; None: all of them
        self._built_for = []
        layers = []
        for module in modules:
            schedule = schedule_of(module.config)
            alpha = None
            if schedule.is_dense:
                kept = None
            else:
                if schedule.is_learned:
                    alpha = _alpha_of(module)
                    base = torch.tensor(schedule.base_distances(module.layer_idx),
                                        dtype=_accumulation_dtype(alpha.dtype))
                    offsets = _positions(alpha.detach().cpu(), base)  # as the forward computes them
                else:
                    offsets = torch.tensor(schedule.offsets(module.layer_idx), dtype=torch.int64)
                # The new token reads the ones before it; at least one is kept, as
                # transformers' sliding layer (which keeps sliding_window - 1)
                # would keep every token for a window of 1.
                kept = max(required_capacity(schedule.window, offsets) - 1, 1)
            self.capacities.append(kept)
            layers.append(DynamicLayer() if kept is None else DynamicSlidingWindowLayer(sliding_window=kept + 1))
            self._built_for.append((weakref.ref(module), dict(module.config.fibsparse), alpha,
                                    None if alpha is None else alpha._version))
        super().__init__(layers=layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        module, pattern, alpha, version = self._built_for[layer_idx]
        module = module()
        if module is None or getattr(module.config, "fibsparse", None) != pattern or (
                alpha is not None and (getattr(module, ALPHA, None) is not alpha or alpha._version != version)):
            raise ValueError(f"the model's fibsparse pattern or alphas changed since this FibSparseCache was built "
                             f"(layer {layer_idx}): it may keep fewer tokens than the layer now reads; build a new one")
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def _refuse_if(condition: torch.Tensor, message: str) -> None:
    """Raise `message` where `condition` (a 0-d bool tensor) holds. Eagerly a
    ValueError; under torch.compile an assert on the device, which reads the
    value without a graph break."""
    if torch.compiler.is_compiling():
        torch._assert_async(~condition, message)
    elif bool(condition):
        raise ValueError(message)


def _check_right_padded(attention_mask: torch.Tensor) -> None:
    if attention_mask.dim() != 2:
        raise ValueError(f"fibsparse attention takes a 2-D padding mask, got a {attention_mask.dim()}-D mask "
                         f"{tuple(attention_mask.shape)}: custom masks are not part of the pattern")
    mask = attention_mask.bool()
    _refuse_if((mask[:, 1:] > mask[:, :-1]).any(),  # a real token after padding: not ones then zeros
               "under torch.compile fibsparse attention takes right-padded batches only (finding left-padded "
               "or packed sequences reads the mask on the host); run it eagerly")


def _check_one_sequence_per_row(position_ids: torch.Tensor) -> None:
    if position_ids.shape[-1] > 1:
        _refuse_if((position_ids[..., 1:] < position_ids[..., :-1]).any(),
                   "position_ids restart within a row (packed sequences): under torch.compile fibsparse "
                   "attention takes one sequence per row (finding packed sequences reads position_ids on the "
                   "host); run it eagerly")


def fibsparse_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention function: query (batch, heads, seqlen_q, head_dim),
    key and value (batch, heads_kv, seqlen_k, head_dim); returns the output as
    (batch, seqlen_q, heads, head_dim) and no attention weights."""
    if dropout:
        raise ValueError(f"fibsparse attention has no dropout, got dropout={dropout} (train with attention_dropout=0)")
    if kwargs.get("output_attentions"):
        raise ValueError("fibsparse attention does not return attention weights (output_attentions=True)")
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"fibsparse attention does not support {name} (got {kwargs[name]!r})")
    position_ids = kwargs.get("position_ids")
    packing = None
    if torch.compiler.is_compiling():  # finding packed sequences reads values on the host: right padding only
        if attention_mask is not None:
            _check_right_padded(attention_mask)
        if position_ids is not None:
            _check_one_sequence_per_row(position_ids)
    else:
        packing = packing_of(attention_mask, position_ids, query.shape[0], query.shape[2], key.shape[2])
    window, offsets = _layer_offsets(module, query)
    if window is None:  # dense: a window over every key is causal attention
        window = key.shape[2]
    # (batch, seqlen, heads, head_dim) views: the kernels take these strides without a copy.
    query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    if packing is not None:  # left padding or packed documents: each sequence alone
        return packed_attention(query, key, value, packing, window, offsets, scaling), None
    # The offsets are the schedule's, or alpha * b_k: valid as built, so their values are
    # not read on the host (a learned layer's are new every forward: a sync per layer).
    return _attend_built_offsets(query, key, value, window, offsets, softmax_scale=scaling), None
