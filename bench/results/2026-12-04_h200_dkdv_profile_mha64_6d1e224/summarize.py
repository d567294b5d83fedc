"""Summarizes Nsight Compute's per-instruction source page (gqa128_full_sass.csv.gz): per kernel, the
stall samples by reason, the instructions with the most samples (8, or the count given after the file),
and the global loads with excess sectors.

    python summarize.py [SASS_CSV_GZ [TOP]]
"""
import csv
import gzip
import io
import sys
from pathlib import Path

STALLS = ["stall_wait", "stall_long_sb", "stall_short_sb", "stall_barrier", "stall_selected", "stall_lg",
          "stall_math", "stall_not_selected", "stall_dispatch", "stall_no_inst", "stall_branch_resolving"]


def number(row, key):
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return 0.0


def kernels(path):
    """(kernel name, rows) per kernel in the file; ncu prints each kernel's page twice, the first is kept."""
    sections, seen = [], set()
    current = None
    for line in gzip.open(path, "rt").read().split("\n"):
        if line.startswith('"Kernel Name"'):
            current = [line]
            sections.append(current)
        elif current is not None:
            current.append(line)
    for section in sections:
        name = section[0].split('","')[1].split("(fibsparse")[0]
        if name not in seen:
            seen.add(name)
            yield name, list(csv.DictReader(io.StringIO("\n".join(section[1:]))))


def main(path, top=8):
    for name, rows in kernels(path):
        samples = sum(number(r, "Warp Stall Sampling (All Samples)") for r in rows)
        excess = sum(number(r, "L2 Theoretical Sectors Global Excessive") for r in rows)
        sectors = sum(number(r, "L2 Theoretical Sectors Global") for r in rows)
        print(f"{name}: {len(rows)} instructions, {samples:.0f} stall samples, "
              f"{excess / max(sectors, 1):.0%} of {sectors:.3g} global sectors excess")
        print("  samples by reason: " + ", ".join(
            f"{s[6:]} {sum(number(r, s) for r in rows) / samples:.0%}" for s in STALLS))
        print("  most sampled instructions (share of samples, main reason):")
        for r in sorted(rows, key=lambda r: -number(r, "Warp Stall Sampling (All Samples)"))[:top]:
            reason = max(STALLS, key=lambda s: number(r, s))
            print(f"    {number(r, 'Warp Stall Sampling (All Samples)') / samples:5.1%}  {reason[6:]:12s} "
                  f"{r['Source'].strip()[:70]}")
        loads = [r for r in rows if number(r, "L2 Theoretical Sectors Global Excessive") > 0]
        print(f"  {len(loads)} instructions with excess sectors; the largest:")
        for r in sorted(loads, key=lambda r: -number(r, "L2 Theoretical Sectors Global Excessive"))[:3]:
            print(f"    {r['Source'].strip()[:60]}  sectors {number(r, 'L2 Theoretical Sectors Global'):.4g}, "
                  f"ideal {number(r, 'L2 Theoretical Sectors Global Ideal'):.4g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("gqa128_full_sass.csv.gz"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 8)
