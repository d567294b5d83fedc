"""attn_implementation="fibsparse" in Hugging Face transformers models
(fibsparse_ext.integrations.transformers): the same logits and gradients as
the model whose attention is the float64 reference, padding, generation,
save/load, and the learned schedule's alphas as model parameters. Runs where
transformers is installed (the `transformers` extra)."""
import copy
import inspect
import math
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask  # noqa: E402

from fibsparse_ext import fibsparse_attn_ref  # noqa: E402
from utils import rel_err, requires_cuda  # noqa: E402
from fibsparse_ext.integrations.transformers import (ALPHA, FibSparseCache, attention_modules,  # noqa: E402
                                                     enable_fibsparse, fibsparse_attention_forward, register,
                                                     schedule_of)

CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
}
SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024, attention_dropout=0.0)
PATTERN = dict(schedule="stagger", window=8, max_distance=200)
LEARNED = dict(schedule="learned", window=8, max_distance=200, alpha=0.97)


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The same layer's pattern through the pure-PyTorch reference; a learned
    layer attends at alpha * b_k (schedules.py), differentiable in alpha."""
    schedule = schedule_of(module.config)
    if schedule.is_learned:
        base = torch.tensor(schedule.base_distances(module.layer_idx), dtype=torch.float64, device=query.device)
        offsets = getattr(module, ALPHA) * base
        if offsets.requires_grad:  # d loss / d position, for the bf16 tests' error scale
            offsets.retain_grad()
            module.reference_positions = offsets
    else:
        offsets = schedule.offsets(module.layer_idx)
    window = key.shape[2] if schedule.is_dense else schedule.window  # dense: a window over every key
    out = fibsparse_attn_ref(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), window, offsets,
                             softmax_scale=scaling)
    return out, None


AttentionInterface.register("fibsparse_reference", reference_attention)
AttentionMaskInterface.register("fibsparse_reference", flash_attention_mask)


def model_pair(family, pattern=PATTERN, dtype=torch.float64):
    """The same weights twice: fibsparse attention, and the reference."""
    torch.manual_seed(0)
    config = CONFIGS[family]()
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).to(dtype)  # a model keeps the config it gets
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(config)).to(dtype)
    enable_fibsparse(model, **pattern)
    enable_fibsparse(reference, **pattern)  # a learned pattern's alphas
    reference.set_attn_implementation("fibsparse_reference")
    reference.load_state_dict(model.state_dict())
    return model, reference


def learned_alphas(model):
    return [getattr(module, ALPHA) for module in attention_modules(model)]


def move_alphas_off_the_grid(model, seed, margin=1e-3):
    """Sets each layer's alpha to a fresh value within 5% of its initial one,
    with no position alpha * b_k within `margin` of an integer: at an integer
    the interpolation weights have a kink (the derivative is one-sided), and
    a trained alpha is almost never there."""
    generator = torch.Generator().manual_seed(seed)
    schedule = schedule_of(model.config)
    with torch.no_grad():
        for module in attention_modules(model):
            base = torch.tensor(schedule.base_distances(module.layer_idx), dtype=torch.float64)
            while True:
                alpha = schedule.alpha(module.layer_idx) * (0.95 + 0.1 * torch.rand((), generator=generator).item())
                fraction = (alpha * base) % 1
                if bool(((fraction > margin) & (fraction < 1 - margin)).all()):
                    break
            getattr(module, ALPHA).fill_(alpha)


def weighted_sum(logits):
    """A loss whose gradient reaches every logit with a different weight."""
    return (logits * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype, device=logits.device)).sum()


@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_logits_and_gradients_equal_the_reference(family, pattern):
    model, reference = model_pair(family, pattern)
    if pattern is LEARNED:
        move_alphas_off_the_grid(model, seed=6)
        reference.load_state_dict(model.state_dict())
    assert model.config._attn_implementation == "fibsparse"
    assert reference.config._attn_implementation == "fibsparse_reference"
    ids = torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(1))
    results = []
    for m in (model, reference):
        m.zero_grad()
        logits = m(ids).logits
        weighted_sum(logits).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (logits, grads), (ref_logits, ref_grads) = results
    assert set(grads) == set(ref_grads)
    assert (logits - ref_logits).abs().max() <= 1e-10 * ref_logits.abs().max()
    for name, grad in grads.items():
        assert (grad - ref_grads[name]).abs().max() <= 1e-10 * ref_grads[name].abs().max() + 1e-14, name
    if pattern is LEARNED:  # the alphas' gradients were compared above; they must not vanish
        assert all(alpha.grad.abs() > 0 for alpha in learned_alphas(model))


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


@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
def test_left_padded_batch_matches_each_sequence_alone(pattern):
    model, _ = model_pair("llama", pattern)
    lengths = [150, 90, 1]
    ids = torch.randint(1, 97, (3, 150), generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(3, 150, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, 150 - n:] = 1
    # Positions from each row's first real token, as generate() makes them (the
    # model's float32 rotary tables differ in rounding at other absolute positions).
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(ids, attention_mask=mask, position_ids=position_ids).logits
    for b, n in enumerate(lengths):
        alone = model(ids[b:b + 1, 150 - n:]).logits
        assert (batched[b, 150 - n:] - alone[0]).abs().max() <= 1e-10 * alone.abs().max()


def test_left_padded_batch_under_inference_mode():
    """A mask made under torch.inference_mode has no version counter: the
    packing found for it is not kept, and the result is the same."""
    model, _ = model_pair("llama")
    ids = torch.randint(1, 97, (2, 30), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :7] = 0
    expected = model(ids, attention_mask=mask).logits
    with torch.inference_mode():
        inference_mask = mask.clone()
        for _ in range(2):
            assert torch.equal(model(ids, attention_mask=inference_mask).logits, expected)


@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
def test_left_padded_generation_equals_each_prompt_alone(pattern):
    model, _ = model_pair("qwen2", pattern)
    prompts = [torch.randint(1, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in (40, 13)]
    ids = torch.zeros(2, 40, dtype=torch.long)
    mask = torch.zeros(2, 40, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, 40 - len(prompt):] = prompt
        mask[b, 40 - len(prompt):] = 1
    settings = dict(max_new_tokens=30, do_sample=False, pad_token_id=0)
    batched = model.generate(ids, attention_mask=mask, **settings)
    for b, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], **settings)
        assert torch.equal(batched[b, 40:], alone[0, len(prompt):])


def test_documents_packed_in_a_row_match_each_document_alone():
    """position_ids that restart (as DataCollatorWithFlattening packs a batch):
    each document's logits and the gradients are those of the documents alone."""
    model, _ = model_pair("mistral")
    lengths = [60, 1, 33]
    ids = torch.randint(1, 97, (1, sum(lengths)), generator=torch.Generator().manual_seed(6))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = model(ids, position_ids=position_ids).logits
    weighted_sum(packed).backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    start, alone = 0, []
    for n in lengths:
        alone.append(model(ids[:, start:start + n]).logits)
        start += n
    alone = torch.cat(alone, 1)
    weighted_sum(alone).backward()
    assert (packed - alone).abs().max() <= 1e-10 * alone.abs().max()
    for p, g in zip(model.parameters(), packed_grads):
        assert rel_err(g, p.grad) < 1e-10


def test_what_the_pattern_cannot_honour_is_refused():
    model, _ = model_pair("llama")
    ids = torch.randint(1, 97, (2, 20))
    holes = torch.ones(2, 20, dtype=torch.long)
    holes[1, 5:8] = 0
    for _ in range(2):  # a refused mask is refused again (its check is not skipped as already done)
        with pytest.raises(ValueError, match="padding between real tokens"):
            model(ids, attention_mask=holes)
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
    with pytest.raises(ValueError, match="alpha"):
        enable_fibsparse(config, schedule="learned", window=8, max_distance=100, alpha=-1.0)
    with pytest.raises(ValueError, match="max_distance"):
        enable_fibsparse(config, schedule="stagger", window=8)
    with pytest.raises(ValueError, match="does not take"):
        enable_fibsparse(config, schedule="stagger", window=8, max_distance=100, dilation=2)
    assert config.to_dict() == before
    enable_fibsparse(config, **PATTERN)  # a config: the models built from it use the pattern
    assert AutoModelForCausalLM.from_config(config).config._attn_implementation == "fibsparse"


@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
def test_greedy_generation_equals_the_reference(pattern):
    model, reference = model_pair("qwen2", pattern)
    if pattern is LEARNED:
        move_alphas_off_the_grid(model, seed=8)
        reference.load_state_dict(model.state_dict())
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


@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
def test_whole_model_compiles_without_graph_breaks(pattern):
    model, _ = model_pair("llama", pattern, dtype=torch.float32)
    ids = torch.randint(1, 97, (2, 64), generator=torch.Generator().manual_seed(5))
    explanation = torch._dynamo.explain(model)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    assert torch.allclose(compiled(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
def test_a_forward_reads_no_offsets_on_the_host(monkeypatch, pattern):
    """A layer's offsets are built valid from its schedule (or alpha * b_k), so
    no forward reads their values on the host (a device sync per layer on CUDA;
    the kernels check them on the device), in a plain or a left-padded batch."""
    import fibsparse_ext._offsets as offsets_module
    model, _ = model_pair("llama", pattern)

    def refuse(*args, **kwargs):
        raise AssertionError("offsets were read on the host")
    monkeypatch.setattr(offsets_module, "check_offset_values", refuse)
    monkeypatch.setattr(offsets_module, "_check_row", refuse)
    ids = torch.randint(1, 97, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :9] = 0
    weighted_sum(model(ids).logits).backward()
    model(ids, attention_mask=mask)


# The learned schedule: one alpha per attention module, a model parameter.

@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_learned_pattern_gives_each_attention_module_an_alpha_parameter(family):
    model, _ = model_pair(family, LEARNED)
    schedule = schedule_of(model.config)
    names = {f"model.layers.{layer}.self_attn.{ALPHA}" for layer in range(SMALL["num_hidden_layers"])}
    assert {name for name, _ in model.named_parameters() if name.endswith(ALPHA)} == names
    assert names <= set(model.state_dict())
    for module in attention_modules(model):
        alpha = getattr(module, ALPHA)
        assert alpha.requires_grad and alpha.dtype == torch.float64
        assert alpha.item() == schedule.alpha(module.layer_idx)
    config = enable_fibsparse(CONFIGS[family](), **LEARNED)  # a model built from a learned config has them too
    built = AutoModelForCausalLM.from_config(config)
    assert {name for name, _ in built.named_parameters() if name.endswith(ALPHA)} == names


def rms_norms_in_float64(model):
    """The models' RMSNorms compute in float32 even in a float64 model; that
    rounding (1e-7 relative) would swamp a central difference of step 1e-6."""
    def forward(self, hidden):
        return self.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(forward, module)


def test_alpha_gradient_equals_finite_differences():
    """d loss / d alpha from the op's d(position), against central differences
    in float64 (the loss is smooth in alpha while no position crosses an integer)."""
    model, _ = model_pair("llama", LEARNED)
    move_alphas_off_the_grid(model, seed=9)
    rms_norms_in_float64(model)
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(10))
    model.zero_grad()
    weighted_sum(model(ids).logits).backward()
    step = 1e-6  # moves a position by at most 2e-4, less than the distance to the next integer
    for alpha in learned_alphas(model):
        value = alpha.item()
        losses = []
        with torch.no_grad():
            for shifted in (value + step, value - step):
                alpha.fill_(shifted)
                losses.append(weighted_sum(model(ids).logits).item())
            alpha.fill_(value)
        difference = (losses[0] - losses[1]) / (2 * step)
        assert abs(alpha.grad.item() - difference) <= 1e-7 * abs(difference)


def test_an_optimizer_step_moves_the_alphas_and_the_forward_reads_them():
    model, reference = model_pair("qwen2", LEARNED)
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(11))
    alphas = learned_alphas(model)
    before = [alpha.item() for alpha in alphas]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits = model(ids).logits
    weighted_sum(logits).backward()
    optimizer.step()
    for alpha, old in zip(alphas, before):  # Adam's first step is about lr against the gradient's sign
        assert alpha.item() != old and math.copysign(1, alpha.item() - old) == -math.copysign(1, alpha.grad.item())
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        after = model(ids).logits
        assert not torch.equal(after, logits)
        assert (after - reference(ids).logits).abs().max() <= 1e-10 * after.abs().max()


def test_trained_alphas_are_saved_and_loaded(tmp_path):
    model, _ = model_pair("mistral", LEARNED)
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(12))
    optimizer = torch.optim.AdamW(learned_alphas(model), lr=1e-2)
    weighted_sum(model(ids).logits).backward()
    optimizer.step()
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith(ALPHA)}
    assert all(alpha.item() != LEARNED["alpha"] for alpha in trained.values())
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(ids).logits
    for implementation in ("fibsparse", "sdpa"):  # the alphas follow the config, whatever the implementation
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation,
                                                      dtype=torch.float64)
        assert loaded.config.fibsparse == LEARNED
        parameters = dict(loaded.named_parameters())
        for name, alpha in trained.items():
            assert torch.equal(parameters[name].detach(), alpha) and parameters[name].requires_grad, name
        loaded.set_attn_implementation("fibsparse")
        with torch.no_grad():
            assert (loaded(ids).logits - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_a_checkpoint_without_alphas_starts_them_at_the_patterns_alpha(tmp_path):
    """transformers fills a parameter its checkpoint lacks with uninitialised
    memory and leaves it to the model's _init_weights, which knows no alpha."""
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL)).double()
    plain.save_pretrained(tmp_path)
    config = LlamaConfig.from_pretrained(tmp_path)
    config.fibsparse = dict(LEARNED)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, config=config, attn_implementation="fibsparse",
                                                        dtype=torch.float64, output_loading_info=True)
    assert info["missing_keys"] == {f"model.layers.{layer}.self_attn.{ALPHA}" for layer in range(2)}
    assert [alpha.item() for alpha in learned_alphas(loaded)] == [LEARNED["alpha"]] * 2
    enable_fibsparse(plain, **LEARNED)
    ids = torch.randint(0, 97, (1, 100), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        expected = plain(ids).logits
        assert (loaded(ids).logits - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_enable_again_keeps_trained_alphas_and_a_new_pattern_resets_or_removes_them():
    model, _ = model_pair("llama", LEARNED)
    alphas = learned_alphas(model)
    move_alphas_off_the_grid(model, seed=14)
    trained = [alpha.item() for alpha in alphas]
    enable_fibsparse(model, **LEARNED)  # the same pattern: training goes on
    assert [alpha.item() for alpha in learned_alphas(model)] == trained
    enable_fibsparse(model, **{**LEARNED, "alpha": 1.1})  # a new one starts over, in the same parameters
    assert all(new is old for new, old in zip(learned_alphas(model), alphas))
    assert [alpha.item() for alpha in alphas] == [1.1] * 2
    enable_fibsparse(model, **PATTERN)
    assert not [name for name, _ in model.named_parameters() if name.endswith(ALPHA)]
    fresh, _ = model_pair("llama")
    ids = torch.randint(1, 97, (1, 60))
    assert torch.equal(model(ids).logits, fresh(ids).logits)


def test_a_learned_pattern_without_alphas_is_refused():
    """A learned pattern written into the config of a built model, not through
    enable_fibsparse, has no parameters to read."""
    model, _ = model_pair("llama")
    model.config.fibsparse = dict(LEARNED)
    with pytest.raises(ValueError, match=f"no {ALPHA} parameter"):
        model(torch.randint(1, 97, (1, 20)))


# FibSparseCache: generation whose memory stays flat.

CACHE_PATTERNS = {
    "stagger": dict(schedule="stagger", window=8, max_distance=60),
    "learned": dict(schedule="learned", window=8, max_distance=60, alpha=0.97),
}


class RecordCacheSizes(transformers.LogitsProcessor):
    """Records the tokens each layer of `cache` holds, at every generated token."""

    def __init__(self, cache):
        self.cache, self.sizes = cache, []

    def __call__(self, input_ids, scores):
        self.sizes.append([layer.keys.shape[-2] for layer in self.cache.layers])
        return scores


def generate(model, prompt, cache=None, new_tokens=150, processors=()):
    """Greedy generation of exactly `new_tokens` (no end-of-sequence stop), with
    each step's logits."""
    # transformers renamed generate's past_key_values argument to cache.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    extra = {} if cache is None else {name: cache}
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, return_dict_in_generate=True, output_logits=True,
                         logits_processor=transformers.LogitsProcessorList(processors), **extra)
    return out.sequences, torch.stack(out.logits, 1)


def farthest_read(schedule, layer, alpha=None):
    """The farthest distance a layer reads, from docs/semantics.md: the band's
    window - 1, an integer offset itself, a fractional position p floor(p) + 1."""
    if schedule.is_learned:
        reach = [math.floor(p) + 1 for p in schedule.positions(layer, alpha)]
    else:
        reach = schedule.offsets(layer)
    return max([schedule.window - 1, *reach])


@pytest.mark.parametrize("name", sorted(CACHE_PATTERNS))
def test_generation_with_the_bounded_cache_equals_the_dense_cache(name):
    model, _ = model_pair("llama", CACHE_PATTERNS[name])
    if name == "learned":
        move_alphas_off_the_grid(model, seed=19)
    prompt = torch.randint(1, 97, (1, 30), generator=torch.Generator().manual_seed(20))
    cache = FibSparseCache(model)
    sequence, logits = generate(model, prompt, cache)
    dense_sequence, dense_logits = generate(model, prompt)
    assert 30 + 150 > 2 * max(cache.capacities)  # far past what the cache keeps
    assert torch.equal(sequence, dense_sequence)
    assert (logits - dense_logits).abs().max() <= 1e-12 * dense_logits.abs().max()


@pytest.mark.parametrize("name", sorted(CACHE_PATTERNS))
def test_the_bounded_cache_keeps_what_the_pattern_reads_and_no_more(name):
    model, _ = model_pair("qwen2", CACHE_PATTERNS[name])
    if name == "learned":
        move_alphas_off_the_grid(model, seed=21)
    schedule = schedule_of(model.config)
    alphas = ([alpha.item() for alpha in learned_alphas(model)] if name == "learned"
              else [None] * SMALL["num_hidden_layers"])
    bound = [farthest_read(schedule, layer, alpha) for layer, alpha in enumerate(alphas)]
    cache = FibSparseCache(model)
    assert cache.capacities == bound
    record = RecordCacheSizes(cache)
    prompt = torch.randint(1, 97, (1, 30), generator=torch.Generator().manual_seed(22))
    _, logits = generate(model, prompt, cache, processors=[record])
    assert len(record.sizes) == 150
    for step, sizes in enumerate(record.sizes):  # the tokens before step's newest one
        assert sizes == [min(30 + step, kept) for kept in bound], step
    # One token fewer and the farthest reads go missing: the logits change.
    short = FibSparseCache(model)
    short.layers = [transformers.cache_utils.DynamicSlidingWindowLayer(sliding_window=kept) for kept in bound]
    _, short_logits = generate(model, prompt, short)
    assert (short_logits - logits).abs().max() > 1e-6 * logits.abs().max()


def test_the_bounded_cache_refuses_a_changed_pattern_or_alpha():
    model, _ = model_pair("llama", CACHE_PATTERNS["learned"])
    prompt = torch.randint(1, 97, (1, 20))
    cache = FibSparseCache(model)
    with torch.no_grad():
        learned_alphas(model)[1].add_(0.01)  # an optimizer step
    with pytest.raises(ValueError, match="changed since this FibSparseCache was built"):
        generate(model, prompt, cache, new_tokens=2)
    cache = FibSparseCache(model)
    enable_fibsparse(model, **CACHE_PATTERNS["stagger"])
    with pytest.raises(ValueError, match="changed since this FibSparseCache was built"):
        generate(model, prompt, cache, new_tokens=2)


# bf16 on CUDA: the tensor-core kernels. Their error is judged against the
# error sdpa (FlashAttention) shows against a float64 model with the same
# weights, on the same input: both models share the bf16 weights, activations,
# matmuls and norms, which give most of the error, and both attention kernels
# accumulate in float32 and round the probabilities and the output to bf16.
# Twice sdpa's error leaves room for a pattern that averages fewer keys per
# query; a wrong result (a key missed or misread, a gradient term dropped) is
# an error of order 1, some fifty times that bound.

CUDA_PATTERNS = {
    "dense": dict(schedule="dense"),
    "stagger": dict(schedule="stagger", window=16, max_distance=300),
    "learned": dict(schedule="learned", window=16, max_distance=300, alpha=0.97),
}


def float64_weights(family):
    """One model's float64 weights, with learned alphas moved off the grid and
    onto bf16 values, so that the bf16 models attend at the same positions."""
    model, _ = model_pair(family, CUDA_PATTERNS["learned"])
    move_alphas_off_the_grid(model, seed=15, margin=0.01)
    with torch.no_grad():
        for alpha in learned_alphas(model):
            alpha.copy_(alpha.to(torch.bfloat16))
    return model.state_dict()


def built(family, pattern, implementation, weights, dtype):
    """A CUDA model of `family` with `weights` (those it has) in `dtype`."""
    model = AutoModelForCausalLM.from_config(CONFIGS[family]())
    if pattern is not None:
        enable_fibsparse(model, **pattern)
    model.set_attn_implementation(implementation)
    model.load_state_dict({name: weights[name] for name in model.state_dict()})
    return model.to(device="cuda", dtype=dtype)


def logits_and_gradients(model, ids):
    model.zero_grad()
    logits = model(ids).logits
    weighted_sum(logits).backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters()}


def bf16_errors(family, pattern, implementation, reference_implementation, weights, ids):
    """Relative errors of a bf16 model's logits and of each parameter's
    gradient against the float64 model with the same weights. An alpha's
    gradient is a sum of the terms b_k * d loss / d position_k of nearly
    cancelling signs, so its error is taken relative to the sum of their
    magnitudes (the float64 reference's positions give them), as a tensor's
    is relative to its norm."""
    logits, grads = logits_and_gradients(built(family, pattern, implementation, weights, torch.bfloat16), ids)
    reference = built(family, pattern, reference_implementation, weights, torch.float64)
    ref_logits, ref_grads = logits_and_gradients(reference, ids)
    errors = {name: rel_err(grad, ref_grads[name]) for name, grad in grads.items() if not name.endswith(ALPHA)}
    for module in attention_modules(reference):
        alpha = getattr(module, ALPHA, None)
        if alpha is not None:
            positions = module.reference_positions
            terms = (positions.grad * positions.detach() / alpha.detach()).abs().sum()
            name = f"model.layers.{module.layer_idx}.self_attn.{ALPHA}"
            errors[name] = ((grads[name].double() - alpha.grad).abs() / terms).item()
    return rel_err(logits, ref_logits), errors


@requires_cuda
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_bf16_on_cuda_is_as_close_to_float64_as_sdpa(family):
    weights = float64_weights(family)
    ids = torch.randint(0, 97, (2, 384), generator=torch.Generator().manual_seed(16)).cuda()
    sdpa_logits, sdpa_grads = bf16_errors(family, None, "sdpa", "sdpa", weights, ids)
    assert 0 < sdpa_logits < 1 and 0 < max(sdpa_grads.values()) < 1  # a scale, neither exact nor broken
    for name, pattern in CUDA_PATTERNS.items():
        # The dense pattern is causal attention: its float64 model is sdpa's own.
        reference = "sdpa" if name == "dense" else "fibsparse_reference"
        logits, grads = bf16_errors(family, pattern, "fibsparse", reference, weights, ids)
        assert logits <= 2 * sdpa_logits, (name, logits, sdpa_logits)
        assert len(grads) == len(sdpa_grads) + (SMALL["num_hidden_layers"] if name == "learned" else 0)
        for parameter, error in grads.items():
            assert error <= 2 * max(sdpa_grads.values()), (name, parameter, error, max(sdpa_grads.values()))


@requires_cuda
@pytest.mark.parametrize("pattern", [PATTERN, LEARNED], ids=["stagger", "learned"])
def test_generation_on_cuda_reads_what_the_whole_sequence_reads(pattern):
    """Greedy generate() in bf16, with transformers' dense cache and with
    FibSparseCache: the logits of each step (a query against the cached keys)
    are as close to the float64 model's logits for the finished sequence as
    one bf16 forward of it is. The prompt and the new tokens reach past
    max_distance, so every offset is read and the bounded cache drops tokens."""
    weights, _ = model_pair("qwen2", pattern)
    if pattern is LEARNED:
        move_alphas_off_the_grid(weights, seed=17, margin=0.01)
        with torch.no_grad():
            for alpha in learned_alphas(weights):
                alpha.copy_(alpha.to(torch.bfloat16))
    weights = weights.state_dict()
    model = built("qwen2", pattern, "fibsparse", weights, torch.bfloat16)
    reference = built("qwen2", pattern, "fibsparse_reference", weights, torch.float64)
    prompt = torch.randint(1, 97, (1, 150), generator=torch.Generator().manual_seed(18)).cuda()
    for cache in (None, FibSparseCache(model)):
        sequence, steps = generate(model, prompt, cache, new_tokens=100)  # steps: the logits each token came from
        assert sequence.shape == (1, 250) and torch.equal(sequence[:, :150], prompt)
        assert torch.equal(steps.argmax(-1), sequence[:, 150:])
        if cache is not None:
            assert all(layer.keys.shape[-2] == kept < 249 for layer, kept in zip(cache.layers, cache.capacities))
        with torch.no_grad():
            whole = model(sequence).logits[:, 149:-1]
            expected = reference(sequence).logits[:, 149:-1]
        assert rel_err(steps, expected) <= 2 * rel_err(whole, expected)


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


@requires_cuda
def test_left_padded_and_packed_batches_on_cuda():
    """The packed kernels in bf16 on CUDA: a left-padded batch's rows and a
    packed row's documents are as close to each sequence alone as two bf16
    runs of different shapes are (the float64 versions are equal, above)."""
    model, _ = model_pair("llama", dtype=torch.bfloat16)
    model = model.cuda()
    generator = torch.Generator().manual_seed(7)
    lengths = [300, 77]
    ids = torch.randint(1, 97, (2, 300), generator=generator).cuda()
    mask = torch.zeros(2, 300, dtype=torch.long, device="cuda")
    for b, n in enumerate(lengths):
        mask[b, 300 - n:] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=position_ids).logits.float()
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, 300 - n:]).logits.float()
            assert rel_err(batched[b, 300 - n:], alone[0]) < 2e-2
        packed_ids = torch.cat([ids[0, :200], ids[1, :100]])[None]
        packed = model(packed_ids, position_ids=torch.cat([torch.arange(200), torch.arange(100)])[None].cuda())
        alone = torch.cat([model(packed_ids[:, :200]).logits, model(packed_ids[:, 200:]).logits], 1)
        assert rel_err(packed.logits.float(), alone.float()) < 2e-2
