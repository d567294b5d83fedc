"""Stall samples and executed (warp) instructions of a kernel's per-instruction page (ncu --page source --csv,
gzipped) by region of its code.
Usage: regions.py SASS_CSV_GZ NAME:FIRST_INDEX ... (instruction indices, 0-based, each region running to the next
region's first index; the last to the end of the listing). The indices were read off each listing: the
consumers' start after USETMAXREG.TRY_ALLOC, the q buffer's SYNCS wait, the first stage's wait, the band's first
HGMMA, the offsets' q fragments after the band's last arrive, the offset loop's first instruction (its back
branch's target), the tile's end after that branch, the producer after USETMAXREG.DEALLOC, and the waits' retry
loops that ptxas places after the last EXIT."""
import csv
import gzip
import sys

rows = list(csv.reader(gzip.open(sys.argv[1], "rt")))
header, data = rows[1], rows[2:]
samples = [int(r[header.index("Warp Stall Sampling (All Samples)")]) for r in data]
executed = [int(r[header.index("Instructions Executed")] or 0) for r in data]
regions = [(name, int(first)) for name, first in (a.split(":") for a in sys.argv[2:])]
print(f"{len(data)} instructions, {sum(samples)} samples, {sum(executed)} warp instructions executed")
for i, (name, first) in enumerate(regions):
    last = regions[i + 1][1] if i + 1 < len(regions) else len(data)
    s, e = sum(samples[first:last]), sum(executed[first:last])
    print(f"  {name:9s} [{first:5d}, {last:5d}) {s:7d} samples {100 * s / sum(samples):5.1f}%"
          f"  {e / 1e6:7.1f}M executed {100 * e / sum(executed):5.1f}%")
