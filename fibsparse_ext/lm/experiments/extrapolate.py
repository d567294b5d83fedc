"""Train one LM per attention variant and seed (same data, steps and optimizer
for every variant at a given seed), then measure validation perplexity at 1x,
2x, 4x, 8x and 16x the training length, the training throughput and the
inference latency of each.

    python -m fibsparse_ext.lm.experiments.extrapolate --preset tiny
    python -m fibsparse_ext.lm.experiments.extrapolate --preset small \
        --schedules fixed,learned,stagger,coprime,pow2-fixed,pow2-stagger,dense --out runs/small
    python -m fibsparse_ext.lm.experiments.extrapolate --preset medium --seeds 0,1,2 --out runs/medium

With several seeds, results.json holds every (variant, seed) run, the mean and
sample standard deviation of each variant's perplexity over the seeds, and the
paired difference between every two variants (same seed, same data) with a
95% t interval; the table prints them against a reference variant (`fixed`
when present, else the first).

Writes OUT/results.json, OUT/results.txt, OUT/results.png (with matplotlib;
report.py writes all three) and one checkpoint per (variant, seed) in
OUT/checkpoints/; rerunning the same command resumes from them, and reuses the
evaluations stored in finished ones. tools/extrapolate_parallel.sh runs a sweep
one process per (variant, seed), several per GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from ..._cli import positive_int
from ..data import ByteCorpus
from ..models import FibSparseLM, LMConfig
from .recipe import TRAIN_PRESETS, TrainConfig, with_defaults
from .report import reference_variant, results_document, write_report

DEFAULT_VARIANTS = "fixed,learned,stagger,coprime,pow2-fixed,pow2-stagger,dense"
DEFAULT_EVAL_MULTIPLES = (1, 2, 4, 8, 16)
# Besides every steps // 5, a run saves at least this often, so that a call cut
# by a wall-clock limit loses at most this much training.
SAVE_EVERY_S = 120.0


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% (the paper's recipe: AdamW, cosine, warm-up)."""
    if step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    progress = (step - train.warmup) / max(1, train.steps - train.warmup)
    return train.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- training ------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal; a line per 10% otherwise (logs, CI)."""

    def __init__(self, label: str, total: int, start: int = 0):
        self.label, self.total, self.start_step = label, total, start
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.next_report = start

    def update(self, step: int, loss: float) -> None:
        done = step + 1
        if not self.tty and done < self.next_report and done != self.total:
            return
        self.next_report = done + max(1, self.total // 10)
        rate = (done - self.start_step) / max(1e-9, time.perf_counter() - self.started)
        bar = "#" * (20 * done // self.total)
        line = f"{self.label:>18s} [{bar:<20s}] {done}/{self.total} loss {loss:.3f} {rate:.1f} steps/s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def checkpoint_path(out: Path, variant: str, seed: int, default_seed: int) -> Path:
    """The preset's own seed keeps the name checkpoints had before seeds were
    an option, so that earlier runs resume; other seeds get their own file."""
    name = f"{variant}.pt" if seed == default_seed else f"{variant}.seed{seed}.pt"
    return out / "checkpoints" / name


def save_atomically(state: dict, path: Path) -> None:
    """A call killed while saving leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def train_variant(variant: str, config: LMConfig, train: TrainConfig, corpus: ByteCorpus, device: torch.device,
                  checkpoint: Path, label: Optional[str] = None) -> tuple[FibSparseLM, dict]:
    """Trains (or resumes) one variant at train.seed; returns the model and
    its record: the loss curve ("losses"), the steps timed and the seconds
    they took ("timed_steps", "train_seconds"; steps trained by code that
    did not time them are not counted) and the stored evaluation ("evaluation")."""
    torch.manual_seed(train.seed)  # same initial weights for every variant where shapes agree
    model = FibSparseLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                  betas=(0.9, 0.95))
    step, record = 0, {"losses": [], "timed_steps": 0, "train_seconds": 0.0, "evaluation": None}
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device)
        if state["config"] != dataclasses.asdict(config) or with_defaults(state["train"]) != dataclasses.asdict(train):
            raise ValueError(f"{checkpoint} was written by another configuration; remove it or use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        record = {key: state.get(key, default) for key, default in record.items()}  # older ones lack timings
    if step >= train.steps:
        return model, record

    first_step, timed_before, seconds_before = step, record["timed_steps"], record["train_seconds"]
    started = last_save = time.perf_counter()

    def save(at_step):
        record["timed_steps"] = timed_before + at_step - first_step
        record["train_seconds"] = seconds_before + time.perf_counter() - started
        save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at_step,
                         "losses": record["losses"], "config": dataclasses.asdict(config),
                         "train": dataclasses.asdict(train), "timed_steps": record["timed_steps"],
                         "train_seconds": record["train_seconds"], "evaluation": None}, checkpoint)

    model.train()
    progress = Progress(label or variant, train.steps, step)
    for step in range(step, train.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train)
        # Each step's batch depends only on (seed, step): resuming sees the same data.
        generator = torch.Generator().manual_seed(train.seed * 1_000_003 + step)
        if train.packed:
            batch = corpus.packed_batch(train.batch_size * config.seq_len, config.seq_len, generator).to(device)
            loss = model.packed_loss(batch)
        else:
            tokens = corpus.batch("train", train.batch_size, config.seq_len, generator).to(device)
            loss = model.loss(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        record["losses"].append(loss.item())  # .item() waits for the device: the timing is real
        progress.update(step, record["losses"][-1])
        if (step + 1) % max(1, train.steps // 5) == 0 or time.perf_counter() - last_save >= SAVE_EVERY_S:
            save(step + 1)
            last_save = time.perf_counter()
    progress.close()
    save(train.steps)
    return model, record


# --- evaluation ----------------------------------------------------------------

@torch.no_grad()
def perplexity(model: FibSparseLM, corpus: ByteCorpus, length: int, windows: int, device: torch.device) -> float:
    """exp(mean next-token loss) over fixed validation windows of `length` tokens."""
    model.eval()
    tokens = corpus.eval_windows(length, windows)
    losses = [model.loss(tokens[i: i + 4].to(device)).item() * len(tokens[i: i + 4])
              for i in range(0, windows, 4)]
    return math.exp(sum(losses) / windows)


@torch.no_grad()
def latency_ms(model: FibSparseLM, length: int, device: torch.device, runs: int = 50) -> float:
    """Median forward time of one sequence of `length` tokens."""
    model.eval()
    tokens = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    times = []
    for run in range(runs + 2):  # two warm-up runs
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if run >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def evaluation_plan(corpus: ByteCorpus, seq_len: int, multiples: list, windows: int) -> tuple[list, dict, dict]:
    """Which multiples the validation split can evaluate: those it cannot hold
    one window of (length + 1 tokens) are skipped, with the reason; those
    whose `windows` windows overlap are kept, with how many disjoint windows
    the split holds (the overlapping ones share text)."""
    size = len(corpus.val)
    evaluated, skipped, overlapping = [], {}, {}
    for m in multiples:
        length = m * seq_len
        if size < length + 2:  # ByteCorpus.eval_windows needs more than length + 1 bytes
            skipped[str(m)] = (f"the validation split has {size} bytes, fewer than the {length + 2} that one "
                               f"window of {length} tokens needs")
            continue
        evaluated.append(m)
        if size // (length + 1) < windows:
            overlapping[str(m)] = size // (length + 1)
    return evaluated, skipped, overlapping


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def evaluate_run(model: FibSparseLM, record: dict, corpus: ByteCorpus, train: TrainConfig, device: torch.device,
                 multiples: list, checkpoint: Path, reevaluate: bool = False) -> dict:
    """The run's perplexity at each multiple and its latency: those already
    stored in its finished checkpoint by an evaluation of the same windows,
    validation bytes and device are reused, the others measured and stored."""
    key = {"eval_windows": train.eval_windows, "validation_bytes": len(corpus.val),
           "validation_crc32": corpus.checksums["validation"], "device": device_name(device)}
    stored = record.get("evaluation")
    if reevaluate or not stored or stored.get("key") != key:
        stored = {"key": key, "perplexity": {}, "latency_ms": None, "seconds": 0.0}
    missing = [m for m in multiples if str(m) not in stored["perplexity"]]
    if missing or stored["latency_ms"] is None:
        started = time.perf_counter()
        for m in missing:
            stored["perplexity"][str(m)] = perplexity(model, corpus, m * model.config.seq_len, train.eval_windows,
                                                      device)
        if stored["latency_ms"] is None:
            stored["latency_ms"] = latency_ms(model, model.config.seq_len, device)
        stored["seconds"] += time.perf_counter() - started
        state = torch.load(checkpoint, map_location="cpu")
        state["evaluation"] = stored
        save_atomically(state, checkpoint)
    return stored


def run_record(variant: str, seed: int, config: LMConfig, train: TrainConfig, model: FibSparseLM, record: dict,
               evaluation: dict, multiples: list, checkpoint: Path) -> dict:
    tokens_per_step = train.batch_size * config.seq_len  # packed batches hold the same number of input tokens
    timed = record["timed_steps"]
    return {
        "variant": variant, "seed": seed, "checkpoint": checkpoint.name,
        "schedule": config.schedule, "base": config.base, "parameters": model.num_parameters(),
        "final_train_loss": statistics.mean(record["losses"][-10:]),
        "perplexity": {str(m): evaluation["perplexity"][str(m)] for m in multiples},
        "latency_ms": evaluation["latency_ms"],
        "train_tokens": train.steps * tokens_per_step,
        "timed_steps": timed,
        "train_seconds": record["train_seconds"] if timed else None,
        "tokens_per_s": timed * tokens_per_step / record["train_seconds"] if timed else None,
        "eval_seconds": evaluation["seconds"],
        "learned_alphas": model.alphas(),
        "offsets_per_layer": [list(model.schedule.offsets(i)) if config.schedule not in ("dense", "learned")
                              else None for i in range(config.num_layers)],
    }


# --- command line ----------------------------------------------------------------

def _int_list(text: str, minimum: int) -> list:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"must name at least one integer, got {text!r}")
    if min(values) < minimum:
        raise argparse.ArgumentTypeError(f"must be integers >= {minimum}, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"names a value twice: {text!r}")
    return values


def seed_list(text: str) -> list:
    return _int_list(text, 0)


def multiple_list(text: str) -> list:
    return sorted(_int_list(text, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fibsparse_ext.lm.experiments.extrapolate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--schedules", default=DEFAULT_VARIANTS,
                        help=f"comma-separated variants (default {DEFAULT_VARIANTS})")
    parser.add_argument("--seeds", type=seed_list,
                        help="comma-separated training seeds, e.g. 0,1,2 (default: the preset's seed)")
    parser.add_argument("--eval-multiples", type=multiple_list, default=list(DEFAULT_EVAL_MULTIPLES),
                        help="comma-separated multiples of the training length to evaluate at "
                             f"(default {','.join(map(str, DEFAULT_EVAL_MULTIPLES))})")
    parser.add_argument("--steps", type=positive_int, help="override the preset's training steps")
    parser.add_argument("--batch-size", type=positive_int, help="override the preset's batch size")
    parser.add_argument("--data", nargs="+", help="text files to train on (default: the standard library)")
    parser.add_argument("--max-bytes", type=positive_int, default=16 * 2**20)
    parser.add_argument("--packed", action="store_true",
                        help="train on whole files packed with cu_seqlens (each attended alone) instead of windows")
    parser.add_argument("--reevaluate", action="store_true",
                        help="measure perplexity and latency again instead of reusing those stored in checkpoints")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the arguments, say which runs the call would make, and stop")
    parser.add_argument("--runs-only", action="store_true",
                        help="train and evaluate, keeping each run in its checkpoint, and write no results files: "
                             "for runs made in parallel into one folder, after which one call writes them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<preset>)")
    args = parser.parse_args(argv)

    # Every argument is checked before any data is read or folder created.
    variants = [v.strip() for v in args.schedules.split(",") if v.strip()]
    if not variants:
        parser.error(f"--schedules must name at least one variant, got {args.schedules!r}")
    if len(set(variants)) != len(variants):
        parser.error(f"--schedules names a variant twice: {args.schedules!r}")
    try:
        configs = {v: LMConfig.preset(args.preset, **LMConfig.parse_variant(v)) for v in variants}
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    train = TRAIN_PRESETS[args.preset]
    train = dataclasses.replace(train, **{k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size))
                                          if v is not None}, packed=args.packed)
    seeds = args.seeds or [train.seed]
    out = args.out or Path("runs") / args.preset
    if args.dry_run:
        print(f"would run {len(variants) * len(seeds)} runs of {args.preset} into {out}: "
              f"{', '.join(variants)} at seeds {', '.join(map(str, seeds))}")
        return 0
    corpus = ByteCorpus.load(args.data, args.max_bytes)
    seq_len = next(iter(configs.values())).seq_len
    multiples, skipped, overlapping = evaluation_plan(corpus, seq_len, args.eval_multiples, train.eval_windows)
    print(f"data: {corpus.describe()}")
    for m, reason in skipped.items():
        print(f"skipping {m}x ({int(m) * seq_len} tokens): {reason}")
    if not multiples:
        raise ValueError(f"no evaluation length fits the validation split ({len(corpus.val)} bytes): "
                         f"use more data or smaller --eval-multiples")
    for m, disjoint in overlapping.items():
        print(f"note: at {m}x the validation split holds {disjoint} disjoint windows of {int(m) * seq_len} tokens, "
              f"fewer than the {train.eval_windows} evaluated: they overlap")
    recipe = {k: v for k, v in dataclasses.asdict(train).items() if k != "seed"}
    print(f"preset {args.preset}: {recipe}; seeds {seeds}; device {device}; training length {seq_len}; "
          f"evaluated at {', '.join(f'{m}x' for m in multiples)}")

    meta = {"preset": args.preset, "train": recipe, "seeds": seeds, "device": str(device),
            "device_name": device_name(device), "torch": torch.__version__, "data": corpus.describe(),
            "training_length": seq_len, "eval_multiples": multiples, "skipped_multiples": skipped,
            "overlapping_windows": overlapping, "reference": reference_variant(variants),
            "tokens_per_step": train.batch_size * seq_len,
            # What the runs trained and were scored on, beyond describe()'s rounded sizes: sweeps merge
            # only over the same bytes (report.py).
            "data_crc32": corpus.checksums}
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = {variant: {} for variant in variants}

    def write_results():
        if args.runs_only:
            return None
        meta["wall_seconds"] = time.perf_counter() - started
        document = results_document(meta, runs, multiples)
        (out / "results.json").write_text(json.dumps(document, indent=1))
        return document

    precision_before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(train.matmul_precision)  # the process's setting: restored below
    try:
        # Seed by seed, so that a sweep cut short holds whole seeds: complete pairs to compare.
        for seed in seeds:
            seeded = dataclasses.replace(train, seed=seed)
            for variant, config in configs.items():
                checkpoint = checkpoint_path(out, variant, seed, train.seed)
                label = variant if len(seeds) == 1 else f"{variant} s{seed}"
                model, record = train_variant(variant, config, seeded, corpus, device, checkpoint, label)
                evaluation = evaluate_run(model, record, corpus, seeded, device, multiples, checkpoint,
                                          args.reevaluate)
                runs[variant][str(seed)] = run_record(variant, seed, config, seeded, model, record, evaluation,
                                                      multiples, checkpoint)
                del model
                # Written after every run, so a long sweep that stops keeps what it finished.
                write_results()
    finally:
        torch.set_float32_matmul_precision(precision_before)

    document = write_results()
    if document is None:  # --runs-only: the runs, one line each; the call that reports them writes the files
        for variant, by_seed in runs.items():
            for seed, run in by_seed.items():
                print(f"{variant} seed {seed}: perplexity " + ", ".join(
                    f"{m}x {run['perplexity'][str(m)]:.4f}" for m in multiples))
        return 0
    table, plotted = write_report(document, out, meta["wall_seconds"])
    print("\n" + table)
    if plotted:
        print(f"plot: {out / 'results.png'}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
