"""Paged KV caches (fibsparse_ext.paged): decode through a block table equals
the ring cache and the full-sequence reference (integer, fractional and
per-head offsets, GQA, ragged batches, page sizes 1, 5 and 8, pages scattered
over the pool); the kernels read only the pages holding the positions a query
reads; PagedKVCache keeps each sequence within its page bound while sequences
join (padded and packed prompts) and leave; bad input is refused before
anything is written."""
import subprocess
import sys

import pytest
import torch

from fibsparse_ext import fibsparse_attn_ref
from fibsparse_ext.accuracy import TOLERANCE
from fibsparse_ext.decode import KVCache, fibsparse_attn_with_kvcache, largest_distance, required_capacity
from fibsparse_ext.paged import PagedKVCache, fibsparse_attn_with_paged_kvcache, pages_per_sequence_bound
from utils import (DEVICES, position_dtype, random_qkv, refused_by_device_assert, rel_err,
                   replay_decode_steps_without_sync, requires_cuda)

OFFSETS = {"integer": [5, 9, 17], "fractional": [4.5, 9.25, 16.75],
           "per_head": [[5, 9, 17], [6, 11, -1], [7, -1, -1], [8, 13, 21]]}
WINDOW = 4


def paged_copy(k, v, lengths, new, farthest, page_size, generator, dtype=None, device="cpu"):
    """A pool and block table holding, for each sequence b, positions
    [lengths[b] - new - farthest, lengths[b]) of k[b], v[b] (what a decode call
    of `new` queries reads) on pages drawn at random from a pool twice as large
    as needed. Every other pool row is NaN and every other block table entry
    -1, so a read of anything else shows in the output."""
    columns = max(-(-n // page_size) for n in lengths)
    spans = [range(max(0, n - new - farthest) // page_size, -(-n // page_size)) for n in lengths]
    num_pages = 2 * sum(len(span) for span in spans) + 1
    order = torch.randperm(num_pages, generator=generator).tolist()
    dtype = dtype or k.dtype
    k_pool = torch.full((num_pages, page_size, *k.shape[2:]), float("nan"), dtype=dtype, device=device)
    v_pool = torch.full_like(k_pool, float("nan"))
    table = torch.full((len(lengths), columns), -1, dtype=torch.int32)
    for b, (n, span) in enumerate(zip(lengths, spans)):
        for column in span:
            page = table[b, column] = order.pop()
            rows = range(column * page_size, min((column + 1) * page_size, n))
            k_pool[page, :len(rows)] = k[b, rows.start:rows.stop].to(device, dtype)
            v_pool[page, :len(rows)] = v[b, rows.start:rows.stop].to(device, dtype)
    return k_pool, v_pool, table.to(device)


def ring_copy(k, v, lengths, capacity, dtype=None, device="cpu"):
    cache = KVCache(len(lengths), capacity, k.shape[2], k.shape[3], ring=True, dtype=dtype or k.dtype, device=device)
    for b, n in enumerate(lengths):
        row = KVCache.wrap(cache.k[b:b + 1], cache.v[b:b + 1], cache.seqlens[b:b + 1], ring=True)
        row.write(k[b:b + 1, :n].to(device, cache.k.dtype), v[b:b + 1, :n].to(device, cache.k.dtype))
    return cache


@pytest.mark.parametrize("offsets", OFFSETS.values(), ids=OFFSETS.keys())
@pytest.mark.parametrize("page_size", [1, 5, 8])
@pytest.mark.parametrize("new", [1, 3])
def test_paged_decode_equals_ring_and_reference(offsets, page_size, new):
    """A ragged batch (GQA) on scattered pages, the rest of the pool NaN: the
    output equals the full-sequence reference and, bitwise, the ring cache's."""
    generator = torch.Generator().manual_seed(page_size * 10 + new)
    torch.manual_seed(page_size + new)
    q, k, v = random_qkv(3, 70, 4, 2, 16, torch.float64, "cpu", requires_grad=False)
    expected = fibsparse_attn_ref(q, k, v, WINDOW, offsets)
    offsets_tensor = torch.tensor(offsets)
    farthest = largest_distance(WINDOW, offsets_tensor)
    for lengths in ([70, 23, new], [41, 70, 2 * new]):
        k_pool, v_pool, table = paged_copy(k, v, lengths, new, farthest, page_size, generator)
        queries = torch.stack([q[b, n - new:n] for b, n in enumerate(lengths)])
        seqlens = torch.tensor(lengths)
        out = fibsparse_attn_with_paged_kvcache(queries, k_pool, v_pool, seqlens, table, WINDOW, offsets)
        assert torch.equal(out, fibsparse_attn_with_kvcache(queries, k_pool, v_pool, seqlens, WINDOW, offsets,
                                                             block_table=table))  # the same call, FlashAttention's way
        ring = ring_copy(k, v, lengths, required_capacity(WINDOW, offsets_tensor, new))
        assert torch.equal(out, fibsparse_attn_with_kvcache(queries, ring.k, ring.v, seqlens, WINDOW, offsets,
                                                             ring=True))
        for b, n in enumerate(lengths):
            assert rel_err(out[b], expected[b, n - new:n]) < 1e-12, (lengths, b)


def test_a_block_table_is_not_a_ring():
    q, k, v = random_qkv(1, 8, 2, 2, 16, torch.float64, "cpu", requires_grad=False)
    table = torch.zeros(1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="ring=True and a block_table exclude each other"):
        fibsparse_attn_with_kvcache(q[:, -1:], k, v, torch.tensor([8]), WINDOW, [5], ring=True, block_table=table)


@pytest.mark.parametrize("device", DEVICES)
def test_appending_through_the_block_table(device):
    """k=, v= write the new tokens into their pages (page size 3, chunks of 2
    that straddle pages), then attend: every step equals the reference."""
    torch.manual_seed(3)
    q, k, v = random_qkv(2, 30, 2, 1, 16, torch.float64, "cpu", requires_grad=False)
    expected = fibsparse_attn_ref(q, k, v, WINDOW, [6.5, 11.0])
    table = torch.randperm(20, dtype=torch.int32).view(2, 10).to(device)
    k_pool = torch.randn(20, 3, 1, 16, dtype=torch.float64, device=device)
    v_pool = torch.randn_like(k_pool)
    seqlens = torch.tensor([0, 4], device=device)
    for b in (1,):  # sequence 1 starts with a 4-token prompt written in place
        for t in range(4):
            k_pool[table[b, t // 3], t % 3], v_pool[table[b, t // 3], t % 3] = k[b, t], v[b, t]
    for step in range(12):
        begins = [int(n) for n in seqlens]
        queries = torch.stack([q[b, n:n + 2] for b, n in enumerate(begins)]).to(device)
        new_k = torch.stack([k[b, n:n + 2] for b, n in enumerate(begins)]).to(device)
        new_v = torch.stack([v[b, n:n + 2] for b, n in enumerate(begins)]).to(device)
        out = fibsparse_attn_with_paged_kvcache(queries, k_pool, v_pool, seqlens, table, WINDOW, [6.5, 11.0],
                                                k=new_k, v=new_v)
        seqlens += 2
        for b, n in enumerate(begins):
            assert rel_err(out[b].cpu(), expected[b, n:n + 2]) < 1e-12, (step, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offsets", OFFSETS.values(), ids=OFFSETS.keys())
@pytest.mark.parametrize("page_size", [1, 5, 8])
def test_continuous_batching(device, offsets, page_size):
    """Sequences join (a padded prompt, then a packed one), decode at their
    own lengths, and leave; a sequence that joins later takes pages given back
    by others. Every output equals the reference of its own sequence, and no
    sequence ever holds more pages than the bound."""
    torch.manual_seed(page_size)
    new, heads, heads_kv, head_dim = 2, 4, 2, 16
    offsets_tensor = torch.tensor(offsets)
    farthest = largest_distance(WINDOW, offsets_tensor)
    bound = pages_per_sequence_bound(farthest, new, page_size)
    lengths = [60, 46, 55, 40, 36]  # prompt + decoded tokens of each sequence
    prompts = [30, 0, 3, 26, 20]
    seqs = [random_qkv(1, n, heads, heads_kv, head_dim, torch.float64, "cpu", requires_grad=False) for n in lengths]
    expected = [fibsparse_attn_ref(*s, WINDOW, offsets) for s in seqs]
    num_pages = PagedKVCache.pages_needed(WINDOW, offsets_tensor, page_size, 4, new)
    cache = PagedKVCache(num_pages, page_size, heads_kv, head_dim, WINDOW, offsets, max_batch=4,
                         dtype=torch.float64, device=device)
    cache.k.fill_(float("nan"))  # any read of a row never written shows
    cache.v.fill_(float("nan"))

    def padded_prompt(ids):  # padding rows NaN: never read
        k = torch.full((len(ids), 30, heads_kv, head_dim), float("nan"), dtype=torch.float64)
        v = torch.full_like(k, float("nan"))
        for i, s in enumerate(ids):
            k[i, :prompts[s]], v[i, :prompts[s]] = seqs[s][1][0, :prompts[s]], seqs[s][2][0, :prompts[s]]
        return k.to(device), v.to(device), [prompts[s] for s in ids]

    # Sequences 0 and 1 join from a padded prompt, 2 and 3 from a packed one; 4 waits for a free slot.
    slot_of = dict(zip((0, 1), cache.add_sequences(*padded_prompt([0, 1]))))
    packed = [torch.cat([seqs[s][j][0, :prompts[s]] for s in (2, 3)]).to(device) for j in (1, 2)]
    cu_seqlens = torch.tensor([0, prompts[2], prompts[2] + prompts[3]], dtype=torch.int32)
    slot_of.update(zip((2, 3), cache.add_packed_sequences(packed[0], packed[1], cu_seqlens)))
    done, reused = {}, False
    while len(done) < 5:
        running = [s for s in slot_of if s not in done]
        position = {s: cache.length(slot_of[s]) for s in running}
        q = torch.cat([seqs[s][0][:, position[s]:position[s] + new] for s in running]).to(device)
        k = torch.cat([seqs[s][1][:, position[s]:position[s] + new] for s in running]).to(device)
        v = torch.cat([seqs[s][2][:, position[s]:position[s] + new] for s in running]).to(device)
        out = cache.attend(q, k, v, slots=[slot_of[s] for s in running])
        for row, s in enumerate(running):
            assert rel_err(out[row].cpu(), expected[s][0, position[s]:position[s] + new]) < 1e-12, (s, position[s])
            assert len(cache.pages_of(slot_of[s])) <= bound
            if cache.length(slot_of[s]) == lengths[s]:
                done[s] = cache.pages_of(slot_of[s])
                cache.remove_sequence(slot_of[s])
        if 4 not in slot_of and done:  # sequence 4 joins in the freed slot, on freed pages
            slot_of[4], = cache.add_sequences(*padded_prompt([4]))
            reused = bool(set(cache.pages_of(slot_of[4])) & {p for pages in done.values() for p in pages})
    assert reused
    assert cache.num_free_pages == num_pages and cache.active_slots == []
    assert max(lengths) > bound * page_size  # the longest sequence only fit by giving pages back


@pytest.mark.parametrize("page_size", [1, 7, 16])
def test_memory_stays_bounded_over_a_long_decode(page_size):
    """2000 tokens through a cache whose pool holds pages_needed(...) pages for
    one sequence: it never runs out, and the sequence holds the bound's pages."""
    offsets = [9, 30, 77]
    cache = PagedKVCache(PagedKVCache.pages_needed(8, offsets, page_size, 1), page_size, 1, 8, 8, offsets,
                         max_batch=1)
    slot, = cache.add_sequences(torch.randn(1, 5, 1, 8), torch.randn(1, 5, 1, 8))
    held = []
    for _ in range(2000):
        cache.attend(torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8))
        held.append(len(cache.pages_of(slot)))
    assert max(held) == pages_per_sequence_bound(77, 1, page_size)  # reached, never passed
    assert cache.block_table.shape[1] >= 2005 // page_size  # the table grows; the pool does not


@pytest.mark.parametrize("offsets", [torch.tensor([9, 30], dtype=torch.int32), torch.tensor([8.0, 29.5]),
                                     torch.tensor([[9, -1], [12, 40]], dtype=torch.int32),
                                     torch.tensor([[4.5, -1.0], [-1.0, -1.0]]), torch.zeros(0, dtype=torch.int32)],
                         ids=["integer", "fractional", "per_head", "per_head_fractional", "none"])
def test_the_checked_call_reads_as_far_as_the_pattern(offsets):
    """The device-side form of the farthest distance (which pages a checked call
    reads) is decode.largest_distance."""
    from fibsparse_ext.paged import _farthest_on_device
    for window in (8, 50):
        assert float(_farthest_on_device(window, offsets)) == largest_distance(window, offsets)


# ---- Bad input: refused with the argument named, before anything is written ----

def bad_input_setup():
    torch.manual_seed(5)
    q, k, v = random_qkv(2, 1, 2, 2, 16, torch.float32, "cpu", requires_grad=False)
    k_pool = torch.randn(10, 4, 2, 16)
    v_pool = torch.randn_like(k_pool)
    table = torch.tensor([[3, 1, 7], [0, 5, 2]], dtype=torch.int32)
    return q, k, v, k_pool, v_pool, table


@pytest.mark.parametrize("change, match", [
    (lambda a: a["table"].__setitem__((0, 2), 10), r"block_table\[0, 2\] is 10; .* must be in \[0, num_pages=10\)"),
    (lambda a: a["table"].__setitem__((0, 1), -1), r"block_table\[0, 1\] is -1"),
    (lambda a: a["table"].__setitem__((0, 2), 1), r"names page 1 more than once"),  # twice in one sequence
    (lambda a: a["table"].__setitem__((1, 0), 7), r"names page 7 more than once"),  # in two sequences
    (lambda a: a.__setitem__("seqlens", torch.tensor([12, 5])), r"cache_seqlens\[0\] would be 13 .* fit its pages"),
    (lambda a: a.__setitem__("k_pool", a["k_pool"].double()), r"k_cache must have q's dtype"),
    (lambda a: a.__setitem__("v_pool", a["v_pool"][:, :3]), r"v_cache must have the shape of k_cache"),
    (lambda a: a.__setitem__("table", a["table"].long()), r"block_table must be an int32 tensor"),
    (lambda a: a.__setitem__("table", a["table"][:1]), r"block_table must be an int32 tensor of shape \(batch=2"),
    (lambda a: a.update(k_pool=a["k_pool"][:, :0], v_pool=a["v_pool"][:, :0]),
     r"at least one page of at least one row"),
    (lambda a: a.__setitem__("new_k", a["new_k"].double()), r"k must have the cache's dtype"),
    (lambda a: a.__setitem__("new_v", a["new_v"][:, :, :1]), r"v must be \(batch, new, heads_kv, head_dim\)"),
    (lambda a: a.__setitem__("seqlens", torch.tensor([5.0, 2.0])), r"cache_seqlens must be an integer tensor"),
    (lambda a: a.__setitem__("offsets", [9, 5]), r"offsets must be strictly increasing"),
], ids=["page_past_pool", "freed_page_read", "page_twice_in_a_sequence", "page_in_two_sequences",
        "longer_than_its_pages", "cache_dtype", "cache_shape", "table_dtype", "table_shape", "page_size_0",
        "k_dtype", "v_shape", "seqlens_dtype", "offsets"])
def test_refused_paged_call_changes_no_cache(change, match):
    q, k, v, k_pool, v_pool, table = bad_input_setup()
    # Sequence 0 (10 tokens with the new one) reads positions 4 .. 9, columns 1 and 2; sequence 1 column 0.
    args = {"table": table, "seqlens": torch.tensor([9, 2]), "k_pool": k_pool, "v_pool": v_pool, "new_k": k,
            "new_v": v, "offsets": [5]}
    change(args)
    before = [t.clone() for t in (args["k_pool"], args["v_pool"], args["table"], args["seqlens"])]
    with pytest.raises(ValueError, match=match):
        fibsparse_attn_with_paged_kvcache(q, args["k_pool"], args["v_pool"], args["seqlens"], args["table"], 4,
                                          args["offsets"], k=args["new_k"], v=args["new_v"])
    after = (args["k_pool"], args["v_pool"], args["table"], args["seqlens"])
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_entries_a_call_does_not_read_may_be_anything():
    """Pages given back (-1) or reused elsewhere before the farthest position
    read are not the call's business: accepted, as FlashAttention does past a
    sequence's end."""
    q, k, v, k_pool, v_pool, table = bad_input_setup()
    table[0, 0] = -1  # sequence 0 (11 tokens with the new one) reads positions 5 .. 10: columns 1 and 2
    table[1, 2] = 1  # sequence 1 (3 tokens) reads column 0 only, so sequence 0's page 1 may appear here
    out = fibsparse_attn_with_paged_kvcache(q, k_pool, v_pool, torch.tensor([10, 2]), table, 4, [5], k=k, v=v)
    assert torch.isfinite(out).all()


def test_the_op_checks_lengths_and_pages_itself():
    """torch.ops.fibsparse.decode refuses what the Python entry point would,
    for callers that skip it (the CUDA kernels assert the same on the device)."""
    q, _, _, k_pool, v_pool, table = bad_input_setup()
    offsets = torch.tensor([5], dtype=torch.int32)
    call = lambda seqlens, table, ring=False: torch.ops.fibsparse.decode(  # noqa: E731
        q, k_pool, v_pool, torch.tensor(seqlens), offsets, [4], 0.25, ring, table)
    call([5, 2], table)  # valid
    with pytest.raises(RuntimeError, match=r"cache_seqlens\[1\] is 0; it must count the 1 new token"):
        call([5, 0], table)
    with pytest.raises(RuntimeError, match=r"cache_seqlens\[0\] is 13; .* fit the sequence's pages .* = 12\)"):
        call([13, 2], table)
    bad = table.clone()
    bad[0, 1] = 99
    with pytest.raises(RuntimeError, match=r"block_table\[0, 1\] is 99; .* positions 0 .. 4 here\) must be in "
                                           r"\[0, num_pages=10\)"):
        call([5, 2], bad)
    with pytest.raises(RuntimeError, match="ring must be False with a block_table"):
        call([5, 2], table, ring=True)
    with pytest.raises(RuntimeError, match=r"block_table must be an int32 tensor of shape \(batch=2"):
        call([5, 2], table.long())
    # The non-paged op checks lengths on every call too.
    linear = torch.randn(2, 8, 2, 16)
    with pytest.raises(RuntimeError, match=r"cache_seqlens\[0\] is 9; .* fit the cache's capacity \(8\)"):
        torch.ops.fibsparse.decode(q, linear, linear, torch.tensor([9, 2]), offsets, [4], 0.25, False)


def test_refused_cache_calls_change_nothing():
    offsets = [6, 11]
    cache = PagedKVCache(6, 4, 1, 8, 4, offsets, max_batch=2)
    slots = cache.add_sequences(torch.randn(2, 9, 1, 8), torch.randn(2, 9, 1, 8), [9, 3])
    state = lambda: ([t.clone() for t in (cache.k, cache.v, cache.block_table, cache.seqlens)],  # noqa: E731
                     [cache.pages_of(s) for s in slots], [cache.length(s) for s in slots], cache.num_free_pages)
    before = state()
    with pytest.raises(ValueError, match=r"out of pages: it has 6 pages of 4 rows, \d+ free, and this call .* needs"):
        cache.attend(torch.randn(2, 9, 1, 8), torch.randn(2, 9, 1, 8), torch.randn(2, 9, 1, 8))
    with pytest.raises(ValueError, match="1 free batch slot|0 free batch slot"):
        cache.add_sequences(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
    with pytest.raises(ValueError, match=r"slot 5 holds no sequence; active slots: \[0, 1\]"):
        cache.attend(torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8), slots=[5])
    with pytest.raises(ValueError, match=r"k must be \(batch, new, heads_kv, head_dim\)"):
        cache.attend(torch.randn(2, 1, 1, 8), torch.randn(2, 2, 1, 8), torch.randn(2, 1, 1, 8))
    with pytest.raises(ValueError, match="k must have the cache's dtype"):
        cache.attend(torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8).double(), torch.randn(2, 1, 1, 8))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        cache.add_packed_sequences(torch.randn(5, 1, 8), torch.randn(5, 1, 8), [0, 6])
    with pytest.raises(ValueError, match=r"lengths must hold 1 ints in \[0, max_len=2\]"):
        cache.add_sequences(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), [3])
    after = state()
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and before[1:] == after[1:]
    with pytest.raises(ValueError, match=r"page_size must be an int >= 1, got 0"):
        PagedKVCache(6, 0, 1, 8, 4, offsets, max_batch=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_opcheck_paged_decode(device, dtype):
    """torch.library.opcheck of decode with a block_table (schema, fake, AOT dispatch)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    lengths, new = [30, 11, 2], 2
    q, k, v = random_qkv(3, 30, 4, 2, 16, torch.float64, "cpu", requires_grad=False)
    for offsets in (torch.tensor([5, 8], dtype=torch.int32),
                    torch.tensor([[4.5, 8.25], [6.75, -1], [5.0, 7.5], [-1, -1]], dtype=position_dtype(dtype))):
        farthest = largest_distance(3, offsets)
        k_pool, v_pool, table = paged_copy(k, v, lengths, new, farthest, 4, generator, dtype, device)
        queries = torch.stack([q[b, n - new:n] for b, n in enumerate(lengths)]).to(device, dtype)
        args = (queries, k_pool.nan_to_num(), v_pool.nan_to_num(), torch.tensor(lengths, device=device),
                offsets.to(device), [3], 0.3, False, table)
        torch.library.opcheck(torch.ops.fibsparse.decode.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# ---- CUDA: the kernel in every dtype, and the device-side checks ----

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("page_size", [1, 5, 16, 256])
@pytest.mark.parametrize("fractional", [False, True])
def test_cuda_paged_decode_within_tolerance_and_equal_to_ring(dtype, page_size, fractional):
    generator = torch.Generator().manual_seed(page_size)
    torch.manual_seed(page_size)
    window, offsets = 8, ([11.5, 20.25, 33.75] if fractional else [11, 20, 34])
    q, k, v = random_qkv(3, 300, 4, 2, 64, torch.float64, "cpu", requires_grad=False)
    lengths, new = [300, 47, 2], 2
    farthest = largest_distance(window, torch.tensor(offsets))
    k_pool, v_pool, table = paged_copy(k, v, lengths, new, farthest, page_size, generator, dtype, "cuda")
    queries = torch.stack([q[b, n - new:n] for b, n in enumerate(lengths)]).to("cuda", dtype)
    seqlens = torch.tensor(lengths, device="cuda")
    out = fibsparse_attn_with_paged_kvcache(queries, k_pool, v_pool, seqlens, table, window, offsets)
    ring = ring_copy(k, v, lengths, required_capacity(window, torch.tensor(offsets), new), dtype, "cuda")
    assert torch.equal(out, fibsparse_attn_with_kvcache(queries, ring.k, ring.v, seqlens, window, offsets, ring=True))
    for b, n in enumerate(lengths):
        expected = fibsparse_attn_ref(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], window, offsets)[0, -new:]
        assert rel_err(out[b].cpu(), expected) < TOLERANCE[dtype], b


_DEVICE_CHECK_SCRIPT = """
import torch
import fibsparse_ext
q = torch.randn(2, 1, 2, 64, device="cuda", dtype=torch.bfloat16)
pool = torch.randn(8, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device="cuda")
linear = torch.randn(2, 48, 2, 64, device="cuda", dtype=torch.bfloat16)  # ring=True: a ring of 48 slots
offsets = torch.tensor([8, 13, 21], dtype=torch.int32, device="cuda")
seqlens = torch.tensor([40, 30], device="cuda")
call = lambda: {call}
call()
torch.cuda.synchronize()
{change}
try:
    call()
    torch.cuda.synchronize()
except RuntimeError as e:
    print("REFUSED", str(e).splitlines()[0])
else:
    print("ACCEPTED")
"""


PAGED_CALL = "torch.ops.fibsparse.decode(q, pool, pool, seqlens, offsets, [4], 0.125, False, table)"


@requires_cuda
@pytest.mark.parametrize("call, change, message", [
    (PAGED_CALL, "table[0, 2] = 8", "block_table entries of the pages a decode call reads"),
    (PAGED_CALL, "table[1, 1] = -1", "block_table entries of the pages a decode call reads"),
    (PAGED_CALL, "seqlens[0] = 49", "every cache_seqlens entry must count the new tokens"),
    (PAGED_CALL, "seqlens[1] = 0", "every cache_seqlens entry must count the new tokens"),
    ("torch.ops.fibsparse.decode(q, linear, linear, seqlens, offsets, [4], 0.125, False)", "seqlens[0] = 49",
     "every cache_seqlens entry must count the new tokens"),  # a linear cache of 48 rows
    ("torch.ops.fibsparse.decode(q, linear, linear, seqlens, offsets, [4], 0.125, True)", "seqlens[1] = 0",
     "every cache_seqlens entry must count the new tokens"),  # a ring
])
def test_cuda_device_side_cache_checks(call, change, message):
    """The decode kernel's check blocks assert the lengths and the block table
    entries a call reads (the host does not read them: that would sync). A
    device-side assert ends the CUDA context, so each case runs in its own
    process; the assert's message names the check (utils.DEVICE_ASSERT_ERRORS:
    the runtime's own error varies)."""
    script = _DEVICE_CHECK_SCRIPT.format(call=call, change=change)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert refused_by_device_assert(result.stdout), result.stdout + result.stderr[-2000:]
    assert message in result.stderr


@requires_cuda
def test_cuda_device_side_check_passes_entries_not_read():
    """Entries before the farthest position read (given back: -1) pass."""
    q = torch.randn(1, 1, 2, 64, device="cuda", dtype=torch.bfloat16)
    pool = torch.randn(8, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    table = torch.tensor([[-1, -1, -1, 3, 4]], dtype=torch.int32, device="cuda")  # length 70 reads from 70-1-21=48
    offsets = torch.tensor([8, 13, 21], dtype=torch.int32, device="cuda")
    out, _ = torch.ops.fibsparse.decode(q, pool, pool, torch.tensor([70], device="cuda"), offsets, [4], 0.125, False,
                                        table)
    torch.cuda.synchronize()
    assert torch.isfinite(out.float()).all()


# A decode step replayed from a CUDA graph: reserve() on the host, attend_reserved() on the device.

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offsets", OFFSETS.values(), ids=OFFSETS.keys())
@pytest.mark.parametrize("page_size", [1, 5, 8])
@pytest.mark.parametrize("new", [1, 2])
@pytest.mark.parametrize("prompts", [[13, 4, 21], [12, 12, 12]], ids=["ragged", "equal"])
def test_reserved_calls_equal_attend(device, offsets, page_size, new, prompts):
    """reserve() + attend_reserved() gives attend()'s outputs, lengths, pages
    held and pages free after every call (a pool of exactly pages_needed
    pages, past the point where pages are given back). With equal lengths (as
    in generate()) reserve() plans only at page boundaries."""
    torch.manual_seed(page_size + new)
    heads, heads_kv, head_dim, steps = 4, 2, 16, 40
    offsets_tensor = torch.tensor(offsets)
    num_pages = PagedKVCache.pages_needed(WINDOW, offsets_tensor, page_size, len(prompts), new)
    caches = [PagedKVCache(num_pages, page_size, heads_kv, head_dim, WINDOW, offsets, max_batch=len(prompts),
                           dtype=torch.float64, device=device) for _ in range(2)]
    prompt_k = torch.randn(len(prompts), max(prompts), heads_kv, head_dim, dtype=torch.float64, device=device)
    prompt_v = torch.randn_like(prompt_k)
    for cache in caches:
        cache.add_sequences(prompt_k, prompt_v, prompts)
    caches[1].fix_block_table(max(prompts) + steps * new)
    plans = []
    take_pages = caches[1]._take_pages
    caches[1]._take_pages = lambda *args: plans.append(args) or take_pages(*args)
    for step in range(steps):
        q = torch.randn(len(prompts), new, heads, head_dim, dtype=torch.float64, device=device)
        k = torch.randn(len(prompts), new, heads_kv, head_dim, dtype=torch.float64, device=device)
        v = torch.randn_like(k)
        expected = caches[0].attend(q, k, v)
        caches[1].reserve(new)
        assert torch.equal(caches[1].attend_reserved(q, k, v), expected), step
        assert torch.equal(caches[1].seqlens, caches[0].seqlens)
        assert caches[1].num_free_pages == caches[0].num_free_pages
        if step % 8 == 7:  # (reading the host mirror catches it up: not every step, so that reserve() can skip)
            assert [caches[1].pages_of(s) for s in range(3)] == [caches[0].pages_of(s) for s in range(3)]
            assert [caches[1].length(s) for s in range(3)] == [caches[0].length(s) for s in range(3)]
    assert caches[0].num_free_pages < num_pages - 3 * pages_per_sequence_bound(0, new, page_size) or page_size == 1
    if page_size >= 8 * new and len(set(prompts)) == 1:  # a page holds several calls' tokens: most plan nothing
        assert len(plans) <= steps // 2


def test_reserve_is_a_counter_between_page_boundaries():
    """Between page boundaries reserve() plans nothing and touches no tensor;
    the host lengths catch up when read."""
    cache = PagedKVCache(8, 16, 1, 8, 4, [9], max_batch=2)
    cache.add_sequences(torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8))
    cache.reserve(1)  # plans: the quiet bounds are known from here on
    table = cache.block_table.clone()
    version = cache.block_table._version
    for _ in range(5):
        cache.reserve(1)
    assert cache._pending == 5 and cache.block_table._version == version and torch.equal(cache.block_table, table)
    assert cache.length(0) == 3 + 6 and cache._pending == 0


def test_reserve_refusals_change_nothing():
    """A free batch slot, or a reservation past the fixed block table, is
    refused before any page or length changes."""
    cache = PagedKVCache(16, 4, 1, 8, 4, [9], max_batch=2)
    cache.add_sequences(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"slots \[1\] hold no sequence"):
        cache.reserve(1)
    cache.add_sequences(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    cache.fix_block_table(8)
    cache.reserve(4)  # positions 3..6: within 8
    free, pages, lengths = cache.num_free_pages, [cache.pages_of(s) for s in (0, 1)], cache.seqlens.clone()
    with pytest.raises(ValueError, match="block table was fixed at 2 columns"):
        cache.reserve(4)  # positions 7..10
    assert cache.num_free_pages == free and [cache.pages_of(s) for s in (0, 1)] == pages
    assert torch.equal(cache.seqlens, lengths) and cache.length(0) == 7
    with pytest.raises(ValueError, match="max_length must be an int >= 1"):
        cache.fix_block_table(0)


@pytest.mark.parametrize("variant", ["stagger", "learned", "dense"])
def test_paged_generate_equals_ring_generate(variant):
    """generate(page_size=...) keeps paged caches for the sparse layers and
    gives the ring caches' tokens, for page sizes that split the window, the
    offsets and the prompt anywhere."""
    from fibsparse_ext.lm import FibSparseLM, LMConfig, generate
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", **LMConfig.parse_variant(variant))).double()
    prompt = torch.randint(0, 256, (3, 10))
    ring = generate(model, prompt, 60)
    for page_size in (1, 3, 16):
        assert torch.equal(generate(model, prompt, 60, page_size=page_size), ring), page_size
    with pytest.raises(ValueError, match="page_size must be an int >= 1"):
        generate(model, prompt, 2, page_size=0)


def test_a_paged_cache_refuses_a_layer_whose_offsets_changed():
    """A paged cache gives its pages back by the offsets it was made with: a
    layer whose learned alpha moved since is refused, before any write."""
    from fibsparse_ext.lm import FibSparseLM, LMConfig
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule="learned")).double()
    caches = model.make_caches(2, 40, page_size=4)
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 10)), caches)
        model(torch.randint(0, 256, (2, 1)), caches)
        model.blocks[1].attn.alpha.mul_(1.5)
        lengths = [c.seqlens.clone() for c in caches]
        with pytest.raises(ValueError, match="paged cache was made for offsets"):
            model(torch.randint(0, 256, (2, 1)), caches)
    assert all(torch.equal(c.seqlens, n) for c, n in zip(caches[1:], lengths[1:]))  # the refused layer wrote nothing


@requires_cuda
@pytest.mark.parametrize("variant", ["stagger", "learned"])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphed_paged_generate_equals_ring_and_does_not_sync(variant, compile):
    """A paged decode step replayed from a CUDA graph (reserve() before each
    replay) gives the eager ring's tokens, with pages recycled along the way,
    and its replays never wait for the GPU."""
    import warnings
    from fibsparse_ext.lm import FibSparseLM, LMConfig, generate
    from fibsparse_ext.lm.generation import DecodeStep
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", **LMConfig.parse_variant(variant))).double().cuda()
    prompt = torch.randint(0, 256, (2, 10), device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decoding without")  # neither compilation nor capture falls back
        paged = generate(model, prompt, 100, cuda_graph=True, compile=compile, page_size=4)
    assert torch.equal(paged, generate(model, prompt, 100, cuda_graph=False))
    caches = model.make_caches(2, 200, page_size=4)
    replay_decode_steps_without_sync(model, caches, prompt, 100, compile=compile)
    assert all(c.seqlens.tolist() == [10 + DecodeStep.WARMUP_STEPS + 101] * 2 for c in caches)


def test_a_refused_decode_step_gives_its_reservations_back():
    """A DecodeStep refused before it runs (a layer's offsets changed in place)
    leaves the paged caches' host and device lengths equal; once the offsets
    are back, decoding continues past many page boundaries and equals a step
    that was never refused."""
    from fibsparse_ext.lm import FibSparseLM, LMConfig
    from fibsparse_ext.lm.generation import DecodeStep
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule="stagger")).double().eval()
    prompt = torch.randint(0, 256, (2, 10))
    runs = []
    for refuse in (False, True):
        caches = model.make_caches(2, 120, page_size=4)
        with torch.no_grad():
            token = model(prompt, caches)[:, -1].argmax(-1)
            step = DecodeStep(model, caches, cuda_graph=False)
            tokens = []
            for i in range(60):
                if refuse and i == 3:
                    offsets = model.blocks[1].attn.offsets
                    offsets[-1] += 8  # the paged cache was made for the old offsets
                    with pytest.raises(ValueError, match="paged cache was made for offsets"):
                        step(token)
                    offsets[-1] -= 8
                    assert [c.length(0) for c in caches] == [int(c.seqlens[0]) for c in caches] == [13, 13]
                token = step(token).argmax(-1)
                tokens.append(token)
        runs.append(torch.stack(tokens))
    assert torch.equal(runs[0], runs[1])


def test_paged_cache_refusals_write_nothing():
    """A fixed block table is never reallocated (a prompt that needs more
    columns is refused); attend_reserved without a reservation is refused by
    the kernel with no sequence's page or length changed; reserve() names its
    argument; the cache keeps its own copy of the offsets."""
    cache = PagedKVCache(64, 4, 1, 8, 4, [9], max_batch=2, dtype=torch.float64)
    cache.fix_block_table(8)
    table = cache.block_table
    with pytest.raises(ValueError, match="block table was fixed at 2 columns .* a prompt of lengths \\[20, 20\\] needs 5"):
        cache.add_sequences(torch.randn(2, 20, 1, 8, dtype=torch.float64), torch.randn(2, 20, 1, 8, dtype=torch.float64))
    assert cache.block_table is table and cache.active_slots == [] and cache.num_free_pages == 64

    cache.add_sequences(torch.randn(2, 3, 1, 8, dtype=torch.float64), torch.randn(2, 3, 1, 8, dtype=torch.float64))
    cache.reserve(1)
    step = [torch.randn(2, 1, 1, 8, dtype=torch.float64) for _ in range(3)]
    cache.attend_reserved(*step)
    pages, lengths = cache.k[:-1].clone(), cache.seqlens.clone()
    new = [torch.randn(2, 4, 1, 8, dtype=torch.float64) for _ in range(3)]  # four tokens, none reserved
    with pytest.raises(RuntimeError, match="block_table"):
        cache.attend_reserved(*new)
    assert torch.equal(cache.k[:-1], pages) and torch.equal(cache.seqlens, lengths)
    for bad in (0, -1, 0.5, True, "2"):
        with pytest.raises(ValueError, match="new_tokens must be an int >= 1"):
            cache.reserve(bad)

    offsets = torch.tensor([9, 13], dtype=torch.int32)
    own = PagedKVCache(8, 4, 1, 8, 4, offsets, max_batch=1)
    offsets[1] = 40
    assert own.offsets.tolist() == [9, 13] and own.farthest == 13
    with pytest.raises(ValueError, match="page_size must be an int >= 1"):
        from fibsparse_ext.lm import FibSparseLM, LMConfig
        FibSparseLM(LMConfig.preset("tiny")).make_caches(1, 10, page_size=0)
