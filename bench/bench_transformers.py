"""One training step of a ~100M-parameter Llama-style transformers model at
16k tokens (batch 1, bf16), with attn_implementation "fibsparse" (stagger and
learned schedules, window 128), "sdpa" and "flex_attention". sdpa and flex
compute dense causal attention: the comparison is what the whole step costs
with each, not the same function. A step is forward, loss and backward
(zero_grad included, the AdamW step not: it is the same for every
implementation). Warm-up, then the median of back-to-back steps between CUDA
events (bench/timing.py; wall clock on the CPU).

    python bench/bench_transformers.py                 # the 16k-token step on the GPU
    python bench/bench_transformers.py --quick         # a tiny model at 256 tokens (runs on the CPU too)
"""
from __future__ import annotations

import argparse

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from fibsparse_ext.integrations.transformers import ALPHA, enable_fibsparse
from run_commit import measured_commit
from timing import median_ms

# hidden 768, 12 layers, 12 heads (head_dim 64), 4 kv heads, tied embeddings: ~100M parameters.
FULL = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=4, tie_word_embeddings=True)
QUICK = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=True)
WINDOW = 128


def build(sizes: dict, seqlen: int, implementation: str, schedule: str | None, device, dtype) -> torch.nn.Module:
    """The same weights for every implementation (one seed)."""
    config = LlamaConfig(**sizes, max_position_embeddings=seqlen, attention_dropout=0.0, use_cache=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if schedule is not None:
        enable_fibsparse(model, schedule=schedule, window=WINDOW, max_distance=seqlen)
    else:
        model.set_attn_implementation(implementation)
    return model.to(device=device, dtype=dtype).train()


def training_step(model: torch.nn.Module, ids: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model at 256 tokens, a few steps")
    parser.add_argument("--seqlen", type=int, default=None, help="tokens per step (default 16384; 256 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 3 with --quick)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    for option in ("seqlen", "steps"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    sizes = QUICK if args.quick else FULL
    seqlen = args.seqlen or (256 if args.quick else 16384)
    steps = args.steps or (3 if args.quick else 10)
    dtype = torch.bfloat16 if on_gpu else torch.float32  # the CPU's bf16 matmuls are slow, not representative
    name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    print(f"device {name}, torch {torch.__version__}, transformers {transformers.__version__}, commit {measured_commit()}")

    implementations = [("fibsparse stagger", "fibsparse", "stagger"), ("fibsparse learned", "fibsparse", "learned"),
                       ("sdpa", "sdpa", None), ("flex_attention", "flex_attention", None)]
    ids = torch.randint(0, sizes["vocab_size"], (1, seqlen), generator=torch.Generator().manual_seed(1)).to(device)
    rows = {}
    for label, implementation, schedule in implementations:
        model = None
        try:
            model = build(sizes, seqlen, implementation, schedule, device, dtype)
            if not rows:
                count = sum(p.numel() for n, p in model.named_parameters() if not n.endswith(ALPHA))
                print(f"Llama-style model: {count / 1e6:.1f}M parameters (alphas not counted), hidden "
                      f"{sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, {sizes['num_attention_heads']} "
                      f"heads, {sizes['num_key_value_heads']} kv heads, vocab {sizes['vocab_size']}; batch 1 x "
                      f"{seqlen} tokens, {str(dtype)[6:]}; fibsparse window {WINDOW}, max_distance {seqlen}")
                print("step = zero_grad + forward + loss + backward (no optimizer step); "
                      f"median of {steps} back-to-back steps after 3 warm-up steps")
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            ms = median_ms(training_step(model, ids), warmup=3, runs=steps, device=device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else float("nan")
            rows[label] = (ms, peak)
            print(f"  {label:18s} {ms:10.1f} ms/step", flush=True)
        except Exception as e:  # an implementation this transformers/torch cannot run: say why, go on
            print(f"  {label:18s} failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")
        finally:
            del model
            if on_gpu:
                torch.cuda.empty_cache()
    if "fibsparse stagger" not in rows:
        raise SystemExit("the fibsparse step did not run")
    base = rows["fibsparse stagger"][0]
    print(f"\n  {'implementation':18s} {'ms/step':>10s} {'tokens/s':>10s} {'peak GiB':>9s} "
          f"{'time / fibsparse stagger':>25s}")
    for label, (ms, peak) in rows.items():
        print(f"  {label:18s} {ms:10.1f} {seqlen / ms * 1e3:10.0f} {peak:9.2f} {ms / base:24.2f}x")


if __name__ == "__main__":
    main()
