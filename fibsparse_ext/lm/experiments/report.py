"""The report of an extrapolation sweep: the aggregate over seeds, the paired
differences between variants and between lengths, the table and the plot;
and the merge of sweeps made apart (on several machines, or in several
folders) into one report.

    python -m fibsparse_ext.lm.experiments.report runs/a/results.json runs/b/results.json --out runs/all

Merging reads only results.json files, no checkpoints: runs finished
elsewhere can be reported where their checkpoints are not. Only sweeps of
one configuration merge (preset, recipe, training length, evaluation
lengths, validation windows, device name, and the same training and
validation bytes); a (variant, seed) found in two files must hold the same
results in both.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

from .intervals import CONFIDENCE, mean_std, paired_difference
from .recipe import with_defaults

# What two sweeps must share to be reported as one, beside their data (_configuration).
MERGE_KEYS = ("preset", "train", "training_length", "eval_multiples", "device_name", "tokens_per_step")


def summarize(runs: dict, multiples: list) -> tuple[dict, dict]:
    """From runs[variant][seed] (finished runs): per variant the mean and
    sample std over seeds of each length's perplexity and of the training
    throughput, and the paired change of each length's perplexity from the
    shortest one's; per ordered pair (baseline, variant) and length the
    paired difference over the seeds both have."""
    aggregate = {}
    for variant, by_seed in runs.items():
        if not by_seed:
            continue
        records = list(by_seed.values())
        alphas = [r["learned_alphas"] for r in records]
        aggregate[variant] = {
            "n": len(records), "seeds": [r["seed"] for r in records],
            "perplexity": {str(m): mean_std([r["perplexity"].get(str(m)) for r in records]) for m in multiples},
            "tokens_per_s": mean_std([r["tokens_per_s"] for r in records]),
            "train_seconds": mean_std([r["train_seconds"] for r in records]),
            "latency_ms": mean_std([r["latency_ms"] for r in records]),
            "final_train_loss": mean_std([r["final_train_loss"] for r in records]),
            "learned_alphas": [statistics.mean(layer) for layer in zip(*alphas)] if alphas and alphas[0] else [],
            # How each length's perplexity moves from the shortest one's, paired by seed:
            # the extrapolation claim, with its interval.
            "change_from_shortest": {
                str(m): paired_difference([r["perplexity"][str(multiples[0])] for r in records],
                                          [r["perplexity"][str(m)] for r in records], [r["seed"] for r in records])
                for m in multiples[1:]},
        }
    pairs = {}
    for baseline in aggregate:
        pairs[baseline] = {}
        for variant in aggregate:
            if variant == baseline:
                continue
            seeds = [s for s in runs[baseline] if s in runs[variant]]
            if not seeds:
                continue
            pairs[baseline][variant] = {
                str(m): paired_difference([runs[baseline][s]["perplexity"][str(m)] for s in seeds],
                                          [runs[variant][s]["perplexity"][str(m)] for s in seeds],
                                          [int(s) for s in seeds])
                for m in multiples}
    return aggregate, pairs


def _table(rows: list) -> list:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    return [lines[0], "-" * len(lines[0])] + lines[1:]


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _difference(d: dict, seeds: int) -> str:
    """A paired difference's cell: mean [interval], or (n=1) without one."""
    if d["ci95_pct"] is None:
        return f"{d['mean_pct']:+.2f}% (n={d['n']})"
    lo, hi = d["ci95_pct"]
    return f"{d['mean_pct']:+.2f}% [{lo:+.2f}, {hi:+.2f}]" + ("" if d["n"] == seeds else f" (n={d['n']})")


def reference_variant(variants: list) -> str:
    return "fixed" if "fixed" in variants else variants[0]


def format_table(runs: dict, aggregate: dict, pairs: dict, seq_len: int, multiples: list, seeds: list,
                 skipped: dict, overlapping: dict, wall_seconds: Optional[float]) -> str:
    lines = []
    if len(seeds) > 1:
        lines.append(f"validation perplexity: mean ± sample std over seeds {', '.join(map(str, seeds))}")
    else:
        lines.append(f"validation perplexity: one seed ({seeds[0]}), so no spread")
    ratio = f"{multiples[-1]}x/{multiples[0]}x"
    rows = [["variant"] + [f"ppl @{m}x ({m * seq_len})" for m in multiples] + [ratio, "latency ms", "alphas"]]
    for variant, summary in aggregate.items():
        cells = []
        for m in multiples:
            p = summary["perplexity"][str(m)]
            cells.append(_number(p["mean"], 3) + ("" if p["std"] is None else f" ± {p['std']:.3f}"))
        first, last = (summary["perplexity"][str(m)]["mean"] for m in (multiples[0], multiples[-1]))
        alphas = ", ".join(f"{a:.3f}" for a in summary["learned_alphas"]) or "-"
        rows.append([variant] + cells + [f"{last / first:.2f}", _number(summary["latency_ms"]["mean"], 2), alphas])
    lines += _table(rows)
    for m, reason in skipped.items():
        lines.append(f"{m}x ({int(m) * seq_len} tokens) skipped: {reason}")
    for m, disjoint in overlapping.items():
        lines.append(f"{m}x ({int(m) * seq_len} tokens): the validation split holds {disjoint} disjoint windows, "
                     f"so its windows overlap")

    reference = reference_variant(list(aggregate))
    if pairs.get(reference):
        lines += ["", f"paired differences vs {reference}: 100 * (ppl / ppl[{reference}] - 1) per seed, the mean "
                      f"over seeds, [its {CONFIDENCE:.0%} t interval]"]
        rows = [["variant"] + [f"@{m}x ({m * seq_len})" for m in multiples]]
        no_interval = False
        for variant, by_multiple in pairs[reference].items():
            no_interval |= any(by_multiple[str(m)]["ci95_pct"] is None for m in multiples)
            rows.append([variant] + [_difference(by_multiple[str(m)], len(seeds)) for m in multiples])
        lines += _table(rows)
        if no_interval:
            lines.append("(n=1): one seed, so no interval can be computed: nothing shows such a difference "
                         "to exceed what another seed would change")

    if len(multiples) > 1:
        first = multiples[0]
        lines += ["", f"change with length: 100 * (ppl @mx / ppl @{first}x - 1) per seed, the mean over seeds, "
                      f"[its {CONFIDENCE:.0%} t interval]"]
        rows = [["variant"] + [f"@{m}x vs @{first}x" for m in multiples[1:]]]
        for variant, summary in aggregate.items():
            rows.append([variant] + [_difference(summary["change_from_shortest"][str(m)], len(seeds))
                                     for m in multiples[1:]])
        lines += _table(rows)

    lines += ["", "training throughput"]
    rows = [["variant", "seed", "tokens", "seconds", "tokens/s"]]
    for variant, by_seed in runs.items():
        for seed, r in by_seed.items():
            rows.append([variant, seed, f"{r['train_tokens']:,}", _number(r["train_seconds"], 1),
                         "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"])
    lines += _table(rows)
    if wall_seconds is not None:
        lines.append(f"wall time of this call: {wall_seconds:.1f} s (training, evaluation, checkpoints)")
    return "\n".join(lines)


def plot(aggregate: dict, seq_len: int, multiples: list, seeds: list, path: Path) -> bool:
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6, 4))
    lengths = [m * seq_len for m in multiples]
    for i, (name, summary) in enumerate(aggregate.items()):
        points = [summary["perplexity"][str(m)] for m in multiples]
        shift = 1.0 + 0.015 * (i - (len(aggregate) - 1) / 2)  # side by side, so that the error bars stay apart
        axes.errorbar([x * shift for x in lengths], [p["mean"] for p in points],
                      yerr=[p["std"] or 0.0 for p in points], marker="o", markersize=4, capsize=3, label=name,
                      linestyle="--" if name == "dense" else "-")
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    axes.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="validation perplexity",
             title=f"trained at {seq_len} tokens; {spread}")
    axes.set_xticks(lengths, [f"{m}x\n({m * seq_len})" for m in multiples])
    axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def results_document(meta: dict, runs: dict, multiples: list) -> dict:
    """results.json's content: the runs, their aggregate and the paired differences."""
    aggregate, pairs = summarize(runs, multiples)
    return {"meta": meta, "runs": runs, "aggregate": aggregate,
            "paired_differences": {
                "definition": "per seed 100 * (ppl[variant] / ppl[baseline] - 1), averaged over the seeds both "
                              "have; ci95_pct: mean -+ t(0.975, n - 1) * std / sqrt(n), null below two seeds",
                "confidence": CONFIDENCE, "by_baseline": pairs}}


def write_report(document: dict, out: Path, wall_seconds: Optional[float]) -> tuple[str, bool]:
    """results.txt and results.png (with matplotlib) beside results.json;
    returns the table and whether the plot was drawn."""
    meta = document["meta"]
    seq_len, multiples, seeds = meta["training_length"], meta["eval_multiples"], meta["seeds"]
    table = format_table(document["runs"], document["aggregate"], document["paired_differences"]["by_baseline"],
                         seq_len, multiples, seeds, meta["skipped_multiples"], meta["overlapping_windows"],
                         wall_seconds)
    (out / "results.txt").write_text(table + "\n")
    return table, plot(document["aggregate"], seq_len, multiples, seeds, out / "results.png")


def _configuration(meta: dict) -> dict:
    """What two sweeps must share to be reported as one. The data are compared
    by their bytes' checksums where both sweeps recorded them, else by their
    description (sizes and source)."""
    configuration = {key: meta.get(key) for key in MERGE_KEYS}
    configuration["train"] = with_defaults(meta.get("train", {}))
    configuration["data"] = meta.get("data_crc32") or meta.get("data")
    return configuration


def merge(documents: list) -> tuple[dict, dict]:
    """One sweep's meta and runs from several results.json documents, given as
    (name, document) pairs; ValueError, naming the files, where they are not of
    one configuration or disagree on a run."""
    first_name, first = documents[0]
    for name, document in documents:
        if not isinstance(document, dict) or not isinstance(document.get("meta"), dict) \
                or not isinstance(document.get("runs"), dict):
            raise ValueError(f"{name} is not the results.json of an extrapolation sweep (no meta or runs)")
    reference = _configuration(first["meta"])
    runs: dict = {}
    found_in: dict = {}
    for name, document in documents:
        configuration = _configuration(document["meta"])
        for key, value in configuration.items():
            if value != reference[key]:
                raise ValueError(f"{name} has another {key} ({value!r}) than {first_name} ({reference[key]!r}): "
                                 f"only sweeps of one configuration merge")
        for variant, by_seed in document["runs"].items():
            for seed, record in by_seed.items():
                known = runs.setdefault(variant, {}).get(seed)
                if known is not None and known["perplexity"] != record["perplexity"]:
                    raise ValueError(f"{variant} seed {seed} has different perplexities in "
                                     f"{found_in[variant, seed]} and {name}")
                runs[variant][seed] = known or record
                found_in.setdefault((variant, seed), name)
    meta = {key: value for key, value in first["meta"].items() if key != "wall_seconds"}  # no one call's time
    for key in ("torch", "device"):  # recorded, not required to agree: every value the runs came from
        values = sorted({str(document["meta"].get(key)) for _, document in documents})
        meta[key] = values[0] if len(values) == 1 else values
    meta["seeds"] = sorted({int(seed) for by_seed in runs.values() for seed in by_seed})
    meta["reference"] = reference_variant(list(runs))
    meta["merged_from"] = [name for name, _ in documents]
    return meta, {variant: dict(sorted(by_seed.items(), key=lambda item: int(item[0])))
                  for variant, by_seed in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fibsparse_ext.lm.experiments.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of extrapolation sweeps")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the merged results.json, results.txt and results.png")
    args = parser.parse_args(argv)
    documents = []
    for path in args.results:
        try:
            documents.append((str(path), json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            parser.error(f"cannot read results file {path}: {e}")
    try:
        meta, runs = merge(documents)
    except ValueError as e:
        parser.error(str(e))
    document = results_document(meta, runs, meta["eval_multiples"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(document, indent=1))
    table, _ = write_report(document, args.out, None)  # no one call's wall time: the runs came from several
    print(table)
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
