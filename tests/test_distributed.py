"""Context parallelism (fibsparse_ext.distributed): every rank's shard of the
output, lse and gradients equals fibsparse_attn over the whole sequence, with
only the rows the pattern reads exchanged. The multi-process cases run under
torchrun with gloo on the CPU, each bounded in time."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from fibsparse_ext.distributed import context_parallel_attn, exchange_plan
from utils import requires_cuda

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(world: int, backend: str) -> None:
    """tests/cp_worker.py on `world` ranks under torchrun, bounded in time."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", os.path.join(HERE, "cp_worker.py"), backend]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get(
        "PYTHONPATH")])))
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("rank ")]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 9 cases and 3 LM steps per rank; 7 (dis)agreements per rank where ranks can disagree, and rank 0's timeout
    # (gloo)
    expected = 12 * world + (7 * world + (backend == "gloo") if world > 1 else 0)
    assert len(lines) == expected and all(line.endswith("ok") for line in lines), "\n".join(lines)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_rank_gets_the_whole_sequences_rows(world):
    """Over gloo on the CPU (a group of one is the single-process kernel):
    integer, per-head fractional (the summed d offsets included), GQA, a
    shorter and an empty last shard, a window longer than a shard, offsets
    reaching two shards back, no offsets; float64 and bfloat16 (float32 and
    float16 for one case); a repeated call and offsets changed in place; ranks
    that disagree on offsets (their values, also where sums of them agree, or
    their dtype), head_dim, dtype or shard lengths all refuse; a rank that never
    calls is an error on the others after the group's timeout;
    and a FibSparseLM step (stagger, learned, dense layers) on shards."""
    run_workers(world, "gloo")


@requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_each_rank_gets_the_whole_sequences_rows_over_nccl_on_cuda():
    """The same cases over NCCL, one GPU per rank (the CUDA kernels, float64)."""
    run_workers(2, "nccl")


def rows_read(lengths, window, offsets):
    """Brute force: for every rank, the positions before its shard that some of
    its queries read (fractional positions read floor and floor + 1 behind)."""
    starts = [sum(lengths[:r]) for r in range(len(lengths))]
    reads = []
    for start, length in zip(starts, lengths):
        read = set()
        for pos in range(start, start + length):
            for t in range(window):
                read.add(pos - t)
            for x in offsets:
                whole = int(x // 1)
                read.update([pos - whole] + ([pos - whole - 1] if isinstance(x, float) else []))
        reads.append({p for p in read if 0 <= p < start})
    return reads


@pytest.mark.parametrize("offsets", [[8, 13, 21, 300], [4.5, 9.0, 29.75], []])
def test_the_plan_moves_exactly_the_rows_the_pattern_reads(offsets):
    lengths = [50, 50, 13, 0, 40]
    tensor = torch.tensor(offsets, dtype=torch.float64 if offsets and isinstance(offsets[0], float) else torch.int32)
    plan = exchange_plan(lengths, 6, tensor)
    for rank, wanted in enumerate(rows_read(lengths, 6, offsets)):
        got = {p for lo, hi in plan.reads[rank] for p in range(lo, hi)}
        assert got == wanted
        sent = {p for (s, r), intervals in plan.sends.items() if r == rank for lo, hi in intervals
                for p in range(lo, hi)}
        assert sent == wanted  # every row read comes from its owner, once
        for (s, r), intervals in plan.sends.items():
            assert all(plan.starts[s] <= lo < hi <= plan.starts[s] + lengths[s] for lo, hi in intervals)


def test_needs_an_initialized_process_group():
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        context_parallel_attn(q, q, q, 4, [5])
