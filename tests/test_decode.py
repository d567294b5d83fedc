"""Decoding with KV caches: the decode attention against the full-sequence
reference at every position (ring wrap-around, ragged batches, GQA, integer
and fractional offsets), bounded cache sizes, and generate() against full
recomputation."""
import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from fibsparse_ext.accuracy import TOLERANCE
from fibsparse_ext.decode import KVCache, fibsparse_attn_with_kvcache, required_capacity
from fibsparse_ext.lm.generation import generate
from fibsparse_ext.lm.models import FibSparseLM, LMConfig
from utils import DEVICES, random_qkv, rel_err


@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("offsets", [[5, 9, 17], [4.5, 9.25, 16.75], [[5, 9, 17], [6, 11, -1], [7, -1, -1],
                                                                         [8, 13, 21]]],
                         ids=["integer", "fractional", "per_head"])
@pytest.mark.parametrize("new_tokens", [1, 3])
def test_decode_matches_full_attention_at_every_position(ring, offsets, new_tokens):
    """Feed a ragged batch through the cache a few tokens at a time; every
    output equals the reference run on the whole sequence. The ring is as
    small as allowed, so it wraps around many times."""
    torch.manual_seed(0)
    window, batch, heads, heads_kv, length = 4, 3, 4, 2, 60
    q, k, v = random_qkv(batch, length, heads, heads_kv, 16, torch.float64, "cpu", requires_grad=False)
    expected = fibsparse_attn_ref(q, k, v, window, offsets)
    capacity = required_capacity(window, torch.tensor(offsets), new_tokens) if ring else length
    cache = KVCache(batch, capacity, heads_kv, 16, ring=ring, dtype=torch.float64)
    if ring:
        assert capacity < 25  # far fewer slots than tokens: wrap-around happens
    # Each sequence takes its own chunk sizes, so the sequences' lengths differ at every call.
    for b in range(batch):
        begins = [0] + list(range(b % new_tokens + 1, length, new_tokens))
        for begin, end in zip(begins, begins[1:] + [length]):
            if b % 2:  # write first, then attend
                row = KVCache.wrap(cache.k[b:b + 1], cache.v[b:b + 1], cache.seqlens[b:b + 1], ring)
                row.write(k[b:b + 1, begin:end], v[b:b + 1, begin:end])
                out = fibsparse_attn_with_kvcache(q[b:b + 1, begin:end], cache.k[b:b + 1], cache.v[b:b + 1],
                                                  cache.seqlens[b:b + 1], window, offsets, ring=ring)
            else:  # append and attend in one call, as flash_attn_with_kvcache(k=, v=)
                out = fibsparse_attn_with_kvcache(q[b:b + 1, begin:end], cache.k[b:b + 1], cache.v[b:b + 1],
                                                  cache.seqlens[b:b + 1], window, offsets, ring=ring,
                                                  k=k[b:b + 1, begin:end], v=v[b:b + 1, begin:end])
                cache.seqlens[b] += end - begin
            assert rel_err(out, expected[b:b + 1, begin:end]) < 1e-12, (b, begin)
    assert cache.seqlens.tolist() == [length] * batch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("offsets", [[5, 8], [[4.5, 8.25], [6.75, -1]]], ids=["integer", "fractional_per_head"])
def test_batched_ragged_call(device, ring, offsets):
    """One call for a batch whose sequences have different lengths, two new
    tokens each; in a ring, every sequence has wrapped by a different amount."""
    torch.manual_seed(1)
    q, k, v = random_qkv(3, 30, 2, 1, 16, torch.float64, device, requires_grad=False)
    lengths = torch.tensor([30, 11, 2], device=device)
    capacity = 12 if ring else 30
    cache = KVCache(3, capacity, 1, 16, ring=ring, dtype=torch.float64, device=device)
    for b, n in enumerate(lengths.tolist()):  # sequence b holds tokens 0 .. n-1
        row = KVCache(1, capacity, 1, 16, ring=ring, dtype=torch.float64, device=device)
        row.write(k[b:b + 1, :n], v[b:b + 1, :n])
        cache.k[b], cache.v[b] = row.k[0], row.v[0]
    queries = torch.stack([q[b, n - 2:n] for b, n in enumerate(lengths.tolist())])
    out = fibsparse_attn_with_kvcache(queries, cache.k, cache.v, lengths, 3, offsets, ring=ring)
    for b, n in enumerate(lengths.tolist()):
        expected = fibsparse_attn_ref(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], 3, offsets)[:, -2:]
        assert rel_err(out[b:b + 1], expected) < 1e-12, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("fractional", [False, True])
def test_low_precision_decode_within_tolerance(device, dtype, head_dim, fractional):
    """The last 2 tokens of 3 ragged sequences in a wrapped ring, in each dtype,
    against the float64 reference on the whole sequences."""
    torch.manual_seed(2)
    window, offsets = 8, ([11.5, 20.25, 33.75] if fractional else [11, 20, 34])
    q, k, v = random_qkv(3, 90, 4, 2, head_dim, torch.float64, "cpu", requires_grad=False)
    lengths = [90, 47, 2]
    cache = KVCache(3, 40, 2, head_dim, ring=True, dtype=dtype, device=device)
    for b, n in enumerate(lengths):
        row = KVCache.wrap(cache.k[b:b + 1], cache.v[b:b + 1], cache.seqlens[b:b + 1], ring=True)
        row.write(k[b:b + 1, :n].to(device), v[b:b + 1, :n].to(device))
    queries = torch.stack([q[b, n - 2:n] for b, n in enumerate(lengths)]).to(device, dtype)
    out = fibsparse_attn_with_kvcache(queries, cache.k, cache.v, cache.seqlens, window, offsets, ring=True)
    for b, n in enumerate(lengths):
        expected = fibsparse_attn_ref(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], window, offsets)[:, -2:]
        assert rel_err(out[b:b + 1], expected) < TOLERANCE[dtype], b


def test_integer_offsets_beyond_float32_precision():
    """Distances above 2^24 stay exact in float32 decode (no rounding to a neighbour row)."""
    k = torch.randn(1, 2**24 + 3, 1, 2)
    q, v = torch.randn(1, 1, 1, 2), torch.randn_like(k)
    out = fibsparse_attn_with_kvcache(q, k, v, torch.tensor([2**24 + 3]), 1, [2**24 + 1])
    expected = fibsparse_attn_ref(q, k[:, [1, 2**24 + 2]], v[:, [1, 2**24 + 2]], 1, [1])
    assert rel_err(out, expected) < 1e-6


def test_bad_decode_input():
    q, k, v = random_qkv(2, 1, 2, 2, 16, torch.float32, "cpu", requires_grad=False)
    cache = KVCache(2, 8, 2, 16, ring=True)
    with pytest.raises(ValueError, match="cache too small: a ring must hold 18"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([3, 3]), 4, [9, 17], ring=True)
    with pytest.raises(ValueError, match="beyond the cache's capacity 8"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([3, 9]), 4, [5], ring=False)
    with pytest.raises(ValueError, match="cache_seqlens must be an integer tensor of shape \\(2,\\)"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([3.0, 3.0]), 4, [5])
    with pytest.raises(ValueError, match="count the 1 new token"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([0, 3]), 4, [5])
    with pytest.raises(ValueError, match="v_cache must have the shape of k_cache"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v[:, :4], torch.tensor([3, 3]), 4, [5])
    with pytest.raises(ValueError, match="cache full"):
        KVCache(1, 4, 1, 16, ring=False).write(torch.randn(1, 5, 1, 16), torch.randn(1, 5, 1, 16))
    with pytest.raises(ValueError, match=r"k and v must be \(batch, new, heads_kv, head_dim\)"):
        KVCache(1, 4, 2, 16, ring=True).write(torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16))
    with pytest.raises(ValueError, match="k and v must be given together"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([3, 3]), 4, [5], k=q)
    before = cache.k.clone()
    with pytest.raises(ValueError, match="cache too small"):  # refused before anything is written
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([3, 3]), 4, [9, 17], ring=True,
                                    k=q, v=q)
    assert torch.equal(cache.k, before)
    with pytest.raises(ValueError, match="q must be a 4-D tensor"):
        fibsparse_attn_with_kvcache(q[0], cache.k, cache.v, torch.tensor([3, 3]), 4, [5])
    with pytest.raises(ValueError, match="k_cache must have q's dtype"):
        fibsparse_attn_with_kvcache(q.double(), cache.k, cache.v, torch.tensor([3, 3]), 4, [5])


def test_bad_input_to_the_decode_op():
    """torch.ops.fibsparse.decode checks cache_seqlens itself, for callers that
    skip fibsparse_attn_with_kvcache (e.g. a serving loop)."""
    q, k, v = random_qkv(2, 1, 2, 2, 16, torch.float32, "cpu", requires_grad=False)
    cache = KVCache(2, 8, 2, 16, ring=True)
    offsets = torch.tensor([5], dtype=torch.int32)
    for lengths in (torch.tensor([3.0, 3.0]), torch.tensor([3]), torch.tensor([[3, 3]])):
        with pytest.raises(RuntimeError, match=r"cache_seqlens must be an int32 or int64 tensor of shape \(batch=2\)"):
            torch.ops.fibsparse.decode(q, cache.k, cache.v, lengths, offsets, [4], 0.25, True)
    # The op's own checks name its arguments, k_cache and v_cache.
    with pytest.raises(RuntimeError, match="k_cache must have q's dtype"):
        torch.ops.fibsparse.decode(q.double(), cache.k, cache.v, torch.tensor([3, 3]), offsets, [4], 0.25, True)
    with pytest.raises(RuntimeError, match="v_cache must have the shape of k_cache"):
        torch.ops.fibsparse.decode(q, cache.k, cache.v[:, :4], torch.tensor([3, 3]), offsets, [4], 0.25, True)


def test_more_bad_decode_and_generate_input():
    q, k, v = random_qkv(2, 1, 2, 2, 16, torch.float32, "cpu", requires_grad=False)
    cache = KVCache(2, 8, 2, 16, ring=False)
    with pytest.raises(ValueError, match="softmax_scale must be finite"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([3, 3]), 4, [5], softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="cache_seqlens must be an integer tensor"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, torch.tensor([True, True]), 4, [5])
    with pytest.raises(ValueError, match="capacity must be an int >= 1"):
        KVCache(1, 0, 1, 16, ring=True)
    model = FibSparseLM(LMConfig.preset("tiny"))
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, torch.randint(0, 256, (5,)), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0|temperature must be a finite number >= 0"):
        generate(model, torch.randint(0, 256, (1, 5)), -1)


def test_refused_decode_call_leaves_caches_unchanged():
    model = FibSparseLM(LMConfig.preset("tiny", schedule="stagger"))
    caches = model.make_caches(1, 100)
    model(torch.randint(0, 256, (1, 10)), caches)
    with pytest.raises(ValueError, match="cache too small"):
        model(torch.randint(0, 256, (1, 4)), caches)  # the rings were sized for one token per call
    assert all(c.seqlens.tolist() == [10] for c in caches)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        generate(model, torch.randint(0, 256, (1, 3)), 2, temperature=1.0, top_k=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["stagger", "learned", "pow2-coprime", "dense"])
def test_greedy_generate_matches_full_recomputation(device, variant):
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", **LMConfig.parse_variant(variant))).double().to(device)
    prompt = torch.randint(0, 256, (2, 10), device=device)
    generated = generate(model, prompt, max_new_tokens=100)  # past the ring size and the training length
    assert generated.shape == (2, 110) and torch.equal(generated[:, :10], prompt)
    with torch.no_grad():
        for n in range(10, 110):
            assert torch.equal(model(generated[:, :n])[:, -1].argmax(-1), generated[:, n]), n


def test_sparse_caches_are_bounded():
    model = FibSparseLM(LMConfig.preset("tiny", schedule="stagger"))
    short, long = model.make_caches(1, 100), model.make_caches(1, 10**6)
    for a, b, block in zip(short, long, model.blocks):
        assert a.k.shape == b.k.shape and a.ring
        assert a.capacity == int(block.attn.offsets.max()) + 1
    dense = FibSparseLM(LMConfig.preset("tiny", schedule="dense")).make_caches(1, 500)
    assert all(c.capacity == 500 and not c.ring for c in dense)


def test_sampling_is_reproducible_and_respects_top_k():
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny"))
    prompt = torch.randint(0, 256, (3, 5))
    a = generate(model, prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    top1 = generate(model, prompt, 20, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(top1, generate(model, prompt, 20))  # top_k=1 is greedy
