"""The shard split behind the pacing bound (docs/pacing.md, "The bound"): the shares of a
limit differ by at most one and sum exactly to it, and no shard ever owns zero."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from api.pacing import shard_count, shard_of, share
from api.policy import ChannelPacing

limits = st.integers(1, 6_000_000)


@given(limit=limits, shards=st.integers(1, 64))
def test_shares_sum_to_the_limit(limit: int, shards: int) -> None:
    n = min(shards, limit)
    parts = [share(limit, n, i) for i in range(n)]
    assert sum(parts) == limit
    assert max(parts) - min(parts) <= 1 and min(parts) >= 1


@given(per_second=st.none() | limits, per_minute=st.none() | limits,
       unique=st.none() | limits, shards=st.integers(1, 64))
def test_every_shard_owns_a_share_of_every_limit(per_second: int | None,
                                                 per_minute: int | None, unique: int | None,
                                                 shards: int) -> None:
    paced = ChannelPacing(per_second=per_second, per_minute=per_minute,
                          unique_recipients_per_24h=unique)
    n = shard_count(paced, shards)
    assert 1 <= n <= shards
    for limit in (per_second, per_minute, unique):
        if limit is not None:
            assert all(share(limit, n, i) >= 1 for i in range(n))


@given(user=st.text(min_size=1, max_size=40), shards=st.integers(1, 64))
def test_a_recipient_always_maps_to_the_same_shard(user: str, shards: int) -> None:
    assert shard_of(user, shards) == shard_of(user, shards) < shards
