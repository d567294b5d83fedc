"""Tests for fibsparse_ext.schedules. Expected values are computed by hand in comments."""
import math

import pytest

from fibsparse_ext.schedules import (
    BASES, SCHEDULES, Schedule, base_sequence, coprime_stride, layer_offsets, make_schedule,
)

W, M = 64, 2048


def test_names():
    assert SCHEDULES == ("fixed", "learned", "stagger", "coprime", "custom", "dense")
    assert BASES == ("fibonacci", "pow2")


def test_fibonacci_base_sequence():
    # distinct Fibonacci numbers, 1 only once, stop when alpha*b > max_distance
    assert base_sequence("fibonacci", 1.0, 100) == [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]


def test_fibonacci_offsets_pinned():
    assert layer_offsets("fibonacci", 1.0, W, M) == [89, 144, 233, 377, 610, 987, 1597]
    # alpha 1.5: 55*1.5=82.5->83, 89->133.5->134, 144->216, 233->349.5->350,
    # 377->565.5->566, 610->915, 987->1480.5->1481; 1597*1.5 > 2048; 34*1.5=51 < 64
    assert layer_offsets("fibonacci", 1.5, W, M) == [83, 134, 216, 350, 566, 915, 1481]


def test_pow2_offsets_pinned_and_half_up_rounding():
    # alpha 1: F*=1597, P*=1024, c=1597/1024; offsets 1597/2**j: 1597, 798.5->799 (half UP,
    # Python's round would give 798), 399.25->399, 199.6->200, 99.8->100; 49.9 < 64
    assert layer_offsets("pow2", 1.0, W, M) == [100, 200, 399, 799, 1597]
    # alpha 1.5: F*=987, P*=1024; 1480.5/2**j: 1481, 740, 370, 185, 93; 46.3 < 64
    assert layer_offsets("pow2", 1.5, W, M) == [93, 185, 370, 740, 1481]


@pytest.mark.parametrize("window,max_distance,alpha", [
    (64, 2048, 1.0), (64, 2048, 1.5), (64, 2048, 0.5), (16, 1000, 1.0), (32, 4096, 0.73),
    (128, 8192, 2.2), (1, 10, 1.3), (8, 300, 1.1), (100, 100000, 0.9)])
def test_pow2_reach_matches_fibonacci(window, max_distance, alpha):
    fib = layer_offsets("fibonacci", alpha, window, max_distance)
    p2 = layer_offsets("pow2", alpha, window, max_distance)
    assert fib and p2
    assert p2[-1] == fib[-1]
    assert fib[-1] <= max_distance
    for a, b in zip(p2, p2[1:]):  # spacing ~2 up to rounding
        assert abs(b - 2 * a) <= 1
    bs = base_sequence("pow2", alpha, max_distance)
    for a, b in zip(bs, bs[1:]):
        assert b == 2 * a


def test_rounded_vs_fractional_reach_edge():
    # max 10, alpha 1.3: 8*1.3 = 10.4 rounds to 10 <= 10 (kept as an integer offset, as in
    # the spec formula) but is > 10 as an unrounded position (dropped for learned)
    assert layer_offsets("fibonacci", 1.3, 1, 10) == [1, 3, 4, 7, 10]
    assert base_sequence("fibonacci", 1.3, 10, fractional=True) == [1, 2, 3, 5]
    assert layer_offsets("pow2", 1.3, 1, 10) == [1, 3, 5, 10]  # c = 8/8 = 1
    assert base_sequence("pow2", 1.3, 10, fractional=True) == [1.25, 2.5, 5.0]  # c = 5/4


@pytest.mark.parametrize("L,s", [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 5), (8, 5),
                                 (10, 7), (12, 7), (16, 9), (24, 13), (32, 19)])
def test_coprime_stride_pinned(L, s):
    # s = integer coprime to L nearest L/phi, e.g. 16/1.618 = 9.89 -> 9 (11 is 1.11 away)
    assert coprime_stride(L) == s


@pytest.mark.parametrize("L", range(2, 65))
def test_coprime_stride_property(L):
    s = coprime_stride(L)
    assert 1 <= s < L and math.gcd(s, L) == 1
    target = L / ((1 + 5 ** 0.5) / 2)
    for t in range(1, L):
        if math.gcd(t, L) == 1:
            assert abs(s - target) <= abs(t - target)


def test_stagger_endpoints_and_linearity():
    s = make_schedule("stagger", num_layers=5, window=W, max_distance=M)
    assert s.alphas == pytest.approx([0.5, 0.75, 1.0, 1.25, 1.5])
    s = make_schedule("stagger", num_layers=7, window=W, max_distance=M, alpha_min=0.3, alpha_max=2.1)
    assert s.alpha(0) == pytest.approx(0.3) and s.alpha(6) == pytest.approx(2.1)
    steps = [b - a for a, b in zip(s.alphas, s.alphas[1:])]
    assert steps == pytest.approx([0.3] * 6)
    assert make_schedule("stagger", num_layers=1, window=W, max_distance=M).alphas == (0.5,)
    for l in range(7):
        assert s.offsets(l) == layer_offsets("fibonacci", s.alpha(l), W, M)


def test_coprime_alphas():
    # L=5: stride 3 -> stagger[0, 3, 1, 4, 2]
    c = make_schedule("coprime", num_layers=5, window=W, max_distance=M)
    assert c.alphas == pytest.approx([0.5, 1.25, 0.75, 1.5, 1.0])
    for L in (1, 2, 3, 8, 16, 24):
        st = make_schedule("stagger", num_layers=L, window=W, max_distance=M, base="pow2")
        co = make_schedule("coprime", num_layers=L, window=W, max_distance=M, base="pow2")
        assert sorted(co.alphas) == sorted(st.alphas)
        for l in range(L):
            assert co.offsets(l) == layer_offsets("pow2", co.alpha(l), W, M)
    c = make_schedule("coprime", num_layers=4, window=W, max_distance=M, stride=1)
    assert c.alphas == make_schedule("stagger", num_layers=4, window=W, max_distance=M).alphas


def test_fixed():
    s = make_schedule("fixed", num_layers=3, window=W, max_distance=M)
    assert s.alphas == (1.0, 1.0, 1.0) and not s.is_learned and not s.is_dense
    assert all(s.offsets(l) == [89, 144, 233, 377, 610, 987, 1597] for l in range(3))
    assert s.base_distances(0) == [89, 144, 233, 377, 610, 987, 1597]
    assert s.union_reach() == [89, 144, 233, 377, 610, 987, 1597]
    assert s.reach == 1597
    p = make_schedule("fixed", num_layers=2, window=W, max_distance=M, base="pow2", alpha=1.5)
    assert p.offsets(1) == [93, 185, 370, 740, 1481]


@pytest.mark.parametrize("base", BASES)
def test_learned(base):
    s = make_schedule("learned", num_layers=4, window=W, max_distance=M, base=base, alpha=0.75)
    assert s.is_learned and s.alphas == (0.75,) * 4
    for l in range(4):
        bd = s.base_distances(l)
        assert bd and all(W <= 0.75 * b <= M for b in bd)
        assert s.positions(l) == pytest.approx([0.75 * b for b in bd])
        assert s.positions(l, alpha=2.0) == pytest.approx([2 * b for b in bd])
        assert s.positions(l, alpha=1.0) == pytest.approx([b for b in bd])
    if base == "fibonacci":
        # 64 <= 0.75 b <= 2048  <=>  85.3 <= b <= 2730.7
        assert s.base_distances(0) == [89, 144, 233, 377, 610, 987, 1597, 2584]
        # 66.75->67, 108, 174.75->175, 282.75->283, 457.5->458, 740.25->740, 1197.75->1198, 1938
        assert s.offsets(0) == [67, 108, 175, 283, 458, 740, 1198, 1938]


def test_custom_alphas_and_offsets():
    s = make_schedule("custom", num_layers=3, window=W, max_distance=M, alphas=[1.0, 1.5, 0.5])
    assert s.alphas == (1.0, 1.5, 0.5)
    assert s.offsets(0) == [89, 144, 233, 377, 610, 987, 1597]
    assert s.offsets(1) == [83, 134, 216, 350, 566, 915, 1481]
    s = make_schedule("custom", num_layers=2, window=4, max_distance=100, offsets=[[4, 10, 50], []])
    assert s.offsets(0) == [4, 10, 50] and s.offsets(1) == []
    assert s.alpha(0) is None and s.alphas == ()
    assert s.positions(0, alpha=2.0) == [8.0, 20.0, 100.0]
    assert s.union_reach() == [4, 10, 50] and s.reach == 50
    s = make_schedule("custom", num_layers=1, window=4, max_distance=100, offsets=[[]])
    assert s.reach == 3  # the window alone


def test_dense():
    d = make_schedule("dense", num_layers=2)
    assert d.is_dense and d.window is None and d.alphas == ()
    assert d.offsets(0) == [] and d.union_reach() == [] and d.reach is None
    assert "dense" in d.describe() and "dense" in str(d)


def test_describe():
    s = make_schedule("coprime", num_layers=5, window=W, max_distance=M)
    text = s.describe()
    assert str(s) == text and "coprime" in text and "fibonacci" in text
    for l in range(5):
        assert any(line.split("|")[0].strip() == str(l) for line in text.splitlines())
        assert f"{s.alpha(l):.4f}" in text
    assert "union reach" in text and f"reach {s.reach}" in text
    assert "trainable" in make_schedule("learned", num_layers=1, window=W, max_distance=M).describe()


@pytest.mark.parametrize("kwargs", [
    dict(name="coprime", num_layers=8, window=W, max_distance=M),
    dict(name="learned", num_layers=3, window=W, max_distance=M, base="pow2"),
    dict(name="custom", num_layers=2, window=4, max_distance=100, offsets=[[4, 10], []]),
    dict(name="dense", num_layers=2),
])
def test_plot(tmp_path, kwargs):
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.png"
    assert make_schedule(kwargs.pop("name"), **kwargs).plot(path) == path
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


GOOD = dict(num_layers=4, window=W, max_distance=M)


@pytest.mark.parametrize("arg,call", [
    ("name", lambda: make_schedule("fib", **GOOD)),
    ("base", lambda: make_schedule("fixed", base="pow3", **GOOD)),
    ("num_layers", lambda: make_schedule("fixed", num_layers=0, window=W, max_distance=M)),
    ("num_layers", lambda: make_schedule("dense", num_layers=1.5)),
    ("window", lambda: make_schedule("fixed", num_layers=2, window=0, max_distance=M)),
    ("window", lambda: make_schedule("fixed", num_layers=2, max_distance=M)),
    ("max_distance", lambda: make_schedule("fixed", num_layers=2, window=W, max_distance=W - 1)),
    ("max_distance", lambda: make_schedule("fixed", num_layers=2, window=W)),
    ("alpha", lambda: make_schedule("fixed", alpha=0, **GOOD)),
    ("alpha", lambda: make_schedule("learned", alpha=-1.0, **GOOD)),
    ("alpha", lambda: make_schedule("fixed", alpha=float("nan"), **GOOD)),
    ("alpha_min", lambda: make_schedule("stagger", alpha_min=0.0, **GOOD)),
    ("alpha_max", lambda: make_schedule("coprime", alpha_min=1.0, alpha_max=0.9, **GOOD)),
    ("stride", lambda: make_schedule("coprime", stride=2, **GOOD)),
    ("stride", lambda: make_schedule("coprime", stride=1.0, **GOOD)),
    ("stride", lambda: make_schedule("stagger", stride=1, **GOOD)),
    ("alphas", lambda: make_schedule("custom", alphas=[1.0, 1.0], **GOOD)),
    ("alphas", lambda: make_schedule("custom", alphas=[1.0, 1.0, 0.0, 1.0], **GOOD)),
    ("alphas", lambda: make_schedule("custom", **GOOD)),
    ("alphas", lambda: make_schedule("fixed", alphas=[1.0] * 4, **GOOD)),
    # an argument the schedule does not use is an error, not silently ignored
    ("alpha", lambda: make_schedule("stagger", alpha=1.2, **GOOD)),
    ("alpha", lambda: make_schedule("custom", alpha=1.0, alphas=[1.0] * 4, **GOOD)),
    ("alpha_min", lambda: make_schedule("fixed", alpha_min=0.5, **GOOD)),
    ("alpha_max", lambda: make_schedule("learned", alpha_max=1.5, **GOOD)),
    ("window", lambda: make_schedule("dense", num_layers=2, window=8)),
    ("base", lambda: make_schedule("dense", num_layers=2, base="fibonacci")),
    ("base", lambda: make_schedule("custom", offsets=[[W]] * 4, base="fibonacci", **GOOD)),
    ("offsets", lambda: make_schedule("custom", alphas=[1.0] * 4, offsets=[[W]] * 4, **GOOD)),
    ("offsets", lambda: make_schedule("custom", offsets=[[W, 100]] * 3, **GOOD)),
    ("offsets", lambda: make_schedule("custom", offsets=[[W, W]] + [[]] * 3, **GOOD)),
    ("offsets", lambda: make_schedule("custom", offsets=[[100, 80]] + [[]] * 3, **GOOD)),
    ("offsets", lambda: make_schedule("custom", offsets=[[W - 1]] + [[]] * 3, **GOOD)),
    ("offsets", lambda: make_schedule("custom", offsets=[[100.0]] + [[]] * 3, **GOOD)),
    ("offsets", lambda: make_schedule("custom", offsets=[5, 6, 7, 8], **GOOD)),
    ("layer", lambda: make_schedule("fixed", **GOOD).offsets(4)),
    ("layer", lambda: make_schedule("fixed", **GOOD).alpha(-1)),
    ("alpha", lambda: make_schedule("learned", **GOOD).positions(0, alpha=0.0)),
    ("base", lambda: base_sequence("fib", 1.0, 100)),
    ("alpha", lambda: layer_offsets("fibonacci", 0.0, W, M)),
    ("window", lambda: layer_offsets("fibonacci", 1.0, 0, M)),
    ("max_distance", lambda: layer_offsets("fibonacci", 1.0, W, 10)),
    ("num_layers", lambda: coprime_stride(0)),
])
def test_bad_input(arg, call):
    with pytest.raises(ValueError, match=rf"(?<![\w]){arg}(?![\w])") as e:
        call()
    assert "must" in str(e.value) or "only" in str(e.value) or "needs" in str(e.value)


def test_schedule_is_frozen():
    s = make_schedule("fixed", **GOOD)
    assert isinstance(s, Schedule)
    with pytest.raises(Exception):
        s.window = 3


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        make_schedule("fixed", **GOOD).plot(tmp_path / "x.png")
