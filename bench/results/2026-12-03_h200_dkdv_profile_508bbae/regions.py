"""Stall samples of the dk/dv pass (508bbae, bf16, head_dim 128, integer offsets, before the dq
pass) by region of its code: python3 regions.py dkdv_gqa128_64k_sass.csv.gz.
The regions' first instructions, by index in the listing, read off the SASS of the same kernel:
the loop starts at 1095 (0x4470) with the next step's copies."""
import csv, gzip, sys

REGIONS = [("setup", 0), ("issue the next step", 1095), ("wait + barrier", 1711), ("offset step", 1725),
           ("band step", 1997), ("step end + barrier", 3026), ("epilogue", 3082)]
REASONS = ["wait", "selected", "long_sb", "barrier", "short_sb", "not_selected", "math", "dispatch",
           "branch_resolving", "no_inst", "lg", "mio"]


def number(text):
    try:
        return float(text)
    except ValueError:
        return 0.0


rows = list(csv.reader(gzip.open(sys.argv[1], "rt")))
header, data = rows[1], rows[2:]
col = {name: header.index(name) for name in header}
all_samples = sum(number(r[col["Warp Stall Sampling (All Samples)"]]) for r in data)
all_executed = sum(number(r[col["Instructions Executed"]]) for r in data)
print(f"{'region':22s} {'samples':>8s} {'instr.':>7s}  " + " ".join(f"{r[:8]:>8s}" for r in REASONS))
for k, (name, start) in enumerate(REGIONS):
    end = REGIONS[k + 1][1] if k + 1 < len(REGIONS) else len(data)
    part = data[start:end]
    samples = sum(number(r[col["Warp Stall Sampling (All Samples)"]]) for r in part)
    executed = sum(number(r[col["Instructions Executed"]]) for r in part)
    by_reason = [sum(number(r[col["stall_" + reason]]) for r in part) / all_samples for reason in REASONS]
    print(f"{name:22s} {samples / all_samples:8.1%} {executed / all_executed:7.1%}  " +
          " ".join(f"{x:8.1%}" for x in by_reason))
