"""Pure arithmetic on sets of half-open time intervals ``[start, end)``.

Every rule the decision engine enforces (quiet hours, jurisdiction hours, blocked days, cap
windows) is expressed as a set of instants, and the allowed send instants are what remains after
union/subtract/intersect.  Representing those sets as sorted, disjoint, non-adjacent lists of
``(start, end)`` int epoch-millisecond pairs keeps every operation a linear merge: no floats, no
datetimes, no per-millisecond loops, so the hot path stays in the microsecond range.

Functions that take ``Sequence[Interval]`` expect *normalized* input (the output of any function
here is normalized); functions that take ``Iterable[Interval]`` accept anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[int, int]

__all__ = [
    "Interval",
    "clip",
    "contains",
    "first_at_or_after",
    "intersect",
    "normalize",
    "subtract",
    "union",
]


def normalize(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort, drop empty intervals and merge overlapping or touching ones.

    Adjacent intervals (``a.end == b.start``) are merged because, being half-open, they cover a
    contiguous range; keeping them apart would make equality of sets depend on how they were
    built.
    """
    items = sorted((s, e) for s, e in intervals if e > s)
    out: list[Interval] = []
    for s, e in items:
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def union(*sets: Iterable[Interval]) -> list[Interval]:
    """All instants in any of the sets."""
    return normalize(iv for s in sets for iv in s)


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Instants in both ``a`` and ``b`` (both normalized): a two-pointer merge."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        s = max(a[i][0], b[j][0])
        e = min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Instants in ``a`` but not in ``b`` (both normalized)."""
    out: list[Interval] = []
    j = 0
    nb = len(b)
    for s, e in a:
        cur = s
        # Skip removals that end before this interval starts; they cannot affect later ones
        # either because ``a`` is sorted.
        while j < nb and b[j][1] <= cur:
            j += 1
        k = j
        while k < nb and b[k][0] < e:
            bs, be = b[k]
            if bs > cur:
                out.append((cur, bs))
            cur = max(cur, be)
            if cur >= e:
                break
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def clip(a: Sequence[Interval], lo: int, hi: int) -> list[Interval]:
    """Restrict ``a`` to ``[lo, hi)``."""
    out: list[Interval] = []
    for s, e in a:
        if e <= lo:
            continue
        if s >= hi:
            break
        s2 = max(s, lo)
        e2 = min(e, hi)
        if s2 < e2:
            out.append((s2, e2))
    return out


def _index_after(a: Sequence[Interval], t: int) -> int:
    """Index of the first interval whose end is > t (binary search on ends)."""
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid][1] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


def contains(a: Sequence[Interval], t: int) -> bool:
    """Whether instant ``t`` lies in ``a`` (normalized); O(log n)."""
    i = _index_after(a, t)
    return i < len(a) and a[i][0] <= t


def first_at_or_after(a: Sequence[Interval], t: int) -> int | None:
    """Earliest instant ``>= t`` inside ``a`` (normalized), or None if there is none.

    This is how a deferral instant is found: the allowed set minus everything forbidden, then the
    first instant from "now" on.
    """
    i = _index_after(a, t)
    if i >= len(a):
        return None
    return max(a[i][0], t)
