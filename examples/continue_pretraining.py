"""Train a transformers model with fibsparse attention at one length and
evaluate it at 1x, 2x and 4x that length, next to the same model with sdpa.

    python examples/continue_pretraining.py                      # a small Llama-style model, random init
    python examples/continue_pretraining.py --model Qwen/Qwen2-0.5B --steps 2000 --device cuda

With --model, the weights come from the hub (or a local folder) through
from_pretrained, where one is reachable; without it the model is built from
a config (from_config), so the example runs offline. The data is the Python
standard library's source as bytes (fibsparse_ext.lm.ByteCorpus), so the
vocabulary is the 256 byte values; a pretrained model's own vocabulary is
larger and simply leaves the other ids unused. Writes results.json and, with
matplotlib, perplexity.png into --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from fibsparse_ext.integrations.transformers import ALPHA, attention_modules, enable_fibsparse
from fibsparse_ext.lm import ByteCorpus


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="hub name or folder for from_pretrained (default: a small config, from_config)")
    parser.add_argument("--length", type=int, default=256, help="training length in tokens")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="stagger", help="make_schedule's name (learned: one alpha per layer)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=8, help="validation windows per length")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("continue_pretraining"))
    args = parser.parse_args(argv)
    for name in ("length", "steps", "batch_size", "window", "eval_windows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    return args


def base_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16 * args.length)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def train(model: torch.nn.Module, corpus: ByteCorpus, args: argparse.Namespace, label: str) -> None:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(1)
    for step in range(1, args.steps + 1):
        tokens = corpus.batch("train", args.batch_size, args.length, generator).to(args.device)
        loss = model(tokens, labels=tokens).loss  # the model shifts the labels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % max(1, args.steps // 20) == 0 or step == args.steps:
            print(f"\r[{label}] step {step}/{args.steps}  loss {loss.item():.3f}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


@torch.no_grad()
def perplexity(model: torch.nn.Module, corpus: ByteCorpus, length: int, args: argparse.Namespace) -> float:
    model.eval()
    windows = corpus.eval_windows(length, args.eval_windows).to(args.device)
    losses = [model(w[None], labels=w[None]).loss.item() for w in windows]
    return math.exp(sum(losses) / len(losses))


def main(argv=None) -> dict:
    args = parse_args(argv)
    corpus = ByteCorpus.load()
    print(corpus.describe(), file=sys.stderr)
    lengths = [args.length, 2 * args.length, 4 * args.length]
    results = {"lengths": lengths}
    base = base_model(args)
    for implementation in ("fibsparse", "sdpa"):
        model = copy.deepcopy(base).to(args.device)
        if implementation == "fibsparse":
            enable_fibsparse(model, schedule=args.schedule, window=args.window, max_distance=lengths[-1])
        else:
            model.set_attn_implementation("sdpa")
        train(model, corpus, args, implementation)
        results[implementation] = [perplexity(model, corpus, n, args) for n in lengths]
        if implementation == "fibsparse" and args.schedule == "learned":  # where training moved each layer's alpha
            results["alphas"] = [getattr(m, ALPHA).item() for m in attention_modules(model)]
            print("learned alphas: " + ", ".join(f"{a:.4f}" for a in results["alphas"]))
        print(f"{implementation}: perplexity at {lengths}: " +
              ", ".join(f"{p:.2f}" for p in results[implementation]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no perplexity.png", file=sys.stderr)
        return results
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for implementation in ("fibsparse", "sdpa"):
        axes.plot(lengths, results[implementation], marker="o", label=implementation)
    axes.set(xlabel="evaluation length (tokens)", ylabel="perplexity", xscale="log", yscale="log",
             title=f"trained at {args.length} tokens")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.out / "perplexity.png", dpi=120)
    return results


if __name__ == "__main__":
    main()
