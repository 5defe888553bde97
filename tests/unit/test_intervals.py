"""Interval arithmetic checked against a brute-force model: a set of integers on a small range."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from api.intervals import (
    Interval,
    clip,
    contains,
    first_at_or_after,
    intersect,
    normalize,
    subtract,
    union,
)

LO, HI = -5, 60

raw_interval = st.tuples(st.integers(LO, HI), st.integers(LO, HI))
raw_set = st.lists(raw_interval, max_size=8)


def points(ivs: list[Interval] | tuple[Interval, ...]) -> set[int]:
    return {t for s, e in ivs for t in range(s, e)}


def from_points(ps: set[int]) -> list[Interval]:
    return normalize((p, p + 1) for p in ps)


def assert_normalized(ivs: list[Interval]) -> None:
    for s, e in ivs:
        assert s < e
    for (_, e1), (s2, _) in pairwise(ivs):
        assert e1 < s2  # disjoint and not adjacent


@given(raw_set)
def test_normalize_same_points_and_canonical(raw: list[Interval]) -> None:
    out = normalize(raw)
    assert_normalized(out)
    assert points(out) == points(raw)
    assert out == from_points(points(raw))  # canonical: one representation per set


@given(raw_set, raw_set, raw_set)
def test_union(a: list[Interval], b: list[Interval], c: list[Interval]) -> None:
    out = union(a, b, c)
    assert_normalized(out)
    assert points(out) == points(a) | points(b) | points(c)


@given(raw_set, raw_set)
def test_intersect(a: list[Interval], b: list[Interval]) -> None:
    out = intersect(normalize(a), normalize(b))
    assert_normalized(out)
    assert points(out) == points(a) & points(b)


@given(raw_set, raw_set)
def test_subtract(a: list[Interval], b: list[Interval]) -> None:
    out = subtract(normalize(a), normalize(b))
    assert_normalized(out)
    assert points(out) == points(a) - points(b)


@given(raw_set, st.integers(LO - 2, HI + 2), st.integers(LO - 2, HI + 2))
def test_clip(a: list[Interval], lo: int, hi: int) -> None:
    out = clip(normalize(a), lo, hi)
    assert_normalized(out)
    assert points(out) == {p for p in points(a) if lo <= p < hi}


@given(raw_set, st.integers(LO - 2, HI + 2))
def test_contains_and_first_at_or_after(a: list[Interval], t: int) -> None:
    na = normalize(a)
    ps = points(a)
    assert contains(na, t) == (t in ps)
    later = [p for p in ps if p >= t]
    assert first_at_or_after(na, t) == (min(later) if later else None)


def test_examples() -> None:
    assert normalize([(5, 7), (1, 3), (3, 4), (9, 9)]) == [(1, 4), (5, 7)]
    assert subtract([(0, 10)], [(2, 3), (5, 6)]) == [(0, 2), (3, 5), (6, 10)]
    assert intersect([(0, 5), (8, 12)], [(3, 9)]) == [(3, 5), (8, 9)]
    assert first_at_or_after([(10, 20)], 20) is None
    assert first_at_or_after([(10, 20)], 3) == 10
    assert not contains([(10, 20)], 20)
    assert union() == []
