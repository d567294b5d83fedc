"""Offset schedules across depth. Standard library only.

A query sees the dense band of distances 0..window-1 plus a few "offset" distances.
Layer l stretches a base sequence b_k by a scalar alpha_l:

    offsets_l = sorted unique { r(alpha_l * b_k) : window <= r(alpha_l * b_k) <= max_distance }

Choices the spec leaves open, made here:

* Rounding is r(x) = floor(x + 0.5) (half up), not Python's round() (half to even):
  798.5 -> 799 whatever the parity, and any kernel can reproduce it with one floor.
* "In reach": b_k is generated only while r(alpha * b_k) <= max_distance (integer
  offsets), or alpha * b_k <= max_distance for the unrounded positions of `learned`.
* `pow2` is reach-matched: b_k = c * 2**k with c = F*/P*, where F* is the largest
  Fibonacci number and P* the largest power of two in reach for this alpha. Since P* is a
  power of two, c * P* == F* exactly, so a pow2 layer's largest offset equals the
  fibonacci layer's largest offset for the same (window, max_distance, alpha): the two
  bases differ in spacing only, never in how far they see. (c lies in [1, 2).)
* `stagger`/`coprime` default to alphas in [0.5, 1.5], centred on `fixed`'s 1.0; the
  paper's exact range is not in our material.
* `coprime`'s default stride is the s in 1..L-1 with gcd(s, L) = 1 nearest L/golden_ratio
  (ties -> the smaller; L = 1 -> 1), e.g. L = 16 -> 9: consecutive layers land far apart
  on the ramp (anti-gridding) while every alpha is still used exactly once.
* `learned`: alphas hold the initial values; base_distances() are the b_k with
  window <= alpha0 * b_k <= max_distance, fixed at construction; positions() = alpha * b_k.
* `custom` with explicit offsets has no base and no alpha (alpha(l) is None); its
  base_distances are the offsets themselves, so positions(l, alpha) = alpha * offsets.
  Offsets beyond max_distance are allowed there (the user asked for them).
* `dense` is ordinary causal attention: window None, no offsets, reach None (unbounded).
* union_reach() is the union of offsets only; `reach` is the largest distance any layer
  sees (window - 1 when no layer has an offset).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from ._offsets import MAX_OFFSET, farthest_band_distance, is_past_band

SCHEDULES = ("fixed", "learned", "stagger", "coprime", "custom", "dense")
BASES = ("fibonacci", "pow2")
GOLDEN_RATIO = (1 + math.sqrt(5)) / 2

SPARSE_SCHEDULES = tuple(name for name in SCHEDULES if name != "dense")
# The optional arguments of make_schedule and the schedules that read them.
# make_schedule refuses an argument passed to any other schedule (silently
# ignoring it would hide a mistake), so a caller that holds every argument
# passes each schedule only those this table says it reads.
# max_distance is not here: every schedule takes it (dense only to bound its plot).
# custom reads base only when built from alphas (explicit offsets have no base).
ARGUMENT_USERS = {
    "window": SPARSE_SCHEDULES,
    "base": SPARSE_SCHEDULES,
    "alpha": ("fixed", "learned"),
    "alpha_min": ("stagger", "coprime"),
    "alpha_max": ("stagger", "coprime"),
    "stride": ("coprime",),
    "alphas": ("custom",),
    "offsets": ("custom",),
}
DEFAULT_BASE = "fibonacci"
DEFAULT_ALPHA = 1.0  # fixed, learned
DEFAULT_ALPHA_MIN, DEFAULT_ALPHA_MAX = 0.5, 1.5  # stagger, coprime (see the module docstring)


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _check_choice(arg, value, valid):
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{arg} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def _check_int(arg, value, low, what=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{arg} must be an integer >= {low}{what}; got {value!r}")
    return int(value)


def _check_pos(arg, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{arg} must be a finite number > 0; got {value!r}")
    return float(value)


def base_sequence(base: str, alpha: float, max_distance: int, *, fractional: bool = False) -> list[float]:
    """The b_k in reach for this alpha (pow2 already scaled by c), ascending.

    In reach: r(alpha*b) <= max_distance, or alpha*b <= max_distance if `fractional`."""
    _check_choice("base", base, BASES)
    alpha = _check_pos("alpha", alpha)
    max_distance = _check_int("max_distance", max_distance, 1)
    if fractional:
        def ok(b): return alpha * b <= max_distance
    else:
        def ok(b): return _round(alpha * b) <= max_distance
    fib, a, b = [], 1, 2  # distinct Fibonacci numbers: 1, 2, 3, 5, ...
    while ok(a):
        fib.append(a)
        a, b = b, a + b
    if base == "fibonacci" or not fib:
        return [float(f) for f in fib]
    p = 1  # P*: ok(1) holds because fib is not empty
    while ok(2 * p):
        p *= 2
    c = fib[-1] / p  # exact scaling by powers of two: c * p == F*
    return [c * 2 ** k for k in range(p.bit_length())]


def layer_offsets(base: str, alpha: float, window: int, max_distance: int) -> list[int]:
    """Integer offsets of one layer, exactly the formula above."""
    window = _check_int("window", window, 1)
    max_distance = _check_int("max_distance", max_distance, window, f" (window = {window})")
    return sorted({o for o in (_round(alpha * b) for b in base_sequence(base, alpha, max_distance))
                   if is_past_band(o, window)})


def coprime_stride(num_layers: int) -> int:
    """The s in 1..L-1 coprime to L nearest L / golden_ratio (ties: smaller; L=1: 1)."""
    L = _check_int("num_layers", num_layers, 1)
    if L == 1:
        return 1
    target = L / GOLDEN_RATIO
    return min((s for s in range(1, L) if math.gcd(s, L) == 1), key=lambda s: (abs(s - target), s))


@dataclass(frozen=True)
class Schedule:
    """Per-layer offsets of one model; build it with make_schedule()."""
    name: str
    base: str | None  # None for dense and custom offsets
    num_layers: int
    window: int | None  # None for dense
    max_distance: int | None
    alphas: tuple[float, ...]  # () for dense and custom offsets
    offset_table: tuple[tuple[int, ...], ...] = field(repr=False)
    base_table: tuple[tuple[float, ...], ...] = field(repr=False)

    @property
    def is_dense(self) -> bool:
        return self.name == "dense"

    @property
    def is_learned(self) -> bool:
        return self.name == "learned"

    def _layer(self, layer) -> int:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an integer in [0, {self.num_layers - 1}]; got {layer!r}")
        return int(layer)

    def alpha(self, layer: int) -> float | None:
        """alpha_l (initial value for learned); None where there is none."""
        layer = self._layer(layer)
        return self.alphas[layer] if self.alphas else None

    def offsets(self, layer: int) -> list[int]:
        """Integer offsets (learned: rounded at the initial alpha, for display)."""
        return list(self.offset_table[self._layer(layer)])

    def base_distances(self, layer: int) -> list[float]:
        """The b_k this layer keeps (several b_k may round to one offset at small alpha)."""
        return list(self.base_table[self._layer(layer)])

    def positions(self, layer: int, alpha: float | None = None) -> list[float]:
        """Unrounded distances alpha * b_k, with `alpha` or the layer's initial alpha."""
        a = self.alpha(layer) if alpha is None else _check_pos("alpha", alpha)
        return [(1.0 if a is None else a) * b for b in self.base_distances(layer)]

    def union_reach(self) -> list[int]:
        """Sorted union of the offsets of all layers (window distances not included)."""
        return sorted(set().union(*self.offset_table))

    @property
    def reach(self) -> int | None:
        """Largest distance any layer sees; None (unbounded) for dense."""
        return None if self.is_dense else max([farthest_band_distance(self.window), *self.union_reach()])

    def describe(self) -> str:
        L = self.num_layers
        if self.is_dense:
            return (f"schedule 'dense' ({L} layers): ordinary causal attention, every layer "
                    f"sees every distance 0..i; no window, no offsets; reach: unbounded")
        lines = [f"schedule {self.name!r}: base {self.base or '- (explicit offsets)'}, {L} layers, "
                 f"window {self.window} (distances 0..{self.window - 1} on every layer), "
                 f"max_distance {self.max_distance}"]
        if self.is_learned:
            lines.append("alpha is trainable: offsets are shown rounded at the initial alpha; "
                         "the model uses alpha * b_k unrounded")
        lines.append(f"{'layer':>5} | {'alpha':>7} | {'#offsets':>8} | {'min':>6} | {'max':>6} | offsets")
        for l in range(L):
            o, a = self.offset_table[l], self.alpha(l)
            lines.append(f"{l:>5} | {'-' if a is None else f'{a:.4f}':>7} | {len(o):>8} | "
                         f"{o[0] if o else '-':>6} | {o[-1] if o else '-':>6} | {list(o)}")
        u = self.union_reach()
        lines.append(f"union reach: {len(u)} distinct offsets across layers, reach {self.reach}: {u}")
        return "\n".join(lines)

    __str__ = describe

    def plot(self, path):
        """PNG: one row per layer, a mark per offset, the window as a band; log x."""
        try:
            from matplotlib.figure import Figure  # lazy: the module needs no matplotlib
        except ImportError as e:
            raise ImportError("Schedule.plot() needs matplotlib: pip install matplotlib") from e
        L = self.num_layers
        fig = Figure(figsize=(9, 1.5 + 0.3 * L))
        ax = fig.add_subplot()
        # log axis cannot show distance 0, so bands start at 1 (0 is always seen)
        top = self.max_distance or 4096
        band = top if self.is_dense else self.window
        ax.barh(range(L), [max(band - 1, 0)] * L, left=1, height=0.6, color="tab:blue", alpha=0.3,
                label="every distance (dense)" if self.is_dense else f"window 1..{band - 1}")
        for l in range(L):
            xs = self.positions(l) if self.is_learned else self.offsets(l)
            ax.scatter(xs, [l] * len(xs), marker="|", s=150, color="tab:red",
                       label="offsets" if l == 0 and xs else None)
        if self.max_distance:
            ax.axvline(self.max_distance, ls="--", color="gray", label="max_distance")
        ax.set_xscale("log")
        ax.set_xlim(0.8, 1.3 * max(top, self.reach or 1))
        ax.set_ylim(L - 0.5, -0.5)  # layer 0 on top
        ax.set_yticks(range(L))
        ax.set_xlabel("distance (log scale)")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.name} schedule, base {self.base or '-'}, window {self.window or 'all'}, "
                     f"reach {'unbounded' if self.is_dense else self.reach}")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
        return path


def _check_custom_offsets(offsets, L, window):
    bad = (f"offsets must be a list of num_layers ({L}) lists of strictly increasing integers in "
           f"[window ({window}), 2^31 - 1]")
    if isinstance(offsets, (str, bytes)) or not hasattr(offsets, "__len__") or len(offsets) != L:
        raise ValueError(f"{bad}; got {offsets!r}")
    table = []
    for i, row in enumerate(offsets):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise ValueError(f"{bad}; offsets[{i}] = {row!r}")
        row = list(row)
        if (any(isinstance(o, bool) or not isinstance(o, numbers.Integral) for o in row)
                or any(not window <= o <= MAX_OFFSET for o in row) or any(a >= b for a, b in zip(row, row[1:]))):
            raise ValueError(f"{bad}; offsets[{i}] = {row!r}")
        table.append(tuple(int(o) for o in row))
    return tuple(table)


def make_schedule(name: str, *, num_layers: int, window: int | None = None, max_distance: int | None = None,
                  base: str | None = None, alpha: float | None = None, alpha_min: float | None = None,
                  alpha_max: float | None = None, stride: int | None = None, alphas=None, offsets=None) -> Schedule:
    """Build a schedule by name (see SCHEDULES); window/max_distance are required except for dense.
    Defaults: base "fibonacci", alpha 1.0 (fixed, learned), alpha_min 0.5 and alpha_max 1.5
    (stagger, coprime). An argument the schedule does not use (ARGUMENT_USERS) is an error."""
    _check_choice("name", name, SCHEDULES)
    L = _check_int("num_layers", num_layers, 1)
    given = {"stride": stride, "alphas": alphas, "offsets": offsets, "alpha": alpha, "alpha_min": alpha_min,
             "alpha_max": alpha_max, "window": window, "base": base}
    for arg, value in given.items():
        users = ARGUMENT_USERS[arg]
        if arg == "base" and offsets is not None:
            users = tuple(n for n in users if n != "custom")
        if value is not None and name not in users:
            context = " with explicit offsets" if name == "custom" and arg == "base" else ""
            raise ValueError(f"{arg} is not used by schedule {name!r}{context} "
                             f"(only by {', '.join(repr(n) for n in users)})")
    base = DEFAULT_BASE if base is None else base
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    alpha_min = DEFAULT_ALPHA_MIN if alpha_min is None else alpha_min
    alpha_max = DEFAULT_ALPHA_MAX if alpha_max is None else alpha_max
    if name == "dense":
        if max_distance is not None:
            max_distance = _check_int("max_distance", max_distance, 1)
        return Schedule("dense", None, L, None, max_distance, (), ((),) * L, ((),) * L)
    window = _check_int("window", window, 1)
    max_distance = _check_int("max_distance", max_distance, window, f" (window = {window})")
    _check_choice("base", base, BASES)
    if name == "custom":
        if (alphas is None) == (offsets is None):
            raise ValueError("schedule 'custom' needs exactly one of alphas (one per layer) "
                             "or offsets (one list per layer)")
        if offsets is not None:
            table = _check_custom_offsets(offsets, L, window)
            return Schedule("custom", None, L, window, max_distance, (), table,
                            tuple(tuple(map(float, o)) for o in table))
        if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__len__") or len(alphas) != L:
            raise ValueError(f"alphas must be a list of num_layers ({L}) numbers > 0; got {alphas!r}")
        alpha_t = tuple(_check_pos(f"alphas[{i}]", a) for i, a in enumerate(alphas))
    elif name in ("fixed", "learned"):
        alpha_t = (_check_pos("alpha", alpha),) * L
    else:  # stagger, coprime
        lo, hi = _check_pos("alpha_min", alpha_min), _check_pos("alpha_max", alpha_max)
        if hi < lo:
            raise ValueError(f"alpha_max must be >= alpha_min ({lo}); got {hi}")
        ramp = [lo + (hi - lo) * l / (L - 1) for l in range(L)] if L > 1 else [lo]
        if name == "coprime":
            s = coprime_stride(L) if stride is None else stride
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or math.gcd(int(s), L) != 1:
                raise ValueError(f"stride must be an integer coprime to num_layers ({L}); got {s!r}")
            ramp = [ramp[(l * int(s)) % L] for l in range(L)]
        alpha_t = tuple(ramp)
    learned = name == "learned"
    offs, bases = [], []
    for a in alpha_t:
        # learned keeps b_k by its unrounded position (it is never rounded in the model)
        kept = [b for b in base_sequence(base, a, max_distance, fractional=learned)
                if is_past_band(a * b if learned else _round(a * b), window)]
        bases.append(tuple(kept))
        offs.append(tuple(sorted({_round(a * b) for b in kept})))
    return Schedule(name, base, L, window, max_distance, alpha_t, tuple(offs), tuple(bases))
