"""Means, sample deviations and paired confidence intervals over seeds, with
Student's t distribution computed here (no scipy): what the extrapolation
experiment reports for each variant and each pair of variants."""
from __future__ import annotations

import math
import statistics

CONFIDENCE = 0.95


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function
    (modified Lentz), which converges fast for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 100_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    tail = 0.5 * regularized_beta(dof / (dof + t * t), dof / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom: t_cdf
    inverted by bisection (the CDF is increasing), to double precision."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not dof > 0:
        raise ValueError(f"dof must be > 0, got {dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, dof) < p else (low, middle)
    return 0.5 * (low + high)


def mean_std(values: list) -> dict:
    """Mean, sample standard deviation (None below two values) and count."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def paired_difference(baseline: list, variant: list, seeds: list) -> dict:
    """The per-seed relative differences 100 * (variant / baseline - 1), in
    percent, their mean and the CONFIDENCE interval of that mean from the t
    distribution with n - 1 degrees of freedom. Pairing by seed removes what
    the seed does to both runs alike (initial weights, data order)."""
    differences = [100.0 * (v / b - 1.0) for b, v in zip(baseline, variant)]
    summary = mean_std(differences)
    out = {"mean_pct": summary["mean"], "std_pct": summary["std"], "n": summary["n"], "seeds": list(seeds),
           "per_seed_pct": differences, "ci95_pct": None}
    if summary["n"] < 2:
        out["note"] = "one seed: no interval can be computed (it needs at least two)"
    else:
        half = t_quantile(0.5 + CONFIDENCE / 2, summary["n"] - 1) * summary["std"] / math.sqrt(summary["n"])
        out["ci95_pct"] = [summary["mean"] - half, summary["mean"] + half]
    return out
