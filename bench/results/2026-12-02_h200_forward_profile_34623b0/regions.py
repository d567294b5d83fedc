"""Stall samples of a kernel's per-instruction page (ncu --page source --csv, gzipped) by region of its code.
Usage: regions.py SASS_CSV_GZ NAME:FIRST_INDEX ... (instruction indices, 0-based, each region running to the next
region's first index; the last to the end of the listing). The indices come from reading the listing: the
consumers' start after USETMAXREG.TRY_ALLOC, the q buffer's SYNCS wait, the first stage's wait, the band's first
HGMMA, the offset loop's stage wait, the end after the loop's back branch, the producer after USETMAXREG.DEALLOC."""
import csv, gzip, sys

rows = list(csv.reader(gzip.open(sys.argv[1], "rt")))
header, data = rows[1], rows[2:]
samples = [int(r[header.index("Warp Stall Sampling (All Samples)")]) for r in data]
total = sum(samples)
regions = [(name, int(first)) for name, first in (a.split(":") for a in sys.argv[2:])]
print(f"{len(data)} instructions, {total} samples")
for i, (name, first) in enumerate(regions):
    last = regions[i + 1][1] if i + 1 < len(regions) else len(data)
    share = sum(samples[first:last])
    print(f"  {name:10s} [{first:5d}, {last:5d}) {share:7d} samples {100 * share / total:5.1f}%")
