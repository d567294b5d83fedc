"""Executed instructions of the profiled kernels (gqa128_dkdv_sass.csv.gz, Nsight Compute's per-instruction
source page): per kernel, the stall samples by reason, the executed instructions by opcode, and the
instructions grouped by how often each ran (a loop body's instructions share one count), with the share
of the stall samples of each group.

    python opcode_mix.py [SASS_CSV_GZ]
"""
import collections
import csv
import gzip
import io
import sys


def kernels(path):
    """(kernel name, rows) per kernel; ncu may print a kernel's page twice, the first is kept."""
    sections, current = [], None
    for line in gzip.open(path, "rt").read().split("\n"):
        if line.startswith('"Kernel Name"'):
            current = [line]
            sections.append(current)
        elif current is not None:
            current.append(line)
    seen = set()
    for section in sections:
        name = section[0].split('","')[1].split("(fibsparse::Params")[0]
        if name not in seen:
            seen.add(name)
            yield name, list(csv.DictReader(io.StringIO("\n".join(section[1:]))))


def number(row, key):
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return 0.0


def opcode(source):
    words = source.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def main(path):
    for name, rows in kernels(path):
        executed = [number(r, "Instructions Executed") for r in rows]
        samples = [number(r, "# Samples") for r in rows]
        total, total_samples = sum(executed), sum(samples)
        print(f"{name}: {len(rows)} instructions, {total / 1e6:.1f} M executed (warp-level)")
        stalls = collections.Counter()
        for r in rows:
            for key in r:
                if key.startswith("stall_") and "Not Issued" not in key:
                    stalls[key[6:]] += number(r, key)
        all_stalls = sum(stalls.values())
        print("  stall samples: " + ", ".join(f"{k} {v / all_stalls:.0%}" for k, v in stalls.most_common(8)))
        by_opcode = collections.Counter()
        for r, n in zip(rows, executed):
            by_opcode[opcode(r["Source"].strip())] += n
        print("  by opcode: " + ", ".join(f"{k} {v / total:.1%}" for k, v in by_opcode.most_common(14)))
        groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
        for n, s in zip(executed, samples):
            g = groups[round(n / 1e4)]
            g[0] += 1
            g[1] += n
            g[2] += s
        print("  grouped by count: each ran (M times) x instructions = share of executed, of samples")
        for count, (k, n, s) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:8]:
            print(f"    {count / 100:6.2f} x {k:5d} = {n / total:6.1%} {s / total_samples:6.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gqa128_dkdv_sass.csv.gz")
