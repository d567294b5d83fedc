"""Stall samples of the dk/dv pass (csrc as 6cadcd7, bf16, head_dim 64, integer offsets, before the
dq pass) by region of its code, and its executed instructions by kind:
python3 regions.py dkdv_mha64_128k_sass.csv.gz.
The regions' first instructions, by index in the listing, were read off the SASS of the same
kernel: the loop starts at 905 with the next step's copies; 1501 is its wait (LDGDEPBAR,
DEPBAR, BAR.SYNC), 1518 the offset step, 1752 the band step's first of four sub-tile products,
2462 the step's end with its block barrier (2476) and the loop's branch (2489)."""
import collections, csv, gzip, re, sys

REGIONS = [("setup", 0), ("issue the next step", 905), ("wait + barrier", 1501), ("offset step", 1518),
           ("band step", 1752), ("step end + barrier", 2462), ("epilogue", 2500)]
REASONS = ["wait", "selected", "long_sb", "barrier", "short_sb", "not_selected", "math", "dispatch",
           "branch_resolving", "no_inst"]
KINDS = {"HMMA": "HMMA", "LDGSTS": "LDGSTS", "LDSM": "LDSM", "LDS": "LDS", "LDG": "LDG", "STG": "STG",
         "BRA": "branch", "BSSY": "branch", "BSYNC": "branch", "WARPSYNC": "branch", "BAR": "BAR",
         "FFMA": "float", "FMUL": "float", "FADD": "float", "MUFU": "float", "FMNMX": "float",
         "FSETP": "float", "FSEL": "float", "F2FP": "convert", "F2F": "convert"}


def number(text):
    try:
        return float(text)
    except ValueError:
        return 0.0


rows = list(csv.reader(gzip.open(sys.argv[1], "rt")))
header, data = rows[1], rows[2:]
col = {name: header.index(name) for name in header}
samples_of = lambda r: number(r[col["Warp Stall Sampling (All Samples)"]])
executed_of = lambda r: number(r[col["Instructions Executed"]])
all_samples, all_executed = sum(map(samples_of, data)), sum(map(executed_of, data))
print(f"{'region':22s} {'samples':>8s} {'instr.':>7s}  " + " ".join(f"{r[:8]:>8s}" for r in REASONS))
for k, (name, start) in enumerate(REGIONS):
    end = REGIONS[k + 1][1] if k + 1 < len(REGIONS) else len(data)
    part = data[start:end]
    by_reason = [sum(number(r[col["stall_" + reason]]) for r in part) / all_samples for reason in REASONS]
    print(f"{name:22s} {sum(map(samples_of, part)) / all_samples:8.1%} "
          f"{sum(map(executed_of, part)) / all_executed:7.1%}  " + " ".join(f"{x:8.1%}" for x in by_reason))
kinds = collections.Counter()
for r in data:
    opcode = re.sub(r"^@!?U?P\w+\s+", "", r[col["Source"]].strip()).split(".")[0].split(" ")[0]
    kinds[KINDS.get(opcode, "integer and other")] += executed_of(r)
print(f"\n{all_executed:.4g} warp instructions executed, by kind:")
for kind, executed in kinds.most_common():
    print(f"  {kind:18s} {executed / all_executed:6.1%}")
