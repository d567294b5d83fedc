# A numpy model of back_scores_from_tile (fwd_hopper_kernel.cuh, round 101): each lane's
# registers of the 16 x 8 tiles in the m16n8k16 C layout, the shuffle, the selects; every
# diagonal owner must get its query's score against the row one back.
import numpy as np
rng = np.random.default_rng(0)
d = 64
for w in range(4):
  for second_frac in (True, False):
    Q = rng.standard_normal((16, d))
    K = [rng.standard_normal((33, d)) for _ in range(2)]  # index r+1 for strip row r in -1..31
    row = lambda s, r: K[s][r + 1]
    tile = [np.array([[Q[m] @ row(s, 8 * w + n) for n in range(8)] for m in range(16)]) for s in range(2)]
    sel = lambda n: 1 if (n == 1 and second_frac) else 0
    before = np.array([[Q[m] @ row(sel(n), 8 * w - 1) for n in range(8)] for m in range(16)])
    def regs(C, L):
        g, c = L // 4, L % 4
        return [C[g][2*c], C[g][2*c+1], C[g+8][2*c], C[g+8][2*c+1]]
    for s in range(2):
        if s == 1 and not second_frac: continue
        T = [regs(tile[s], L) for L in range(32)]
        B = [regs(before, L) for L in range(32)]
        for L in range(32):
            g, c = L // 4, L % 4
            up1 = T[L - 1][1] if L > 0 else T[L][1]
            up3 = T[L - 1][3] if L > 0 else T[L][3]
            first_g = B[L][0] if s == 0 else B[L][1]
            first_g8 = B[L][2] if s == 0 else B[L][3]
            b0 = first_g if g == 0 else (T[L][0] if g % 2 else up1)
            b2 = first_g8 if g == 0 else (T[L][2] if g % 2 else up3)
            if c == g // 2:  # the diagonal owner
                want0 = Q[g] @ row(s, 8 * w + g - 1); want2 = Q[g + 8] @ row(s, 8 * w + g - 1)
                assert np.isclose(b0, want0) and np.isclose(b2, want2), (w, s, L)
print("round 101 back scores: every owner lane right")
