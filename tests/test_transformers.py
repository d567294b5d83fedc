"""attn_implementation="fibsparse" in Hugging Face transformers models
(fibsparse_ext.integrations.transformers): the same logits and gradients as
the model whose attention is the float64 reference, padding, generation, and
save/load. Runs where transformers is installed (the `transformers` extra)."""
import copy
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask  # noqa: E402

from fibsparse_ext import fibsparse_attn_ref  # noqa: E402
from fibsparse_ext.integrations.transformers import (enable_fibsparse, fibsparse_attention_forward,  # noqa: E402
                                                     register, schedule_of)

CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
}
SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024, attention_dropout=0.0)
PATTERN = dict(schedule="stagger", window=8, max_distance=200)


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The same layer's pattern through the pure-PyTorch reference."""
    schedule = schedule_of(module.config)
    out = fibsparse_attn_ref(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), schedule.window,
                             schedule.offsets(module.layer_idx), softmax_scale=scaling)
    return out, None


AttentionInterface.register("fibsparse_reference", reference_attention)
AttentionMaskInterface.register("fibsparse_reference", flash_attention_mask)


def model_pair(family, pattern=PATTERN, dtype=torch.float64):
    """The same weights twice: fibsparse attention, and the reference."""
    torch.manual_seed(0)
    config = CONFIGS[family]()
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).to(dtype)  # a model keeps the config it gets
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(config)).to(dtype)
    reference.load_state_dict(model.state_dict())
    enable_fibsparse(model, **pattern)
    reference.config.fibsparse = model.config.fibsparse
    reference.set_attn_implementation("fibsparse_reference")
    return model, reference


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_logits_and_gradients_equal_the_reference(family):
    model, reference = model_pair(family)
    assert model.config._attn_implementation == "fibsparse"
    assert reference.config._attn_implementation == "fibsparse_reference"
    ids = torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(1))
    results = []
    for m in (model, reference):
        m.zero_grad()
        logits = m(ids).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (logits, grads), (ref_logits, ref_grads) = results
    assert (logits - ref_logits).abs().max() <= 1e-10 * ref_logits.abs().max()
    for name, grad in grads.items():
        assert (grad - ref_grads[name]).abs().max() <= 1e-10 * ref_grads[name].abs().max() + 1e-14, name


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_dense_schedule_equals_sdpa(family):
    """With no offsets and a window over every key the pattern is causal attention."""
    torch.manual_seed(0)
    config = CONFIGS[family]()
    sdpa = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    model.load_state_dict(sdpa.state_dict())
    enable_fibsparse(model, schedule="dense")
    ids = torch.randint(0, 97, (2, 64), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(model(ids).logits, sdpa(ids).logits, rtol=1e-4, atol=1e-5)


def test_right_padded_batch_matches_each_sequence_alone():
    model, _ = model_pair("llama")
    lengths = [150, 90]
    ids = torch.randint(1, 97, (2, 150), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 150, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    batched = model(ids, attention_mask=mask).logits
    for b, n in enumerate(lengths):
        alone = model(ids[b:b + 1, :n]).logits
        assert (batched[b, :n] - alone[0]).abs().max() <= 1e-10 * alone.abs().max()


def test_what_the_pattern_cannot_honour_is_refused():
    model, _ = model_pair("llama")
    ids = torch.randint(1, 97, (2, 20))
    left_padded = torch.ones(2, 20, dtype=torch.long)
    left_padded[1, :5] = 0
    for _ in range(2):  # a refused mask is refused again (its check is not skipped as already done)
        with pytest.raises(ValueError, match="right-padded"):
            model(ids, attention_mask=left_padded)
    packed = torch.cat([torch.arange(12), torch.arange(8)])[None]
    with pytest.raises(ValueError, match="packed"):
        model(ids[:1], position_ids=packed)
    attention = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 10, 16, dtype=torch.float64)
    k = torch.randn(1, 2, 10, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="2-D padding mask"):
        fibsparse_attention_forward(attention, q, k, k, torch.ones(1, 1, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout"):
        fibsparse_attention_forward(attention, q, k, k, None, dropout=0.1)
    with pytest.raises(ValueError, match="output_attentions"):
        fibsparse_attention_forward(attention, q, k, k, None, output_attentions=True)
    with pytest.raises(ValueError, match="sliding_window"):
        fibsparse_attention_forward(attention, q, k, k, None, sliding_window=4)


def test_a_new_pattern_on_the_same_model_takes_effect():
    model, _ = model_pair("llama")
    ids = torch.randint(1, 97, (1, 120))
    first = model(ids).logits
    enable_fibsparse(model, schedule="fixed", window=4, max_distance=100)
    second = model(ids).logits
    fresh, _ = model_pair("llama", pattern=dict(schedule="fixed", window=4, max_distance=100))
    assert not torch.equal(first, second)
    assert torch.equal(second, fresh(ids).logits)


def test_a_model_without_a_pattern_is_refused():
    register()
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL), attn_implementation="fibsparse")
    with pytest.raises(ValueError, match="config.fibsparse"):
        model(torch.randint(1, 97, (1, 10)))


def test_enable_refuses_a_bad_pattern_and_changes_nothing():
    config = LlamaConfig(**SMALL)
    before = config.to_dict()
    with pytest.raises(ValueError, match="learned"):
        enable_fibsparse(config, schedule="learned", window=8, max_distance=100)
    with pytest.raises(ValueError, match="max_distance"):
        enable_fibsparse(config, schedule="stagger", window=8)
    with pytest.raises(ValueError, match="does not take"):
        enable_fibsparse(config, schedule="stagger", window=8, max_distance=100, dilation=2)
    assert config.to_dict() == before
    enable_fibsparse(config, **PATTERN)  # a config: the models built from it use the pattern
    assert AutoModelForCausalLM.from_config(config).config._attn_implementation == "fibsparse"


def test_greedy_generation_equals_the_reference():
    model, reference = model_pair("qwen2")
    prompt = torch.randint(1, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    settings = dict(max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **settings), reference.generate(prompt, **settings))


def test_save_and_load_keep_the_pattern(tmp_path):
    model, _ = model_pair("mistral")
    ids = torch.randint(1, 97, (1, 60))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="fibsparse", dtype=torch.float64)
    assert loaded.config.fibsparse == PATTERN
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_whole_model_compiles_without_graph_breaks():
    model, _ = model_pair("llama", dtype=torch.float32)
    ids = torch.randint(1, 97, (2, 64), generator=torch.Generator().manual_seed(5))
    explanation = torch._dynamo.explain(model)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    assert torch.allclose(compiled(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)


def test_continue_pretraining_example_runs(tmp_path):
    """examples/continue_pretraining.py, a few steps at a short length."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "continue_pretraining.py"
    spec = importlib.util.spec_from_file_location("continue_pretraining", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--steps", "2", "--length", "32", "--batch-size", "2", "--eval-windows", "2",
                            "--device", "cpu", "--out", str(tmp_path)])
    assert results["lengths"] == [32, 64, 128]
    for implementation in ("fibsparse", "sdpa"):
        assert len(results[implementation]) == 3 and all(math.isfinite(p) for p in results[implementation])
    assert (tmp_path / "results.json").exists()
