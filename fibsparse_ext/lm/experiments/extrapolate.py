"""Train one LM per attention variant (same seed, data, steps and optimizer),
then measure validation perplexity at 1x, 2x and 4x the training length and
the inference latency of each.

    python -m fibsparse_ext.lm.experiments.extrapolate --preset tiny
    python -m fibsparse_ext.lm.experiments.extrapolate --preset small \
        --schedules fixed,learned,stagger,coprime,pow2-fixed,pow2-stagger,dense --out runs/small

Writes OUT/results.json, OUT/results.png (with matplotlib) and one checkpoint
per variant in OUT/checkpoints/; rerunning the same command resumes from them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._cli import positive_int
from ..data import ByteCorpus
from ..models import FibSparseLM, LMConfig

DEFAULT_VARIANTS = "fixed,learned,stagger,coprime,pow2-fixed,pow2-stagger,dense"
EVAL_MULTIPLES = (1, 2, 4)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    eval_windows: int  # validation windows per evaluation length
    weight_decay: float = 0.1
    seed: int = 0
    # Train on whole files packed into batch_size * seq_len tokens (documents
    # of at most seq_len, each attended alone) instead of random windows that
    # cross file boundaries. Off by default, so that the committed results stay
    # comparable.
    packed: bool = False


TRAIN_PRESETS = {
    "tiny": TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup=10, eval_windows=8),
    "small": TrainConfig(steps=500, batch_size=32, lr=2e-3, warmup=50, eval_windows=64),
    "paper": TrainConfig(steps=20000, batch_size=64, lr=6e-4, warmup=1000, eval_windows=128),
}


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% (the paper's recipe: AdamW, cosine, warm-up)."""
    if step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    progress = (step - train.warmup) / max(1, train.steps - train.warmup)
    return train.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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
        line = f"{self.label:>14s} [{bar:<20s}] {done}/{self.total} loss {loss:.3f} {rate:.1f} steps/s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def train_variant(variant: str, config: LMConfig, train: TrainConfig, corpus: ByteCorpus, device: torch.device,
                  checkpoint: Path) -> tuple[FibSparseLM, list]:
    """Trains (or resumes) one variant; returns the model and its loss curve."""
    torch.manual_seed(train.seed)  # same initial weights for every variant where shapes agree
    model = FibSparseLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                  betas=(0.9, 0.95))
    step, losses = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device)
        saved_train = {"packed": False, **state["train"]}  # checkpoints from before packing was an option
        if state["config"] != dataclasses.asdict(config) or saved_train != dataclasses.asdict(train):
            raise ValueError(f"{checkpoint} was written by another configuration; remove it or use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
    if step >= train.steps:
        return model, losses

    def save(at_step):
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at_step,
                    "losses": losses, "config": dataclasses.asdict(config), "train": dataclasses.asdict(train)},
                   checkpoint)

    model.train()
    progress = Progress(variant, train.steps, step)
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
        losses.append(loss.item())
        progress.update(step, losses[-1])
        if (step + 1) % max(1, train.steps // 5) == 0:
            save(step + 1)
    progress.close()
    save(train.steps)
    return model, losses


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


def format_table(results: dict, seq_len: int) -> str:
    header = f"{'variant':>14s} | " + " | ".join(f"ppl @{m}x ({m * seq_len})" for m in EVAL_MULTIPLES)
    header += " | 4x/1x | latency ms | alphas"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        ppl = [r["perplexity"][str(m)] for m in EVAL_MULTIPLES]
        alphas = ", ".join(f"{a:.3f}" for a in r["learned_alphas"]) or "-"
        lines.append(f"{name:>14s} | " + " | ".join(f"{p:>{len(f'ppl @{m}x ({m * seq_len})')}.3f}"
                                                    for p, m in zip(ppl, EVAL_MULTIPLES))
                     + f" | {ppl[-1] / ppl[0]:5.2f} | {r['latency_ms']:10.2f} | {alphas}")
    return "\n".join(lines)


def plot(results: dict, seq_len: int, path: Path) -> bool:
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        axes.plot([m * seq_len for m in EVAL_MULTIPLES], [r["perplexity"][str(m)] for m in EVAL_MULTIPLES],
                  marker="o", label=name, linestyle="--" if name == "dense" else "-")
    axes.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="validation perplexity",
             title=f"trained at {seq_len} tokens")
    axes.set_xticks([m * seq_len for m in EVAL_MULTIPLES], [f"{m}x ({m * seq_len})" for m in EVAL_MULTIPLES])
    axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fibsparse_ext.lm.experiments.extrapolate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--schedules", default=DEFAULT_VARIANTS,
                        help=f"comma-separated variants (default {DEFAULT_VARIANTS})")
    parser.add_argument("--steps", type=positive_int, help="override the preset's training steps")
    parser.add_argument("--batch-size", type=positive_int, help="override the preset's batch size")
    parser.add_argument("--data", nargs="+", help="text files to train on (default: the standard library)")
    parser.add_argument("--max-bytes", type=positive_int, default=16 * 2**20)
    parser.add_argument("--packed", action="store_true",
                        help="train on whole files packed with cu_seqlens (each attended alone) instead of windows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<preset>)")
    args = parser.parse_args(argv)

    # Every argument is checked before any data is read or folder created.
    variants = [v.strip() for v in args.schedules.split(",") if v.strip()]
    if not variants:
        parser.error(f"--schedules must name at least one variant, got {args.schedules!r}")
    try:
        configs = {v: LMConfig.preset(args.preset, **LMConfig.parse_variant(v)) for v in variants}
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    train = TRAIN_PRESETS[args.preset]
    train = dataclasses.replace(train, **{k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size))
                                          if v is not None}, packed=args.packed)
    out = args.out or Path("runs") / args.preset
    corpus = ByteCorpus.load(args.data, args.max_bytes)
    seq_len = next(iter(configs.values())).seq_len
    print(f"data: {corpus.describe()}")
    print(f"preset {args.preset}: {train}; device {device}; training length {seq_len}")

    meta = {"preset": args.preset, "train": dataclasses.asdict(train), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "data": corpus.describe(), "training_length": seq_len}
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant, config in configs.items():
        model, losses = train_variant(variant, config, train, corpus, device, out / "checkpoints" / f"{variant}.pt")
        results[variant] = {
            "schedule": config.schedule, "base": config.base, "parameters": model.num_parameters(),
            "final_train_loss": statistics.mean(losses[-10:]),
            "perplexity": {str(m): perplexity(model, corpus, m * seq_len, train.eval_windows, device)
                           for m in EVAL_MULTIPLES},
            "latency_ms": latency_ms(model, seq_len, device),
            "learned_alphas": model.alphas(),
            "offsets_per_layer": [list(model.schedule.offsets(i)) if config.schedule not in ("dense", "learned")
                                  else None for i in range(config.num_layers)],
        }
        # Written after every variant, so a long sweep that stops keeps what it finished.
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))

    table = format_table(results, seq_len)
    print("\n" + table)
    (out / "results.txt").write_text(table + "\n")
    if plot(results, seq_len, out / "results.png"):
        print(f"plot: {out / 'results.png'}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
