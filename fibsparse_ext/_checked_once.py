"""Checks of device tensors' values that run once per tensor version.

Reading a CUDA tensor's values on the host costs a device sync, which in a
loop of back-to-back calls stalls the GPU. A tensor reused unchanged from call
to call (a layer's offsets, the cu_seqlens every layer of a packed batch
shares) therefore has its values checked once. An entry holds weak references
(live tensors, not new ones that reuse a dead one's id), their version
counters (every in-place op bumps them), their data pointers and the settings
the check depended on. Writes that bypass the version counter (through
`.data`, or another library's view of the memory over DLPack) are not seen
here; the CUDA kernels check what they read on the device, on every launch
(csrc/cuda/offsets_check.cuh), and stop with a device-side assert.
"""
from __future__ import annotations

import threading
import weakref
from typing import Callable


def can_remember(tensors) -> bool:
    """Whether a change of these tensors can be seen: a tensor made under
    torch.inference_mode has no version counter, so nothing read from it may
    be kept for a later call."""
    return not any(t.is_inference() for t in tensors if t is not None)


class CheckedOnce:
    def __init__(self):
        self._seen: dict[tuple, tuple] = {}
        self._lock = threading.Lock()  # calls from several threads share the memory

    def run(self, tensors: tuple, settings: tuple, check: Callable[[], None]) -> None:
        """Runs `check` unless these tensors, unchanged, passed it with these settings."""
        # Written for speed (a decode step calls it several times per token):
        # list comprehensions rather than generators, no lock to read (one
        # dict.get is atomic under the GIL).
        if any([t.is_inference() for t in tensors if t is not None]):  # can_remember, inlined
            check()
            return
        ident = tuple(map(id, tensors))
        state = (*[(t._version, t.data_ptr()) for t in tensors], *settings)
        seen = self._seen.get(ident)
        if seen is not None and seen[1] == state and all([ref() is t for ref, t in zip(seen[0], tensors)]):
            return
        check()
        with self._lock:
            if len(self._seen) > 1024:  # dead entries of temporary tensors
                for dead in [key for key, (refs, _) in self._seen.items() if any(ref() is None for ref in refs)]:
                    del self._seen[dead]
            self._seen[ident] = (tuple(weakref.ref(t) for t in tensors), state)
