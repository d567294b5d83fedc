"""The fuzzer (tests/fuzz.py) in chunks of seeded cases: 2,000 on the CPU by
default, and on CUDA every dtype, so both kernel families (tensor cores for
fp16 / bf16, lane groups for fp32 / fp64). FIBSPARSE_FUZZ_CASES scales both
(tools/gpu_check.sh runs a larger CUDA grid)."""
import os

import pytest

from fuzz import check_case, draw_case
from utils import DEVICES

CHUNK = 100
CASES = int(os.environ.get("FIBSPARSE_FUZZ_CASES", "2000"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", range((CASES + CHUNK - 1) // CHUNK))
def test_fuzz_against_reference(device, chunk):
    # Seeds differ per device so that each device explores its own cases.
    first = chunk * CHUNK + (10**6 if device == "cuda" else 0)
    for seed in range(first, first + min(CHUNK, CASES - chunk * CHUNK)):
        check_case(draw_case(seed, device))
