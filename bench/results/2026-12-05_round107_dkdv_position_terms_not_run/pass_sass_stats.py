"""Static counts of round 107's kernels in a bwd_bf16 cubin (nvcc -cubin of
csrc/cuda/bwd_bf16.cu for sm_90a, the branch's sources): for the fractional dk/dv
pass with the two-diagonal product and kept addresses, and for the fractional dq
pass with the two-diagonal product, each with and without the d(position) terms
summed in the dk/dv pass: the kernel's instructions, and for the dk/dv pass those
from its offset step's split of the position (the loop's last F2I.S64.FLOOR) to the
next barrier. Static counts: what the code holds, not what a warp issues.

    python pass_sass_stats.py bwd_bf16.cubin [path to cuobjdump]
"""
import re
import subprocess
import sys

cuobjdump = sys.argv[2] if len(sys.argv) > 2 else "cuobjdump"
text = subprocess.run([cuobjdump, "-sass", sys.argv[1]], capture_output=True, text=True, check=True).stdout
rows = []
for function in re.split(r"\n\s*Function : ", text)[1:]:
    name = function.split("\n", 1)[0].strip()
    ops = [op.strip() for op in re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", function)]
    dkdv = re.search(r"dkdv_mma_kernelIN3c108BFloat16EfLi(\d+)ELNS_9mma_tiles9DkdvRouteE2ELb1ELb1ELb1ELb1ELb([01])E", name)
    dq = re.search(r"dq_from_dscores_with_offsets_kernelIN3c108BFloat16EfLi(\d+)ELi(\d)ELi(\d)ELb0ELb1ELb([01])E", name)
    if not (dkdv or dq):
        continue
    if dkdv:
        split = [i for i, op in enumerate(ops) if "F2I.S64.FLOOR" in op][-1]
        barrier = next(i for i in range(split, len(ops)) if "BAR." in ops[i])
        rows.append(f"dkdv d{dkdv.group(1)} kept addresses, sums terms={dkdv.group(2)}: {len(ops)} instructions; "
                    f"split -> barrier {barrier - split}")
    else:
        rows.append(f"dq d{dq.group(1)} heads {dq.group(2)} stages {dq.group(3)} terms summed by dk/dv={dq.group(4)}: "
                    f"{len(ops)} instructions")
print("\n".join(sorted(rows)))
