"""The auto-pipeline's RESP packer (api/redis_client.py ``pack_commands``: hiredis' packer)
writes exactly the bytes redis-py's packer writes, for every argument type the store sends
and any other (which it hands to redis-py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from api.redis_client import pack_commands

args = st.one_of(st.binary(max_size=40), st.text(max_size=20), st.integers(-(2**80), 2**80),
                 st.floats(allow_nan=False, allow_infinity=False),
                 st.binary(max_size=10).map(memoryview))  # hiredis refuses it: redis-py packs it
commands = st.lists(st.tuples(st.just("EVALSHA"), st.text(min_size=1, max_size=40)).flatmap(
    lambda head: st.lists(args, max_size=8).map(lambda rest: (*head, *rest))), max_size=6)


@given(commands)
def test_packing_matches_redis_py(batch: list[tuple[object, ...]]) -> None:
    conn = Connection()
    assert b"".join(pack_commands(conn, batch)) == b"".join(conn.pack_commands(batch))


def test_a_type_neither_packer_takes_is_refused_as_before() -> None:
    with pytest.raises(DataError):
        pack_commands(Connection(), [("SET", "k", b"v"), ("SET", "k", True)])
