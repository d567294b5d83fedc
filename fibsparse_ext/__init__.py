"""fibsparse_ext: causal window-plus-Fibonacci-offset sparse attention for PyTorch.

    from fibsparse_ext import fibsparse_attn, fibsparse_attn_varlen, FibSparseAttention, make_schedule
"""
from ._offsets import PADDING
from ._ops import build_info
from .functional import fibsparse_attn
from .reference import fibsparse_attn_ref, fibsparse_attn_varlen_ref
from .schedules import BASES, SCHEDULES, Schedule, make_schedule
from .modules import FibSparseAttention
from .varlen import fibsparse_attn_varlen

__all__ = [
    "BASES", "PADDING", "SCHEDULES", "FibSparseAttention", "Schedule", "build_info", "fibsparse_attn",
    "fibsparse_attn_ref", "fibsparse_attn_varlen", "fibsparse_attn_varlen_ref", "make_schedule",
]
__version__ = "0.1.0"
