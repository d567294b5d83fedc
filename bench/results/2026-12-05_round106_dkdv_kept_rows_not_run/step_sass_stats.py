"""Static counts of the fractional dk/dv pass's offset step in a bwd_bf16 cubin (nvcc -cubin
of csrc/cuda/bwd_bf16.cu for sm_90a), with and without round 106's kept addresses:
the kernel's instructions, those from the step's split of its position (the loop's last
F2I.S64.FLOOR) to the next barrier, where the first ldmatrix instructions and the S2R
reads fall after the split. Static counts: what the code holds, not what a warp issues.

    python step_sass_stats.py bwd_bf16.cubin [path to cuobjdump]
"""
import re
import subprocess
import sys

cuobjdump = sys.argv[2] if len(sys.argv) > 2 else "cuobjdump"
text = subprocess.run([cuobjdump, "-sass", sys.argv[1]], capture_output=True, text=True, check=True).stdout
for function in re.split(r"\n\s*Function : ", text)[1:]:
    name = function.split("\n", 1)[0].strip()
    for head_dim in ("64", "128"):
        for kept in ("0", "1"):
            # dkdv_mma_kernel<bf16, float, head_dim, kBeforeDq, true, true, true, kept>
            if f"dkdv_mma_kernelIN3c108BFloat16EfLi{head_dim}ELNS_9mma_tiles9DkdvRouteE2ELb1ELb1ELb1ELb{kept}E" not in name:
                continue
            ops = [op.strip() for op in re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", function)]
            split = [i for i, op in enumerate(ops) if "F2I.S64.FLOOR" in op][-1]
            barrier = next(i for i in range(split, len(ops)) if "BAR." in ops[i])
            ldmatrix = [i - split for i in range(split, barrier) if "LDSM" in ops[i]][:4]
            s2r = [i - split for i in range(split, barrier) if "S2R" in ops[i]]
            print(f"d{head_dim} kept={kept}: {len(ops)} instructions; split->barrier {barrier - split}; "
                  f"first LDSMs at +{ldmatrix}; S2R at +{s2r}")
