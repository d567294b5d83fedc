# Emulates a fractional offset's forward two ways against float64:
#  "two rows": scores (1-f) q.k_a + f q.k_b in fp32, P rounded to bf16, P (1-f) v_a + P f v_b in fp32
#  "mixed":    k~ = bf16((1-f) k_a + f k_b), v~ likewise; scores q.k~ in fp32, P bf16, P v~
# Only offset keys plus a dense causal window, single head, for the error's scale.
import torch, math
torch.manual_seed(0)
L, d, W = 4096, 128, 128
offs = [w * 0.97 for w in (128, 207, 335, 542, 877, 1419, 2296, 3715)]
def run(mode, q, k, v):
    qf = q.double() if mode == "ref" else q.float()
    out = torch.zeros(L, d, dtype=torch.float64)
    scale = d ** -0.5
    for i in range(L):
        lo = max(0, i - W + 1)
        cols_k, cols_v = [], []
        if mode == "ref":
            kk = [k[j].double() for j in range(lo, i + 1)]; vv = [v[j].double() for j in range(lo, i + 1)]
        else:
            kk = [k[j].float() for j in range(lo, i + 1)]; vv = [v[j].float() for j in range(lo, i + 1)]
        s = [(qf[i] * x).sum() * scale for x in kk]
        extra_v = []
        for p in offs:
            a = math.floor(p); f = p - a
            if i - p < 0: continue
            ka, kb = k[i - a], k[i - a - 1]; va, vb = v[i - a], v[i - a - 1]
            if mode == "ref":
                kt = (1 - f) * ka.double() + f * kb.double(); vt = (1 - f) * va.double() + f * vb.double()
                s.append((qf[i] * kt).sum() * scale); extra_v.append(vt)
            elif mode == "two":
                s.append(((1 - f) * (qf[i] * ka.float()).sum() + f * (qf[i] * kb.float()).sum()) * scale)
                extra_v.append(((1 - f), va.float(), f, vb.float()))
            else:
                kt = ((1 - f) * ka.float() + f * kb.float()).bfloat16().float()
                vt = ((1 - f) * va.float() + f * vb.float()).bfloat16().float()
                s.append((qf[i] * kt).sum() * scale); extra_v.append(vt)
        s = torch.stack(s)
        m = s.max(); e = torch.exp(s - m); lsum = e.sum()
        if mode != "ref": e = e.bfloat16().float()   # P to bf16 for the product
        acc = sum(e[j] * vv[j] for j in range(len(vv)))
        for t, x in enumerate(extra_v):
            pj = e[len(vv) + t]
            if mode == "two": acc = acc + pj * x[0] * x[1] + pj * x[2] * x[3]
            else: acc = acc + pj * x
        out[i] = (acc / lsum).double()
    return out
q = torch.randn(L, d).bfloat16(); k = torch.randn(L, d).bfloat16(); v = torch.randn(L, d).bfloat16()
sel = slice(3800, 4096)
ref = run("ref", q, k, v)
for mode in ("two", "mixed"):
    o = run(mode, q, k, v)
    print(mode, "rel err (all rows)", ((o - ref).norm() / ref.norm()).item(),
          " rows with offsets", ((o[3800:] - ref[3800:]).norm() / ref[3800:].norm()).item())
