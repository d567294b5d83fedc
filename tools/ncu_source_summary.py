"""Summarizes Nsight Compute's per-instruction source page, exported as CSV
(gzip-compressed or not): for each kernel, its stall samples by reason, the
instructions with the most samples and the reason each stalled on most, and the
global memory instructions whose L2 sectors exceed their ideal.

    python tools/ncu_source_summary.py SOURCE_CSV[.gz] [--top N]

Collect the report with the source counters and the warp states, for example
of the dk/dv pass of tools/profile_target.py's second (fractional) backward:

    ncu --clock-control none --kernel-name regex:dkdv_mma --launch-skip 1 --launch-count 1 \\
        --section SourceCounters --section WarpStateStats -o REPORT python3 tools/profile_target.py 65536
    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > PAGE.csv

A page may list one kernel more than once (Nsight Compute repeats some): the
first is summarized and the repeats are counted.
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
STALL_PREFIX = "stall_"


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


def without_parameters(signature: str) -> str:
    """A kernel's name without its trailing parameter list, which may itself hold parentheses."""
    if not signature.endswith(")"):
        return signature
    depth = 0
    for i in range(len(signature) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(signature[i], 0)
        if depth == 0:
            return signature[:i]
    return signature


def kernels(text: str) -> list[tuple[str, list[dict], int]]:
    """(kernel name, its first page's instruction rows, how many pages name it), in the file's order."""
    pages: list[list[str]] = []
    for line in text.split("\n"):
        if line.startswith('"Kernel Name"'):
            pages.append([line])
        elif pages:
            pages[-1].append(line)
    found: dict[str, list] = {}
    for page in pages:
        name = without_parameters(next(csv.reader([page[0]]))[1])
        if name in found:
            found[name][1] += 1
        else:
            found[name] = [list(csv.DictReader(io.StringIO("\n".join(page[1:])))), 1]
    return [(name, rows, count) for name, (rows, count) in found.items()]


def stall_reasons(rows: list[dict]) -> list[str]:
    """The page's stall-reason columns that count every sample (not the not-issued ones)."""
    columns = rows[0].keys() if rows else []
    return [c for c in columns if c.startswith(STALL_PREFIX) and "(Not Issued)" not in c]


def share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole > 0 else "-"


def summary(text: str, top: int = 8) -> str:
    lines = []
    for name, rows, pages in kernels(text):
        samples = sum(number(r, SAMPLES) for r in rows)
        sectors = sum(number(r, SECTORS) for r in rows)
        excess = sum(number(r, EXCESS) for r in rows)
        repeats = f" (named by {pages} pages; the first is read)" if pages > 1 else ""
        lines.append(f"{name}: {len(rows)} instructions, {samples:.0f} stall samples, "
                     f"{share(excess, sectors)} of {sectors:.4g} global sectors in excess{repeats}")
        reasons = stall_reasons(rows)
        by_reason = sorted(((sum(number(r, reason) for r in rows), reason) for reason in reasons), reverse=True)
        lines.append("  samples by reason: " + ", ".join(
            f"{reason[len(STALL_PREFIX):]} {share(count, samples)}" for count, reason in by_reason if count > 0))
        lines.append("  most sampled instructions (share of samples, main reason, source):")
        for row in sorted(rows, key=lambda r: -number(r, SAMPLES))[:top]:
            count, reason = max(((number(row, reason), reason) for reason in reasons), default=(0.0, ""))
            main = reason[len(STALL_PREFIX):] if count > 0 else "-"
            lines.append(f"    {share(number(row, SAMPLES), samples):>6}  {main:18s} {row.get('Source', '').strip()[:70]}")
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
