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
from utils import DEVICES, random_qkv, rel_err, replay_decode_steps_without_sync, requires_cuda


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


# The checks' fast path: what a repeated call skips, and what it must not.

def _caches_and_step_inputs(device, ring, dtype=torch.float64):
    """A ragged batch of 3 sequences in a cache (wrapped, for a ring), the next
    token's q, k, v, and the reference output of that token."""
    torch.manual_seed(3)
    window, offsets, lengths = 3, [5, 9], [30, 11, 2]
    q, k, v = random_qkv(3, 31, 2, 1, 16, dtype, "cpu", requires_grad=False)
    cache = KVCache(3, 12 if ring else 40, 1, 16, ring=ring, dtype=dtype, device=device)
    for b, n in enumerate(lengths):
        row = KVCache.wrap(cache.k[b:b + 1], cache.v[b:b + 1], cache.seqlens[b:b + 1], ring)
        row.write(k[b:b + 1, :n].to(device), v[b:b + 1, :n].to(device))
    new = [torch.stack([t[b, n] for b, n in enumerate(lengths)])[:, None].to(device) for t in (q, k, v)]
    expected = torch.cat([fibsparse_attn_ref(q[b:b + 1, :n + 1], k[b:b + 1, :n + 1], v[b:b + 1, :n + 1], window,
                                             offsets)[:, -1:] for b, n in enumerate(lengths)])
    return cache, new, window, offsets, expected.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("tensor_offsets", [False, True])
def test_repeated_and_unchecked_calls_equal_the_checked_call(device, ring, tensor_offsets):
    """A call whose checks were memoized (second call), one with
    check_lengths=False and KVCache.attend give the checked call's result
    (the reference's), and write the same cache."""
    results, caches = [], []
    for how in ("first", "repeated", "unchecked", "owner"):
        cache, (q, k, v), window, offsets, expected = _caches_and_step_inputs(device, ring)
        offsets = torch.tensor(offsets, dtype=torch.int32, device=device) if tensor_offsets else offsets
        if how == "repeated":
            fibsparse_attn_with_kvcache(q, cache.k.clone(), cache.v.clone(), cache.seqlens, window, offsets,
                                        ring=ring, k=k, v=v)
        if how == "owner":
            out = cache.attend(q, k, v, window, offsets)
        else:
            out = fibsparse_attn_with_kvcache(q, cache.k, cache.v, cache.seqlens, window, offsets, ring=ring, k=k,
                                              v=v, check_lengths=how != "unchecked")
            cache.seqlens += 1
        assert rel_err(out, expected) < 1e-12, how
        results.append(out)
        caches.append(cache)
    for out, cache in zip(results[1:], caches[1:]):
        assert torch.equal(out, results[0])
        assert torch.equal(cache.k, caches[0].k) and torch.equal(cache.v, caches[0].v)
        assert cache.seqlens.tolist() == caches[0].seqlens.tolist()


def _refused_calls(cache, q, k, v):
    """(what, call) pairs, each refused before anything is written."""
    lengths = cache.seqlens
    call = dict(window=3, offsets=[5, 9], ring=cache.ring, k=k, v=v)
    return [
        ("length past a linear cache" if not cache.ring else "ring too small for the offsets",
         lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths + (100 if not cache.ring else 0),
                                             **dict(call, offsets=[5, 90] if cache.ring else call["offsets"]))),
        ("negative length", lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths - 100, **call)),
        ("queries past the length", lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths - lengths,
                                                                         **dict(call, k=None, v=None))),
        ("k of another shape", lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths,
                                                                    **dict(call, k=k[:, :, :, :8]))),
        ("v of another dtype", lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths,
                                                                    **dict(call, v=v.float()))),
        ("q of another dtype", lambda: fibsparse_attn_with_kvcache(q.float(), cache.k, cache.v, lengths, **call)),
        ("offsets not increasing", lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths,
                                                                        **dict(call, offsets=[9, 5]))),
        ("offsets inside the band", lambda: fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths,
                                                                         **dict(call, offsets=[2, 9]))),
        ("owner: k of another shape", lambda: cache.attend(q, k[:, :, :, :8], v, 3, [5, 9])),
        ("owner: offsets not increasing", lambda: cache.attend(q, k, v, 3, [9, 5])),
        ("owner: ring too small" if cache.ring else "owner: q of another dtype",
         lambda: cache.attend(q if cache.ring else q.float(), k, v, 3, [5, 90])),
    ]


@pytest.mark.parametrize("ring", [True, False])
def test_refused_calls_change_no_cache_after_a_good_one(ring):
    """Every refusal comes before the write, also once a good call with the
    same tensors has been memoized (the fast path must not skip a check that
    depends on what changed)."""
    cache, (q, k, v), window, offsets, _ = _caches_and_step_inputs("cpu", ring)
    fibsparse_attn_with_kvcache(q, cache.k.clone(), cache.v.clone(), cache.seqlens, window, offsets, ring=ring,
                                k=k, v=v)  # passes, and is remembered
    cache.attend(q, k, v, window, offsets)
    before = [t.clone() for t in (cache.k, cache.v, cache.seqlens)]
    for what, call in _refused_calls(cache, q, k, v):
        with pytest.raises((ValueError, RuntimeError)):
            call()
        after = (cache.k, cache.v, cache.seqlens)
        assert all(torch.equal(a, b) for a, b in zip(before, after)), what
        assert cache.host_seqlens() == before[2].tolist(), what


@pytest.mark.parametrize("ring", [True, False])
def test_guarded_device_write_of_bad_lengths_changes_nothing(ring):
    """The write that check_lengths=False uses (its slots computed on the
    device): lengths the cache cannot hold leave every slot as it was, for
    every sequence; good lengths write as the unguarded write does."""
    from fibsparse_ext.decode import _write_at_device_positions
    cache, (_, k, v), *_ = _caches_and_step_inputs("cpu", ring)
    good = cache.seqlens.clone()
    # One sequence's length is bad, the others' are fine: nothing is written.
    bad_values = [-1, -20] + ([] if ring else [cache.capacity, cache.capacity + 5])
    for b, value in enumerate(bad_values):
        bad = good.clone()
        bad[b % 3] = value
        k_cache, v_cache = cache.k.clone(), cache.v.clone()
        _write_at_device_positions(k_cache, v_cache, bad, k, v, ring, guard=True)
        assert torch.equal(k_cache, cache.k) and torch.equal(v_cache, cache.v), bad.tolist()
    guarded, plain = [(cache.k.clone(), cache.v.clone()) for _ in range(2)]
    _write_at_device_positions(*guarded, good, k, v, ring, guard=True)
    _write_at_device_positions(*plain, good, k, v, ring, guard=False)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain)) and not torch.equal(guarded[0], cache.k)


@pytest.mark.parametrize("device", DEVICES)
def test_offsets_changed_in_place_are_checked_again(device):
    """Offsets tensors are read once per version: a change in place between
    calls (here to non-increasing, then to a distance the ring cannot hold)
    is refused before the write."""
    cache, (q, k, v), window, _, _ = _caches_and_step_inputs(device, ring=True)
    offsets = torch.tensor([5, 9], dtype=torch.int32, device=device)
    fibsparse_attn_with_kvcache(q, cache.k.clone(), cache.v.clone(), cache.seqlens, window, offsets, ring=True,
                                k=k, v=v)
    before = [t.clone() for t in (cache.k, cache.v)]
    for values, match in (([9, 5], "strictly increasing"), ([5, 40], "cache too small")):
        offsets.copy_(torch.tensor(values))
        with pytest.raises(ValueError, match=match):
            fibsparse_attn_with_kvcache(q, cache.k, cache.v, cache.seqlens, window, offsets, ring=True, k=k, v=v)
        assert torch.equal(cache.k, before[0]) and torch.equal(cache.v, before[1])


def test_learned_alpha_changed_in_place_is_checked_against_the_ring():
    """A layer checks its offsets against a ring once per version of its
    learned alpha: an alpha grown in place past what the ring holds is
    refused before anything is written."""
    model = FibSparseLM(LMConfig.preset("tiny", schedule="learned"))
    caches = model.make_caches(1, 100)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 10)), caches)
        model(torch.randint(0, 256, (1, 1)), caches)
        before = [(c.k.clone(), c.v.clone(), c.seqlens.clone()) for c in caches]
        model.blocks[0].attn.alpha.mul_(4)
        with pytest.raises(ValueError, match="cache too small"):
            model(torch.randint(0, 256, (1, 1)), caches)
    for c, (k, v, n) in zip(caches, before):
        assert torch.equal(c.k, k) and torch.equal(c.v, v) and torch.equal(c.seqlens, n)


def test_cache_host_lengths_follow_changes_made_by_others():
    """KVCache writes where its host copy of the lengths says; a change of
    seqlens in place by someone else (a version bump) is read back."""
    torch.manual_seed(4)
    data = torch.randn(2, 9, 1, 4, dtype=torch.float64)
    cache = KVCache(2, 6, 1, 4, ring=True, dtype=torch.float64)
    cache.write(data[:, :4], data[:, :4])
    cache.seqlens[1] += 2  # sequence 1 skips two positions
    cache.write(data[:, 4:5], data[:, 4:5])
    assert cache.host_seqlens() == [5, 7] == cache.seqlens.tolist()
    assert torch.equal(cache.k[0, 4], data[0, 4]) and torch.equal(cache.k[1, 6 % 6], data[1, 4])
    cache.seqlens.fill_(3)  # equal lengths again: one slice per tensor, wrapping around the ring
    cache.write(data[:, :5], data[:, :5])
    assert [cache.k[0, p % 6].tolist() for p in range(3, 8)] == data[0, :5].tolist()


def test_cuda_graph_on_the_cpu_warns_and_decodes_eagerly():
    model = FibSparseLM(LMConfig.preset("tiny"))
    prompt = torch.randint(0, 256, (1, 5))
    with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device"):
        graphed = generate(model, prompt, 6, cuda_graph=True)
    assert torch.equal(graphed, generate(model, prompt, 6))
    with pytest.raises(ValueError, match="cuda_graph must be True, False or None"):
        generate(model, prompt, 6, cuda_graph="yes")


def test_compiled_decode_step_equals_eager_and_rechecks_offsets():
    """generate(compile=True) runs the step through torch.compile (one graph,
    no silent fallback) and gives the eager tokens; the host checks it moved
    out of the graph still run: offsets made invalid in place are refused."""
    import warnings
    from fibsparse_ext.lm.generation import DecodeStep
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule="learned")).double()
    prompt = torch.randint(0, 256, (2, 10))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decoding without")  # a failed compilation falls back: not here
        compiled = generate(model, prompt, max_new_tokens=40, compile=True)
    assert torch.equal(compiled, generate(model, prompt, max_new_tokens=40))
    with pytest.raises(ValueError, match="compile must be True or False"):
        generate(model, prompt, 2, compile="yes")

    caches = model.make_caches(2, 60)
    with torch.no_grad():
        token = model(prompt, caches)[:, -1].argmax(-1)
        step = DecodeStep(model, caches, compile=True)
        for _ in range(3):
            token = step(token).argmax(-1)
        assert step.compiled is not None and step.compile
        lengths = [c.seqlens.clone() for c in caches]
        model.blocks[0].attn.alpha.fill_(float("nan"))
        with pytest.raises(ValueError, match="finite"):
            step(token)
    assert all(torch.equal(c.seqlens, n) for c, n in zip(caches, lengths))  # refused before anything ran


def test_a_step_that_cannot_compile_warns_once_and_decodes_uncompiled(monkeypatch):
    """Where torch.compile refuses the step (here a graph break under
    fullgraph), generate() warns once, naming it, and gives the eager tokens."""
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny"))
    prompt = torch.randint(0, 256, (2, 6))
    expected = generate(model, prompt, 8)
    forward = FibSparseLM.forward

    def forward_with_a_graph_break(self, *args, **kwargs):
        torch._dynamo.graph_break()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FibSparseLM, "forward", forward_with_a_graph_break)
    with pytest.warns(UserWarning, match="decoding without torch.compile: compiling the decode step failed") as caught:
        tokens = generate(model, prompt, 8, compile=True)
    assert torch.equal(tokens, expected)
    assert sum("decoding without torch.compile" in str(w.message) for w in caught) == 1


# CUDA: the graphed decode step.

@requires_cuda
@pytest.mark.parametrize("variant", ["stagger", "learned", "dense"])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphed_greedy_generate_equals_eager_and_full_recomputation(variant, compile):
    """The graphed step, compiled or not, gives the eager tokens and those of
    recomputing the whole sequence."""
    import warnings
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", **LMConfig.parse_variant(variant))).double().cuda()
    prompt = torch.randint(0, 256, (2, 10), device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decoding without")  # neither compilation nor capture falls back
        # past the ring and the training length
        graphed = generate(model, prompt, max_new_tokens=100, cuda_graph=True, compile=compile)
    eager = generate(model, prompt, max_new_tokens=100, cuda_graph=False)
    assert torch.equal(graphed, eager)
    with torch.no_grad():
        for n in range(10, 110):
            assert torch.equal(model(graphed[:, :n])[:, -1].argmax(-1), graphed[:, n]), n


@requires_cuda
def test_cuda_graphed_sampling_equals_eager_sampling():
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule="learned")).double().cuda()
    prompt = torch.randint(0, 256, (3, 7), device="cuda")
    runs = [generate(model, prompt, 40, temperature=0.8, top_k=20, cuda_graph=graphed,
                     generator=torch.Generator(device="cuda").manual_seed(11)) for graphed in (True, False)]
    assert torch.equal(runs[0], runs[1])


@requires_cuda
@pytest.mark.parametrize("variant", ["stagger", "learned", "dense"])
def test_cuda_graphed_decode_step_does_not_sync(variant):
    """Once captured, a decode step (replay, greedy choice, copy into the
    static input) never waits for the GPU."""
    from fibsparse_ext.lm.generation import DecodeStep
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", **LMConfig.parse_variant(variant))).cuda().eval()
    caches = model.make_caches(2, 200)
    replay_decode_steps_without_sync(model, caches, torch.randint(0, 256, (2, 10), device="cuda"), 50)
    assert all(c.seqlens.tolist() == [10 + DecodeStep.WARMUP_STEPS + 51] * 2 for c in caches)


@requires_cuda
def test_cuda_unchecked_lengths_do_not_sync():
    """check_lengths=False with lengths on the GPU, and a repeated checked call
    with unchanged lengths, read nothing on the host."""
    cache, (q, k, v), window, offsets, expected = _caches_and_step_inputs("cuda", ring=True)
    offsets = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    fibsparse_attn_with_kvcache(q, cache.k.clone(), cache.v.clone(), cache.seqlens, window, offsets, ring=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fibsparse_attn_with_kvcache(q, cache.k.clone(), cache.v.clone(), cache.seqlens, window, offsets, ring=True)
        out = fibsparse_attn_with_kvcache(q, cache.k, cache.v, cache.seqlens, window, offsets, ring=True, k=k, v=v,
                                          check_lengths=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rel_err(out, expected) < 1e-12


@requires_cuda
def test_cuda_read_only_calls_are_checked_once_and_see_every_change():
    """A call without k, v on GPU offsets and lengths runs its checks once per
    version of the two tensors and layout of the rest: a repeat is exact, and
    offsets or lengths changed in place, another cache's layout or q's dtype
    are refused as on a first call."""
    cache, (q, _, _), window, offsets, _ = _caches_and_step_inputs("cuda", ring=True)
    offsets = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    lengths = cache.seqlens.clone()
    first = fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, window, offsets, ring=True)
    assert torch.equal(fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, window, offsets, ring=True), first)
    offsets[1] = 2  # below the window: no longer a valid offset
    with pytest.raises(ValueError, match="offsets"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, window, offsets, ring=True)
    offsets[1] = 9
    lengths[0] = 0  # fewer tokens than the new query
    with pytest.raises(ValueError, match="count the 1 new token"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, window, offsets, ring=True)
    lengths.copy_(cache.seqlens)
    with pytest.raises(ValueError, match="v_cache must have the shape of k_cache"):
        fibsparse_attn_with_kvcache(q, cache.k, cache.v[:, :4], lengths, window, offsets, ring=True)
    with pytest.raises(ValueError, match="k_cache must have q's dtype"):
        fibsparse_attn_with_kvcache(q.float(), cache.k, cache.v, lengths, window, offsets, ring=True)
    assert torch.equal(fibsparse_attn_with_kvcache(q, cache.k, cache.v, lengths, window, offsets, ring=True), first)


def test_a_negative_length_on_the_device_writes_nothing():
    """Without the host's length checks (lengths on the device), a negative
    length of a linear cache is refused by the write's own indexing (it would
    otherwise wrap around to the last slot), before anything is written."""
    cache = KVCache(1, 6, 1, 4, ring=False, dtype=torch.float64)
    cache.k.normal_()
    cache.v.normal_()
    cache.keep_lengths_on_device()
    cache.seqlens.fill_(-1)
    before = cache.k.clone()
    with pytest.raises(IndexError):
        cache.write(torch.ones(1, 1, 1, 4, dtype=torch.float64), torch.ones(1, 1, 1, 4, dtype=torch.float64))
    assert torch.equal(cache.k, before)
