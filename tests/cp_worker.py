"""One rank of the context-parallel tests (tests/test_distributed.py launches it
with torchrun): every case's shard of the output, lse and gradients against
fibsparse_attn over the whole sequence in one process, float64. Prints one
line per case and exits non-zero if any mismatched.

    torchrun --nproc-per-node N tests/cp_worker.py [gloo|nccl]

gloo runs on the CPU; nccl on one GPU per rank (LOCAL_RANK).
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist

from fibsparse_ext import fibsparse_attn
from fibsparse_ext.accuracy import TOLERANCE, relative_error
from fibsparse_ext.distributed import context_parallel_attn

# (name, shard lengths per world size, heads, heads_kv, window, offsets; a
# group of one takes the whole of the two-rank sequence); every
# case in float64, against the single process to 1e-12, and the first ones also
# in bfloat16 (one in float32 and float16 too), against the float64 single process
# to that dtype's tolerance.
CASES = [
    ("integer", {2: [40, 40], 3: [30, 30, 17], 4: [20, 20, 20, 17]}, 4, 4, 5, [8, 13, 21, 34, 55]),
    ("fractional per head", {2: [50, 31], 3: [26, 26, 26], 4: [20, 20, 20, 9]}, 4, 2, 3,
     [[4.5, 9.25, 30.0, 61.75], [6.0, 17.5, 40.25, -1], [3.0, 8.0, 12.5, 90.0], [-1, -1, -1, -1]]),
    ("window beyond the last shard, offsets beyond a shard", {2: [60, 7], 3: [41, 41, 5], 4: [30, 30, 30, 3]}, 2, 1, 20, [25, 44, 90]),
    ("an empty last shard", {2: [50, 0], 3: [30, 30, 0], 4: [20, 20, 20, 0]}, 2, 2, 4, [6, 35]),
    ("band only", {2: [33, 33], 3: [25, 25, 21], 4: [17, 17, 17, 17]}, 2, 2, 9, []),
]


def run_case(name, lengths, heads, heads_kv, window, offsets, rank, device, dtype=torch.float64):
    torch.manual_seed(0)
    total = sum(lengths)
    q, k, v, grad_out, grad_lse = (torch.randn(shape, dtype=torch.float64).to(device) for shape in [
        (2, total, heads, 16), (2, total, heads_kv, 16), (2, total, heads_kv, 16), (2, total, heads, 16),
        (2, heads, total)])
    fractional = any(isinstance(x, float) for row in offsets for x in (row if isinstance(row, list) else [row]))
    positions = torch.tensor(offsets, dtype=torch.float64 if fractional else torch.int32, device=device)
    start = sum(lengths[:rank])
    rows = slice(start, start + lengths[rank])

    shard = [t[:, rows].to(dtype).requires_grad_() for t in (q, k, v)]
    mine = positions.to(torch.float32 if fractional and dtype != torch.float64 else positions.dtype)
    mine = mine.clone().requires_grad_(fractional)
    out, lse = context_parallel_attn(*shard, window, mine, return_lse=True)
    ((out.double() * grad_out[:, rows]).sum() + (lse.double() * grad_lse[..., rows]).sum()).backward()
    with torch.no_grad():  # again with the same offsets tensor (its host copy and plan are kept), then changed
        again = context_parallel_attn(*shard, window, mine)
        repeat_ok = torch.equal(again, out)
        if mine.numel():
            moved = positions + (positions >= 0) * 3  # in place below: the kept plan must follow (every strip moves)
            mine.copy_(moved)
            changed = context_parallel_attn(*shard, window, mine)
            want = fibsparse_attn(q, k, v, window, moved)
            mine.copy_(positions)
            repeat_ok &= relative_error(changed, want[:, rows]) < TOLERANCE[dtype] if lengths[rank] else True

    whole = [t.clone().requires_grad_() for t in (q, k, v)]
    every = positions.clone().requires_grad_(fractional)
    want_out, want_lse = fibsparse_attn(*whole, window, every, return_lse=True)
    ((want_out * grad_out).sum() + (want_lse * grad_lse).sum()).backward()

    errors = {"out": relative_error(out, want_out[:, rows]), "lse": relative_error(lse, want_lse[..., rows])}
    for label, got, want in zip(("dq", "dk", "dv"), shard, whole):
        if lengths[rank]:
            errors[label] = relative_error(got.grad, want.grad[:, rows])
    if fractional:  # each rank's contribution; their sum is the whole sequence's gradient
        summed = mine.grad.clone()
        dist.all_reduce(summed)
        errors["doffsets"] = relative_error(summed, every.grad)
    bad = {key: err for key, err in errors.items() if not err < TOLERANCE[dtype]}
    if not repeat_ok:
        bad["repeated call"] = "a second call differs, or a change of the offsets went unseen"
    name = f"{name} ({str(dtype)[6:]})"
    sys.stdout.write(f"rank {rank} {name} {lengths}: {'ok' if not bad else f'MISMATCH {bad}'}\n")  # one write: ranks share the pipe
    sys.stdout.flush()
    return not bad


def refuses_disagreements(rank, world, device):
    """Shards or patterns that differ across ranks: the same error on every
    rank, none left waiting; and patterns that differ only in how they are
    written go through."""
    cases = [  # (what the error names, None where the call must go through; what this rank passes)
        ("offsets values", dict(offsets=[5, 9 + rank])),
        # Patterns with one sum of squares and one sum of the values weighted by their place.
        ("offsets values", dict(offsets=[4, 13] if rank == 0 else [8, 11])),
        ("offsets dtype", dict(offsets=[5, 9] if rank == 0 else [5.0, 9.0])),
        # -0.0 and 0.0 are one position: ranks holding them agree.
        (None, dict(offsets=[0.0, 5.5] if rank == 0 else [-0.0, 5.5])),
        ("head_dim", dict(head_dim=16 if rank == 0 else 32)),
        ("dtype", dict(dtype=torch.float32 if rank == 0 else torch.float64)),
        ("seqlen_r", dict(length=10 if rank < world - 1 else 20)),  # the last shard longer
    ]
    ok = True
    for expected, change in cases:
        q = torch.randn(1, change.get("length", 10), 2, change.get("head_dim", 16),
                        dtype=change.get("dtype", torch.float64), device=device)
        try:
            context_parallel_attn(q, q, q, 4, change.get("offsets", [5, 9]))
            error = None
        except ValueError as refusal:
            error = str(refusal)
        if expected is None:
            passed, line = error is None, f"agrees on {change['offsets']}: {'ok' if error is None else error}"
        else:
            passed = error is not None and expected in error
            line = f"refuses a disagreement on {expected}: {'ok' if passed else 'NOT REFUSED'}"
        sys.stdout.write(f"rank {rank} {line}\n")
        sys.stdout.flush()
        ok &= passed
    return ok


def a_missing_rank_times_out(rank, world, device):
    """A rank that never calls: the others get an error after the group's
    timeout instead of waiting for ever (gloo; NCCL's watchdog ends the process)."""
    short = dist.new_group(timeout=datetime.timedelta(seconds=2))
    ok = True
    if rank == 0:
        q = torch.randn(1, 10, 2, 16, dtype=torch.float64, device=device)
        try:
            context_parallel_attn(q, q, q, 4, [5, 9], group=short)
            ok = False
        except RuntimeError as error:
            ok = "not every rank of the group called it" in str(error)
        sys.stdout.write(f"rank {rank} a missing rank is an error after the timeout: {'ok' if ok else 'NO ERROR'}\n")
        sys.stdout.flush()
    dist.barrier()
    return ok


def lm_step_matches_one_process(rank, world, device, schedule):
    """FibSparseLM on this rank's shard of a sequence: its logits rows, and every
    parameter's gradient summed over the ranks (as DDP would), equal one
    process running the whole sequence."""
    import torch.nn.functional as F

    from fibsparse_ext.lm.models import FibSparseLM, LMConfig
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule=schedule)).double().to(device)
    total = 150 if world == 2 else 140
    tokens = torch.randint(0, 256, (1, total + 1), generator=torch.Generator().manual_seed(1)).to(device)
    per_rank = -(-total // world)
    start = rank * per_rank
    rows = slice(start, min(start + per_rank, total))
    logits = model(tokens[:, rows], start_pos=start, context_parallel_group=dist.group.WORLD)
    loss = F.cross_entropy(logits[0], tokens[0, rows.start + 1:rows.stop + 1], reduction="sum")
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for g in grads:
        dist.all_reduce(g)
    whole = model(tokens[:, :-1])
    whole_grads = torch.autograd.grad(F.cross_entropy(whole[0], tokens[0, 1:], reduction="sum"),
                                      list(model.parameters()))
    errors = [relative_error(logits, whole[:, rows])] + [relative_error(a, b) for a, b in zip(grads, whole_grads)]
    ok = max(errors) < 1e-10
    sys.stdout.write(f"rank {rank} LM step, {schedule}: {'ok' if ok else f'MISMATCH {max(errors)}'}\n")
    sys.stdout.flush()
    return ok


def main():
    backend = sys.argv[1] if len(sys.argv) > 1 else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    rank, world = dist.get_rank(), dist.get_world_size()
    ok = True
    shards = lambda lengths: lengths[world] if world > 1 else [sum(lengths[2])]
    for name, lengths, heads, heads_kv, window, offsets in CASES:
        ok &= run_case(name, shards(lengths), heads, heads_kv, window, offsets, rank, device)
    for name, lengths, heads, heads_kv, window, offsets in CASES[:2]:
        ok &= run_case(name, shards(lengths), heads, heads_kv, window, offsets, rank, device, torch.bfloat16)
    name, lengths, heads, heads_kv, window, offsets = CASES[1]  # the other dtypes the kernels take
    for dtype in (torch.float32, torch.float16):
        ok &= run_case(name, shards(lengths), heads, heads_kv, window, offsets, rank, device, dtype)
    if world > 1:
        ok &= refuses_disagreements(rank, world, device)
        if backend == "gloo":
            ok &= a_missing_rank_times_out(rank, world, device)
    for schedule in ["stagger", "learned", "dense"]:
        ok &= lm_step_matches_one_process(rank, world, device, schedule)
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
