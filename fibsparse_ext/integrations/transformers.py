"""fibsparse attention in Hugging Face transformers models.

    from fibsparse_ext.integrations.transformers import enable_fibsparse
    model = AutoModelForCausalLM.from_config(config)            # or from_pretrained
    enable_fibsparse(model, schedule="stagger", window=128, max_distance=8192)

`enable_fibsparse` stores the pattern in the config (`config.fibsparse`, saved
with `save_pretrained`) and switches the model to `attn_implementation=
"fibsparse"`; after `register()`, a config that carries `fibsparse` can also be
loaded with `attn_implementation="fibsparse"` directly. Each attention layer
reads its own offsets from the schedule, by its `layer_idx`.

What the pattern cannot honour is refused with an error that names it, never
computed differently: attention dropout, `output_attentions`, soft-capping,
sliding windows and attention sinks of the model itself, learned schedules
(their alphas are not model parameters here yet), and batches that are not
right-padded (left padding and packed sequences need per-sequence starts). A
right-padded batch needs no mask: attention is causal, so a real token never
reads the padding after it.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from ..functional import fibsparse_attn
from ..schedules import Schedule, make_schedule

NAME = "fibsparse"
# Arguments of attention functions that change what attention computes.
_UNSUPPORTED = ("softcap", "sliding_window", "s_aux")


def register() -> None:
    """Make `attn_implementation="fibsparse"` available to every model. The
    mask is transformers' 2-D padding mask, None when nothing is padded."""
    AttentionInterface.register(NAME, fibsparse_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)


def enable_fibsparse(model_or_config: Any, schedule: str = "stagger", **schedule_args: Any) -> Any:
    """Store the pattern in the config and switch the model (or the config) to
    fibsparse attention. `schedule` and `schedule_args` are make_schedule's
    (window, max_distance, base, alpha, ...); num_layers is the model's."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    pattern = {"schedule": schedule, **schedule_args}
    schedule_of(config, pattern)  # refuse a bad pattern before changing anything
    config.fibsparse = pattern
    register()
    if isinstance(model_or_config, PretrainedConfig):
        model_or_config._attn_implementation = NAME
    else:
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
    if built.is_learned:
        raise ValueError("the learned schedule is not supported through transformers yet (its alphas would have to "
                         "be model parameters); use fixed, stagger, coprime, custom or dense")
    return built


def _layer_offsets(module: torch.nn.Module, device: torch.device) -> tuple[int | None, torch.Tensor]:
    """(window, offsets) of this attention layer, built once per layer, pattern
    and device (a new enable_fibsparse on the same model takes effect)."""
    pattern = getattr(module.config, "fibsparse", None)
    cached = getattr(module, "_fibsparse_pattern", None)
    if cached is None or cached[0] != pattern or cached[2].device != device:
        schedule = schedule_of(module.config)
        offsets = torch.tensor(schedule.offsets(module.layer_idx), dtype=torch.int32, device=device)
        cached = (dict(pattern), schedule.window, offsets)
        module._fibsparse_pattern = cached
    return cached[1], cached[2]


def _refuse_if(condition: torch.Tensor, message: str) -> None:
    """Raise `message` where `condition` (a 0-d bool tensor) holds. Eagerly a
    ValueError; under torch.compile an assert on the device, which reads the
    value without a graph break."""
    if torch.compiler.is_compiling():
        torch._assert_async(~condition, message)
    elif bool(condition):
        raise ValueError(message)


# The last mask and position_ids checked eagerly: every layer of one forward
# passes the same tensors, and each eager check reads a value on the host (a
# device sync), so it runs once per forward, not once per layer.
_last_checked: dict[str, tuple[weakref.ref, int]] = {}


def _check_once(kind: str, t: torch.Tensor, check) -> None:
    """check(t), unless t (unchanged) passed it last time."""
    if torch.compiler.is_compiling():  # checked on the device, without a sync
        check(t)
        return
    seen = _last_checked.get(kind)
    if seen is not None and seen[0]() is t and seen[1] == t._version:
        return
    check(t)  # raises on a bad value, which is then not remembered
    _last_checked[kind] = (weakref.ref(t), t._version)


def _check_right_padded(attention_mask: torch.Tensor) -> None:
    if attention_mask.dim() != 2:
        raise ValueError(f"fibsparse attention takes a 2-D padding mask, got a {attention_mask.dim()}-D mask "
                         f"{tuple(attention_mask.shape)}: custom masks are not part of the pattern")
    mask = attention_mask.bool()
    _refuse_if((mask[:, 1:] > mask[:, :-1]).any(),  # a real token after padding: not ones then zeros
               "fibsparse attention supports right-padded batches only; left padding and packed "
               "sequences need per-sequence starts, which it does not take yet")


def _check_one_sequence_per_row(position_ids: torch.Tensor) -> None:
    if position_ids.shape[-1] > 1:
        _refuse_if((position_ids[..., 1:] < position_ids[..., :-1]).any(),
                   "position_ids restart within a row (packed sequences): fibsparse attention needs "
                   "per-sequence starts for these, which it does not take yet; pass one sequence per row")


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
    if attention_mask is not None:
        _check_once("attention_mask", attention_mask, _check_right_padded)
    if kwargs.get("position_ids") is not None:
        _check_once("position_ids", kwargs["position_ids"], _check_one_sequence_per_row)
    window, offsets = _layer_offsets(module, query.device)
    if window is None:  # dense: a window over every key is causal attention
        window = key.shape[2]
    # (batch, seqlen, heads, head_dim) views: the kernels take these strides without a copy.
    out = fibsparse_attn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), window, offsets,
                         softmax_scale=scaling)
    return out, None
