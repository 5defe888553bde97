"""How the kept connection's router hands replies to the calls that wait for them
(``api/redis_client.py`` ``_ReplyRouter``), fed bytes as a transport would: in order, across
any split of the stream, each error on its own call, and anything it cannot trust (garbage,
input nobody asked for, the server's close, a late reply) failing every call still waiting
and aborting the connection."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.redis_client import _NotExecutedError, _ReplyRouter


class _Inner:
    """redis-py's stream protocol, as far as the router talks to it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class _Transport:
    def __init__(self) -> None:
        self.protocol: Any = _Inner()
        self.aborted = False

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class _Writer:
    def __init__(self) -> None:
        self.transport = _Transport()


class _Encoder:
    decode_responses = False


class _Conn:
    def __init__(self, timeout: float | None = 5.0) -> None:
        self._writer = _Writer()
        self._parser = BaseParser
        self.encoder = _Encoder()
        self.socket_timeout = timeout

    def _host_error(self) -> str:
        return "fake:6379"


def _router(not_run: tuple[type[Exception], ...] = (),
            timeout: float | None = 5.0) -> tuple[_ReplyRouter, _Transport]:
    conn = _Conn(timeout)
    return _ReplyRouter(conn, not_run), conn._writer.transport  # type: ignore[arg-type]


def _batch(n: int) -> list[tuple[tuple[Any, ...], asyncio.Future[Any]]]:
    loop = asyncio.get_running_loop()
    return [(("PING",), loop.create_future()) for _ in range(n)]


REPLIES = b"+OK\r\n:42\r\n$5\r\nhello\r\n*2\r\n:1\r\n$-1\r\n-ERR boom\r\n:7\r\n"
EXPECTED = [b"OK", 42, b"hello", [1, None], "boom", 7]


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(REPLIES) - 1), max_size=8))
def test_replies_reach_their_calls_in_order_however_the_stream_is_split(cuts: list[int]) -> None:
    async def run() -> None:
        router, transport = _router()
        assert transport.protocol is router  # installed as the transport's protocol
        first, second = _batch(4), _batch(2)
        router.expect(first)
        router.expect(second)  # a second batch written before the first is answered
        edges = [0, *sorted(set(cuts)), len(REPLIES)]
        for start, end in itertools.pairwise(edges):
            router.data_received(REPLIES[start:end])
        futures = [future for _, future in first + second]
        got = [str(f.exception()) if f.exception() else f.result() for f in futures]
        assert got == EXPECTED
        assert isinstance(futures[4].exception(), ResponseError)
        assert not router.busy and not router.broken and not transport.aborted

    asyncio.run(run())


async def test_a_reply_the_node_did_not_run_is_its_call_alone_and_the_rest_carry_on() -> None:
    router, _ = _router(not_run=(MovedError, NoScriptError))
    batch = _batch(3)
    router.expect(batch)
    router.data_received(b":1\r\n-MOVED 3999 127.0.0.1:6381\r\n-NOSCRIPT No matching script\r\n")
    assert batch[0][1].result() == 1
    assert isinstance(batch[1][1].exception(), _NotExecutedError)
    assert isinstance(batch[2][1].exception(), _NotExecutedError)
    assert not router.broken


async def test_a_cancelled_call_has_its_reply_read_and_dropped() -> None:
    router, _ = _router()
    batch = _batch(3)
    router.expect(batch)
    batch[1][1].cancel()
    router.data_received(b":1\r\n:2\r\n:3\r\n")
    assert [batch[0][1].result(), batch[2][1].result()] == [1, 3]


@pytest.mark.parametrize("stream", [b":1\r\n?garbage\r\n", b":1\r\n:2\r\n:3\r\n:4\r\n"],
                         ids=["unreadable", "more replies than calls"])
async def test_input_it_cannot_trust_fails_every_call_waiting_and_aborts(stream: bytes) -> None:
    router, transport = _router()
    batch = _batch(3)
    router.expect(batch)
    router.data_received(stream)
    assert batch[0][1].result() == 1
    if stream.count(b"\r\n") > 3:  # every call answered, then one reply too many
        assert [f.result() for _, f in batch] == [1, 2, 3]
    else:
        assert all(isinstance(f.exception(), RedisConnectionError) for _, f in batch[1:])
    assert router.broken and transport.aborted


async def test_input_on_an_idle_connection_breaks_it_and_reaches_redis_py() -> None:
    router, transport = _router()
    router.data_received(b"-ERR closing\r\n")
    assert router.broken and transport.aborted and not router.usable()


async def test_the_server_closing_or_a_lost_connection_fails_the_calls_waiting() -> None:
    for close in ("eof", "lost"):
        router, transport = _router()
        inner = router._inner
        batch = _batch(2)
        router.expect(batch)
        router.data_received(b":1\r\n")
        if close == "eof":
            router.eof_received()
        else:
            router.connection_lost(ConnectionResetError())
            assert inner.lost and isinstance(inner.lost[0], ConnectionResetError)
        assert batch[0][1].result() == 1
        assert isinstance(batch[1][1].exception(), RedisConnectionError)
        assert router.broken and transport.aborted


async def test_a_reply_later_than_the_socket_timeout_fails_the_calls_waiting() -> None:
    router, transport = _router(timeout=0.01)
    batch = _batch(2)
    router.expect(batch)
    with pytest.raises(RedisTimeoutError, match="fake:6379"):
        await batch[1][1]
    assert isinstance(batch[0][1].exception(), RedisTimeoutError)
    assert router.broken and transport.aborted
    router.data_received(b":1\r\n:2\r\n")  # the late replies reach nobody


async def test_an_answered_batch_leaves_no_live_timer_behind() -> None:
    loop = asyncio.get_running_loop()
    router, _ = _router(timeout=30.0)
    batch = _batch(1)
    router.expect(batch)
    timers = [t for t in loop._scheduled if not t.cancelled()]  # type: ignore[attr-defined]
    router.data_received(b":1\r\n")
    assert batch[0][1].result() == 1
    assert timers and all(t.cancelled() for t in timers)
    assert not router.broken
