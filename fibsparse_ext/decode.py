"""Decoding with a KV cache: attention for a few new query tokens per sequence
against cached keys, reading only the keys the pattern names (the compiled
op torch.ops.fibsparse.decode, CPU and CUDA; this module checks its inputs).

The cache can be a ring: a sequence's token at absolute position p lives in
slot p % capacity. Since no query ever reads a key older than the largest
distance, a ring of `required_capacity(...)` slots holds everything decoding
needs, and memory stays constant however long generation runs. Keys are cached
after rotary embedding at their absolute position, so wrap-around does not
disturb positions.

A call's checks cost no device sync once its tensors have been seen: offsets
and lengths on the GPU are read on the host once per tensor version
(_checked_once.py), a KVCache keeps a host copy of the lengths it wrote, and
everything else the checks read is shapes, dtypes and devices.
"""
from __future__ import annotations

import math
import weakref
from typing import Optional

import torch

from . import _ops  # noqa: F401  (registers torch.ops.fibsparse.*)
from ._checked_once import CheckedOnce, can_remember
from ._checks import check_new_tokens, check_op_inputs, check_scale
from ._offsets import (PADDING, OffsetsLike, as_offsets, band_argument, check_offset_values, check_window,
                       farthest_band_distance)
from .functional import default_scale


def largest_distance(window: int, offsets: torch.Tensor) -> int:
    """The farthest position behind a query that the pattern may read (a
    fractional p reads floor(p) + 1)."""
    real = offsets[offsets != PADDING]
    far = int(math.floor(real.max().item())) + (1 if offsets.is_floating_point() else 0) if real.numel() else 0
    return max(farthest_band_distance(window), far)


def required_capacity(window: int, offsets: OffsetsLike, new_tokens: int = 1) -> int:
    """Ring slots needed to decode `new_tokens` queries per call."""
    offsets = offsets if isinstance(offsets, torch.Tensor) else torch.tensor(offsets)
    return largest_distance(window, offsets) + new_tokens


def check_ring_capacity(capacity: int, window: int, offsets: torch.Tensor, new_tokens: int) -> None:
    needed = required_capacity(window, offsets, new_tokens)
    if needed > capacity:
        raise ValueError(f"cache too small: a ring must hold {needed} positions for window {window}, these "
                         f"offsets and {new_tokens} new token(s), it has {capacity}")


def check_length_values(lengths: list, new: int, appended: int, capacity: int, ring: bool) -> None:
    """The lengths' values, read on the host: after `appended` new tokens are
    written, every sequence holds at least its `new` queries, and a linear
    cache holds every token."""
    if not lengths:
        return
    shortest, longest = min(lengths) + appended, max(lengths) + appended
    if shortest < new:
        raise ValueError(f"cache_seqlens must count the {new} new token(s) already written, got {lengths}"
                         + (f" (+ {appended} appended)" if appended else ""))
    if not ring and longest > capacity:
        raise ValueError(f"cache_seqlens {[n + appended for n in lengths]} go beyond the cache's capacity {capacity}")


# Offsets given as a Python list are turned into a device tensor (a host-to-
# device copy, which waits for the GPU) and checked once per list value.
_list_offsets: dict[tuple, tuple[torch.Tensor, int]] = {}
# Tensor offsets are checked, ring capacity included, once per tensor version.
_offsets_fit = CheckedOnce()
# A caller's cache_seqlens on the GPU is read on the host once per tensor version.
_lengths_checked = CheckedOnce()


def _offsets_that_fit(offsets: OffsetsLike, q: torch.Tensor, window: int, ring: bool, capacity: int,
                      new: int) -> torch.Tensor:
    """The offsets as the op's tensor, their values checked and, for a ring,
    checked to fit in it."""
    if not isinstance(offsets, torch.Tensor):
        # repr tells 5 from 5.0 and True, which compare (and hash) equal.
        key = (repr(offsets), q.device, q.dtype == torch.float64, window)
        known = _list_offsets.get(key)
        if known is None:
            tensor = as_offsets(offsets, q, window)  # checks the values on the Python numbers
            host = torch.tensor(offsets) if len(offsets) else torch.zeros(0, dtype=torch.int64)
            known = (tensor, largest_distance(window, host))
            if len(_list_offsets) > 256:
                _list_offsets.clear()
            _list_offsets[key] = known
        tensor, farthest = known
        if ring and farthest + new > capacity:
            raise ValueError(f"cache too small: a ring must hold {farthest + new} positions for window {window}, "
                             f"these offsets and {new} new token(s), it has {capacity}")
        return tensor
    offsets = as_offsets(offsets, q, window, check_values=False)  # shape, dtype and device
    _check_tensor_offsets(offsets, window, ring, capacity, new)
    return offsets


def _check_tensor_offsets(offsets: torch.Tensor, window: int, ring: bool, capacity: int, new: int) -> None:
    """The values of tensor offsets, and that they fit a ring."""
    def check():
        check_offset_values(offsets, window)
        if ring:
            check_ring_capacity(capacity, window, offsets.detach().cpu(), new)

    if offsets.device.type == "cpu":  # reading them costs no sync: on every call
        check()
    elif not offsets.is_meta:
        _offsets_fit.run((offsets,), (window, ring, capacity, new), check)


# Calls whose checks of shapes, dtypes, devices, window, scale (and the values
# of list offsets) passed, by what those checks read: a repeated call's
# checks cost one dictionary lookup. Tensor offsets' values are checked apart,
# once per tensor version.
_passed_calls: dict[tuple, tuple] = {}


def _layout(t) -> tuple:
    return (t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else (type(t),)


def _check_call(q, k_cache, v_cache, window, offsets, softmax_scale, ring, k, v, offsets_fit: bool):
    """Every check of a call but the lengths' values: (offsets tensor, scale)."""
    tensor_offsets = isinstance(offsets, torch.Tensor)
    try:
        # (types too: True == 1 == 1.0, and a bool is no window or scale)
        key = (type(window), window, type(softmax_scale), softmax_scale, ring, offsets_fit, _layout(q),
               _layout(k_cache), _layout(v_cache), _layout(k), _layout(v),
               _layout(offsets) if tensor_offsets else repr(offsets))
        passed = _passed_calls.get(key)
    except TypeError:  # something unhashable (a SymInt window): no memory
        key, passed = None, None
    if passed is not None:
        list_offsets, scale = passed
        if not tensor_offsets:
            return list_offsets, scale
        if not offsets_fit:
            _check_tensor_offsets(offsets, window, ring, k_cache.shape[1], q.shape[1])
        return offsets, scale
    offsets, scale = _check_call_fully(q, k_cache, v_cache, window, offsets, softmax_scale, ring, k, v, offsets_fit)
    if key is not None:
        if len(_passed_calls) > 1024:
            _passed_calls.clear()
        _passed_calls[key] = (None if tensor_offsets else offsets, scale)
    return offsets, scale


def _check_call_fully(q, k_cache, v_cache, window, offsets, softmax_scale, ring, k, v, offsets_fit: bool):
    check_window(window)
    if not isinstance(q, torch.Tensor) or q.dim() != 4:  # what follows reads q's shape
        raise ValueError(f"q must be a 4-D tensor (batch, seqlen, heads, head_dim), got "
                         f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    scale = check_scale(default_scale(q, softmax_scale))
    if not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 4:
        raise ValueError(f"k_cache must be a 4-D tensor (batch, capacity, heads_kv, head_dim), got "
                         f"{tuple(k_cache.shape) if isinstance(k_cache, torch.Tensor) else type(k_cache).__name__}")
    new, capacity = q.shape[1], k_cache.shape[1]
    if not offsets_fit:
        offsets = _offsets_that_fit(offsets, q, window, ring, capacity, new)
    check_op_inputs(q, k_cache, v_cache, offsets, band_argument(window), scale, "k_cache", "v_cache")
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new tokens' keys and values), or neither")
    if k is not None:
        check_new_tokens(k, v, q, k_cache)  # (v_cache has k_cache's dtype and device: check_op_inputs)
    return offsets, scale


def _write_at_device_positions(k_cache, v_cache, lengths, k, v, ring: bool, guard: bool) -> None:
    """Writes k, v (batch, new, ...) after lengths[b] tokens, with the slots
    computed on the device (no host value: a CUDA graph can replay it). With
    `guard`, when any position is one the cache cannot hold (negative, or past
    a linear cache's end), every slot is rewritten with its own value: a bad
    length changes nothing and nothing is written out of bounds; the kernel
    then reports it."""
    new, capacity = k.shape[1], k_cache.shape[1]
    keep = slice(max(0, new - capacity), new)  # older ones would be overwritten in this same write
    positions = lengths.long()[:, None]
    if new > 1 or keep.start:  # (one new token, the decode step: no launch for the positions)
        positions = positions + torch.arange(keep.start, new, device=k.device)
    # Without the guard the caller vouches for the lengths; a bad one still
    # cannot write out of bounds: indexing checks its indices on the device
    # (a negative position is sent past the end, where a negative index would
    # wrap around).
    if ring:
        slots = positions.remainder(capacity)
    else:
        slots = positions.clamp(0, capacity - 1) if guard else positions.masked_fill(positions < 0, capacity)
    sequences = torch.arange(k.shape[0], device=k.device)[:, None]
    k, v = k[:, keep], v[:, keep]
    if guard:  # all or nothing: a refused call writes no sequence's tokens
        fits = ((positions >= 0) if ring else (positions >= 0) & (positions < capacity)).all()
        k = torch.where(fits, k, k_cache[sequences, slots])
        v = torch.where(fits, v, v_cache[sequences, slots])
    # An indexed assignment (index_put_) rather than scatter_: torch.compile
    # writes it in place, where it turns a scatter_ into a graph input into a
    # copy of the whole cache.
    k_cache[sequences, slots] = k
    v_cache[sequences, slots] = v


class KVCache:
    """One layer's cache for a batch: k, v of (batch, capacity, heads_kv, head_dim)
    and seqlens (batch,), the number of tokens written to each sequence so far.

    The cache keeps a host copy of the lengths it wrote itself, so its writes
    and checks read no value from the GPU; a change of `seqlens` by anyone
    else is seen through the tensor's version counter, and read back once.
    After keep_lengths_on_device(), nothing reads the lengths on the host (a
    CUDA graph replays its writes)."""

    def __init__(self, batch: int, capacity: int, heads_kv: int, head_dim: int, *, ring: bool,
                 dtype=torch.float32, device=None):
        for name, value in (("batch", batch), ("capacity", capacity), ("heads_kv", heads_kv), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.k = torch.zeros(batch, capacity, heads_kv, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.seqlens = torch.zeros(batch, dtype=torch.int64, device=device)
        self.ring = ring
        self.lengths_on_device = False
        self.in_compiled_step = False
        self._remember_lengths([0] * batch)

    @classmethod
    def wrap(cls, k: torch.Tensor, v: torch.Tensor, seqlens: torch.Tensor, ring: bool) -> "KVCache":
        """A KVCache over existing buffers (writes go into them)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.seqlens, cache.ring = k, v, seqlens, ring
        cache.lengths_on_device = cache.in_compiled_step = False
        cache._host_lengths, cache._host_state = None, None  # read from seqlens on first use
        return cache

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def _remember_lengths(self, lengths: list) -> None:
        remember = can_remember([self.seqlens])
        self._host_lengths = lengths if remember else None
        self._host_state = (self.seqlens, self.seqlens._version) if remember else None

    def host_seqlens(self) -> list:
        """seqlens as a list: the host copy when nobody changed seqlens since
        this cache last wrote it, else read from the device (one sync)."""
        if self.lengths_on_device:
            raise RuntimeError("this cache keeps its lengths on the device only (keep_lengths_on_device()); "
                               "read cache.seqlens instead")
        state = self._host_state
        if (self._host_lengths is None or state is None or state[0] is not self.seqlens
                or state[1] != self.seqlens._version):
            self._remember_lengths(self.seqlens.tolist())
        return self._host_lengths if self._host_lengths is not None else self.seqlens.tolist()

    def keep_lengths_on_device(self) -> None:
        """From now on the lengths are read and advanced on the device only, as
        a CUDA graph needs (a host value would be baked into it): writes compute
        their slots on the device and the host checks of the lengths are
        skipped. The owner keeps the lengths valid (generate() sizes the caches
        for every token it writes); the CUDA decode kernel checks them too."""
        self.lengths_on_device = True
        self._host_lengths = None

    def enter_compiled_step(self) -> None:
        """This cache now belongs to a compiled decode step (DecodeStep with
        compile=True), which ran one checked eager step with the same tensors
        first and checks the layers' offsets before every compiled call: inside
        the compiled graph (torch.compiler.is_compiling()) attend() skips its
        host checks, which a graph cannot hold. Implies keep_lengths_on_device().
        Anywhere else the checks run as before."""
        self.keep_lengths_on_device()
        self.in_compiled_step = True

    def skips_host_checks(self) -> bool:
        """Inside the compiled graph of a step whose checks ran outside it."""
        return self.in_compiled_step and torch.compiler.is_compiling()

    def holds_tokens(self) -> bool:
        """Whether any sequence has a token (a cache on the device only: taken to)."""
        return self.lengths_on_device or any(n > 0 for n in self.host_seqlens())

    def check_write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """The checks of write(), which all run before it writes anything."""
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a tensor (batch, new, heads_kv, head_dim), got {type(t).__name__}")
        expected = (self.k.shape[0], k.shape[1] if k.dim() == 4 else -1, *self.k.shape[2:])
        if k.dim() != 4 or tuple(k.shape) != expected or v.shape != k.shape:
            raise ValueError(f"k and v must be (batch, new, heads_kv, head_dim) = {expected}, got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        for name, t in (("k", k), ("v", v)):
            if t.device != self.k.device:
                raise ValueError(f"{name} must be on the cache's device {self.k.device}, got {t.device}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")

    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends k, v (batch, new, heads_kv, head_dim) after each sequence's
        tokens. A ring keeps the last `capacity` positions; a linear cache
        refuses to overflow."""
        self.check_write(k, v)
        if k.shape[1] == 0:
            return
        lengths = None if self.lengths_on_device else self.host_seqlens()
        if lengths is not None and not self.ring and max(lengths) + k.shape[1] > self.capacity:
            raise ValueError(f"cache full: sequences would reach {max(lengths) + k.shape[1]} tokens, "
                             f"capacity is {self.capacity}")
        self._append(lengths, k, v)

    def _append(self, lengths: Optional[list], k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes checked k, v after `lengths` (the host copy; None: on the
        device only) and advances seqlens."""
        new = k.shape[1]
        if lengths is not None and len(set(lengths)) == 1:
            self._copy_at(lengths[0], k, v)
        else:  # ragged lengths, or only the device knows them
            _write_at_device_positions(self.k, self.v, self.seqlens, k.to(self.k.dtype), v.to(self.v.dtype),
                                       self.ring, guard=False)
        self.seqlens += new
        if lengths is not None:
            self._remember_lengths([n + new for n in lengths])

    def _copy_at(self, length: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Every sequence holds `length` tokens: the new ones go into one slice
        of slots (two where a ring wraps), one copy per slice and no index
        tensor, the fewest launches for a decode step."""
        new, capacity = k.shape[1], self.capacity
        first = max(0, new - capacity)  # older ones would be overwritten in this same write
        start = (length + first) % capacity if self.ring else length + first
        count = new - first
        head = min(count, capacity - start)
        for cache, values in ((self.k, k), (self.v, v)):
            cache[:, start:start + head].copy_(values[:, first:first + head])
            if head < count:
                cache[:, :count - head].copy_(values[:, first + head:])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, offsets: OffsetsLike,
               softmax_scale: Optional[float] = None, offsets_fit: bool = False, return_lse: bool = False):
        """Appends the new tokens' k, v and attends q to the cache, as
        fibsparse_attn_with_kvcache(q, cache.k, cache.v, cache.seqlens, ..., k=k, v=v)
        followed by seqlens += new, in fewer launches: the lengths come from
        the host copy. Every check runs before the write. offsets_fit: the
        caller built the offsets valid and checked that they fit this ring
        (FibSparseAttention does, once per offsets version), so their values
        are not read here."""
        if self.skips_host_checks():  # the step's eager call checked these tensors' layouts
            scale = default_scale(q, softmax_scale)
        else:
            offsets, scale = _check_call(q, self.k, self.v, window, offsets, softmax_scale, self.ring, k, v,
                                         offsets_fit)
        new = q.shape[1]
        lengths = None if self.lengths_on_device else self.host_seqlens()
        if lengths is not None:
            check_length_values(lengths, new, new, self.capacity, self.ring)
        self._append(lengths, k, v)
        out, lse = torch.ops.fibsparse.decode(q, self.k, self.v, self.seqlens, offsets, band_argument(window), scale,
                                              self.ring)
        return (out, lse) if return_lse else out


# Calls that write nothing, with lengths on the GPU and offsets on the GPU or
# in a list: key (offsets' identity or list value, lengths' identity) ->
# (what the checks read, weak references to the tensors, and what the checks
# produced: the op's offsets tensor for list offsets, band and scale). A
# repeated call costs building the state and one lookup, the least Python a
# checked call can cost.
_read_only_calls: dict[tuple, tuple] = {}


def _attend_without_writing(q, k_cache, v_cache, cache_seqlens, window, offsets, softmax_scale, ring, return_lse,
                            check_lengths):
    """A call that writes nothing (no k, v). With lengths on the GPU and
    offsets on the GPU or in a list, the whole of the checks (those of a
    writing call, and the lengths' values unless check_lengths is False) runs
    once per version of the offsets and lengths tensors and per layout of q
    and the caches. Otherwise (CPU tensors) the checks run on every call."""
    tensor_offsets = isinstance(offsets, torch.Tensor)
    try:
        # Versions and storage: an in-place change, or a .set_(), is seen. The
        # types too: True == 1 == 1.0, and a bool is no window or scale.
        state = (cache_seqlens._version, cache_seqlens.data_ptr(),
                 (offsets._version, offsets.data_ptr()) if tensor_offsets else None,
                 type(window), window, type(softmax_scale), softmax_scale, ring, check_lengths,
                 q.shape, q.dtype, q.device, k_cache.shape, k_cache.dtype, v_cache.shape, v_cache.dtype)
        key = (id(offsets) if tensor_offsets else repr(offsets), id(cache_seqlens))
        seen = _read_only_calls.get(key)
    except (AttributeError, RuntimeError, TypeError):  # not tensors; no version counter (inference); unhashable
        key = seen = None
    if (seen is not None and seen[0] == state and seen[1]() is cache_seqlens
            and (seen[2] is None or seen[2]() is offsets)):
        lengths, (op_offsets, band, scale) = cache_seqlens, seen[3]
        if tensor_offsets:
            op_offsets = offsets
    else:
        op_offsets, scale = _check_call(q, k_cache, v_cache, window, offsets, softmax_scale, ring, None, None,
                                        offsets_fit=False)
        lengths, _ = _checked_lengths(cache_seqlens, q, q.shape[1], 0, k_cache.shape[1], ring, check_lengths)
        band = band_argument(window)
        # CPU values are read on every call (no sync to save, and a write
        # through a NumPy view would not bump the version counter).
        if (key is not None and lengths is cache_seqlens and cache_seqlens.is_cuda
                and (not tensor_offsets or offsets.is_cuda)):
            if len(_read_only_calls) > 1024:  # entries of temporary tensors
                _read_only_calls.clear()
            _read_only_calls[key] = (state, weakref.ref(cache_seqlens), weakref.ref(offsets) if tensor_offsets else None,
                                     (None if tensor_offsets else op_offsets, band, scale))
    out, lse = torch.ops.fibsparse.decode(q, k_cache, v_cache, lengths, op_offsets, band, scale, ring)
    return (out, lse) if return_lse else out


def _checked_lengths(cache_seqlens, q: torch.Tensor, new: int, appended: int, capacity: int, ring: bool,
                     check_lengths: bool) -> tuple[torch.Tensor, bool]:
    """cache_seqlens on q's device, and whether its values were checked on the host."""
    batch = q.shape[0]
    if (not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.shape != (batch,)
            or cache_seqlens.is_floating_point() or cache_seqlens.is_complex() or cache_seqlens.dtype == torch.bool):
        described = (f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)}" if isinstance(cache_seqlens, torch.Tensor)
                     else f"{type(cache_seqlens).__name__} {cache_seqlens!r}")
        raise ValueError(f"cache_seqlens must be an integer tensor of shape ({batch},), got {described}")
    if cache_seqlens.is_meta and not q.is_meta:  # no values to check or to read
        raise ValueError(f"cache_seqlens must hold values, on the CPU or q's device {q.device}, got a meta tensor")
    if cache_seqlens.device.type == "cpu":  # reading them costs no sync: on every call
        check_length_values(cache_seqlens.tolist(), new, appended, capacity, ring)
        checked = True
    elif check_lengths:
        _lengths_checked.run((cache_seqlens,), (new, appended, capacity, ring),
                             lambda: check_length_values(cache_seqlens.tolist(), new, appended, capacity, ring))
        checked = True
    else:
        checked = False
    if cache_seqlens.device != q.device or cache_seqlens.dtype not in (torch.int32, torch.int64):
        cache_seqlens = cache_seqlens.to(device=q.device, dtype=torch.int64)
    return cache_seqlens, checked


def fibsparse_attn_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                cache_seqlens: torch.Tensor, window: int, offsets: OffsetsLike,
                                softmax_scale: Optional[float] = None, ring: bool = False,
                                return_lse: bool = False, k: Optional[torch.Tensor] = None,
                                v: Optional[torch.Tensor] = None, check_lengths: bool = True,
                                block_table: Optional[torch.Tensor] = None):
    """Attention of new queries against a KV cache, in FlashAttention's
    flash_attn_with_kvcache convention.

    Args:
        q: (batch, new, heads, head_dim): the queries of the newest `new` tokens.
        k_cache, v_cache: (batch, capacity, heads_kv, head_dim).
        cache_seqlens: (batch,) ints: tokens in each sequence's cache. Without k, v
            the new tokens are among them: query t of sequence b is at position
            cache_seqlens[b] - new + t. Sequences may have different lengths.
        window, offsets: the pattern, as for fibsparse_attn (integer or fractional).
        ring: the cache is a ring (position p in slot p % capacity); it must hold
            every distance the newest queries read.
        k, v: (batch, new, heads_kv, head_dim), optional: the new tokens' keys and
            values, written into the cache in place after cache_seqlens[b] tokens
            first (cache_seqlens itself is not changed: add `new` to it after).
        check_lengths: read cache_seqlens on the host and refuse bad lengths
            before anything is written. On the GPU this is done once per version
            of the cache_seqlens tensor (a sync when it changed, none when it did
            not). False skips it for lengths on the GPU (no sync at all): then
            the CUDA kernel checks them on the device (a bad length stops the
            process with a device-side assert) and the write of k, v leaves the
            cache unchanged where a length is bad. Lengths on the CPU are always
            checked (it costs no sync).
        block_table: (batch, max_pages_per_sequence) int32, optional: the cache
            is paged, k_cache and v_cache a pool of (num_pages, page_size,
            heads_kv, head_dim); the call is fibsparse_ext.paged's
            fibsparse_attn_with_paged_kvcache (which reads its checks' outcome
            on the host once per call; check_lengths does not apply). Not with
            ring.
    Returns:
        out (batch, new, heads, head_dim) [, lse (batch, heads, new)].

    Checked on every call, before anything is written: shapes, dtypes and
    devices of every argument, window and softmax_scale. Offsets' values
    (and that they fit a ring) are read on the host once per offsets tensor
    version, or once per list value.
    """
    if block_table is not None:
        if ring:
            raise ValueError("ring=True and a block_table exclude each other: a paged cache gives back the pages no "
                             "query reads any more, as a ring reuses its slots")
        from .paged import fibsparse_attn_with_paged_kvcache  # paged.py imports this module
        return fibsparse_attn_with_paged_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, window, offsets,
                                                 softmax_scale, return_lse, k, v)
    if k is None and v is None:
        return _attend_without_writing(q, k_cache, v_cache, cache_seqlens, window, offsets, softmax_scale, ring,
                                       return_lse, check_lengths)
    offsets, scale = _check_call(q, k_cache, v_cache, window, offsets, softmax_scale, ring, k, v, offsets_fit=False)
    new = q.shape[1]
    appended = new if k is not None else 0
    lengths, checked = _checked_lengths(cache_seqlens, q, new, appended, k_cache.shape[1], ring, check_lengths)
    if k is not None and new > 0:
        _write_at_device_positions(k_cache, v_cache, lengths, k, v, ring, guard=not checked)
        lengths = lengths + new
    out, lse = torch.ops.fibsparse.decode(q, k_cache, v_cache, lengths, offsets, band_argument(window), scale, ring)
    return (out, lse) if return_lse else out
