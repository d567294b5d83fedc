"""Summarizes Nsight Compute's per-instruction source page, exported as CSV
(gzip-compressed or not): for each kernel, its stall samples by reason, the
instructions with the most samples and the reason each stalled on most, and the
global memory instructions whose L2 sectors exceed their ideal.

    python tools/ncu_source_summary.py SOURCE_CSV[.gz] [--top N]

The CSV is `ncu --import REPORT --page source --csv --print-source sass` of a
report collected with `--section SourceCounters --section WarpStateStats`
(`bench/results/2026-12-03_h200_dkdv_profile_508bbae/prof69.sh` makes one).
Nsight Compute prints each kernel's page twice; the first is kept.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path

SAMPLES = "Warp Stall Sampling (All Samples)"
SECTORS, IDEAL, EXCESS = ("L2 Theoretical Sectors Global", "L2 Theoretical Sectors Global Ideal",
                          "L2 Theoretical Sectors Global Excessive")
STALLS = ["stall_wait", "stall_long_sb", "stall_short_sb", "stall_barrier", "stall_selected", "stall_lg",
          "stall_math", "stall_not_selected", "stall_dispatch", "stall_no_inst", "stall_branch_resolving"]


def number(row: dict, key: str) -> float:
    """A column's value, 0 where it is missing or not a number (ncu leaves cells empty)."""
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return 0.0


def read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        return file.read()


def kernels(text: str) -> list[tuple[str, list[dict]]]:
    """(kernel name, its instruction rows) for each kernel, in the file's order, each once."""
    sections: list[list[str]] = []
    for line in text.split("\n"):
        if line.startswith('"Kernel Name"'):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    found, seen = [], set()
    for section in sections:
        name = section[0].split('","')[1].rsplit("(", 1)[0]  # without its parameter list
        if name not in seen:
            seen.add(name)
            found.append((name, list(csv.DictReader(io.StringIO("\n".join(section[1:]))))))
    return found


def share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole > 0 else "-"


def summary(text: str, top: int = 8) -> str:
    lines = []
    for name, rows in kernels(text):
        samples = sum(number(r, SAMPLES) for r in rows)
        sectors = sum(number(r, SECTORS) for r in rows)
        excess = sum(number(r, EXCESS) for r in rows)
        lines.append(f"{name}: {len(rows)} instructions, {samples:.0f} stall samples, "
                     f"{share(excess, sectors)} of {sectors:.4g} global sectors in excess")
        lines.append("  samples by reason: " + ", ".join(
            f"{stall[len('stall_'):]} {share(sum(number(r, stall) for r in rows), samples)}" for stall in STALLS))
        lines.append("  most sampled instructions (share of samples, main reason, source):")
        for row in sorted(rows, key=lambda r: -number(r, SAMPLES))[:top]:
            reason = max(STALLS, key=lambda stall: number(row, stall))[len("stall_"):]
            lines.append(f"    {share(number(row, SAMPLES), samples):>6}  {reason:14s} {row.get('Source', '').strip()[:70]}")
        loads = sorted((r for r in rows if number(r, EXCESS) > 0), key=lambda r: -number(r, EXCESS))
        lines.append(f"  {len(loads)} instructions with excess sectors" + ("; the largest:" if loads else ""))
        for row in loads[:3]:
            lines.append(f"    {row.get('Source', '').strip()[:60]}  sectors {number(row, SECTORS):.4g}, "
                         f"ideal {number(row, IDEAL):.4g}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source_csv", type=Path, help="the source page as CSV, .gz or plain")
    parser.add_argument("--top", type=int, default=8, help="most sampled instructions to list per kernel")
    args = parser.parse_args()
    if args.top < 0:
        parser.error(f"--top must be 0 or more, got {args.top}")
    print(summary(read_text(args.source_csv), args.top))


if __name__ == "__main__":
    main()
