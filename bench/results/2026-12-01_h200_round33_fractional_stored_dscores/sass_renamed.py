"""Compares the SASS of the delta pass and the dq pass with offsets (bwd_{bf16,fp16}.cu, sm_90a cubins of two
trees in /tmp/cub) by name, with the OffsetT template argument that round 33 added taken out of the new names."""
import re, subprocess, sys
CUOBJ = "/work/venv/lib/python3.11/site-packages/triton/backends/nvidia/bin/cuobjdump"
def funcs(path):
    out = subprocess.run([CUOBJ, "-sass", path], capture_output=True, text=True).stdout
    res, name, body = {}, None, []
    for line in out.splitlines():
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            if name: res[name] = body
            name = subprocess.run(["c++filt", m.group(1)], capture_output=True, text=True).stdout.strip(); body = []
            continue
        if name:
            l = re.sub(r"/\*[0-9a-f]{4,}\*/", "", line).strip()
            if l and not l.startswith("/*"): body.append(re.sub(r"\s+", " ", l))
    if name: res[name] = body
    return res
def norm(n):  # the template argument the change added
    return n.replace("delta_kernel<c10::BFloat16, int, ", "delta_kernel<c10::BFloat16, ").replace(
        "delta_kernel<c10::Half, int, ", "delta_kernel<c10::Half, ").replace(
        "offsets_kernel<c10::BFloat16, int, ", "offsets_kernel<c10::BFloat16, ").replace(
        "offsets_kernel<c10::Half, int, ", "offsets_kernel<c10::Half, ")
same = diff = 0
for dt in ("bf16", "fp16"):
    before = funcs(f"/tmp/cub/before_bwd_{dt}.cubin")
    after = {norm(k): v for k, v in funcs(f"/tmp/cub/after_bwd_{dt}.cubin").items()}
    for name, body in before.items():
        if not ("delta_kernel" in name or "with_offsets_kernel" in name): continue
        if after.get(name) == body: same += 1
        else: diff += 1; print("differs or missing:", name, len(body), len(after.get(name, [])))
print(f"renamed kernels identical: {same}, different: {diff}")
