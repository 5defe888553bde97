"""How the auto-pipeline's reading task treats a batch ``_flush`` already wrote
(``api/redis_client.py`` ``_drained``): a write the transport could not finish in the socket
timeout fails the batch, never to be sent again (part of it may have reached Redis); a
broken connection means it did not leave, and may go once more on a fresh one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.redis_client import CommandNotSentError, _drained


class _Transport:
    def __init__(self, buffered: int, closing: bool) -> None:
        self.buffered, self.closing = buffered, closing

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Writer:
    def __init__(self, transport: _Transport, drain: Any) -> None:
        self.transport, self._drain, self.drains = transport, drain, 0

    async def drain(self) -> None:
        self.drains += 1
        await self._drain()


class _Conn:
    def __init__(self, writer: _Writer, socket_timeout: float) -> None:
        self._writer, self.socket_timeout = writer, socket_timeout


async def _forever() -> None:
    await asyncio.Event().wait()


async def _lost() -> None:
    raise ConnectionResetError("Connection lost")


async def test_a_write_the_kernel_took_whole_awaits_nothing() -> None:
    writer = _Writer(_Transport(buffered=0, closing=False), _forever)
    await _drained(_Conn(writer, 0.05))  # type: ignore[arg-type]
    assert writer.drains == 0


async def test_a_write_that_times_out_fails_the_batch_as_a_timeout() -> None:
    writer = _Writer(_Transport(buffered=70_000, closing=False), _forever)
    with pytest.raises(RedisTimeoutError) as raised:
        await _drained(_Conn(writer, 0.05))  # type: ignore[arg-type]
    assert not isinstance(raised.value, CommandNotSentError)  # never sent again


async def test_a_broken_connection_means_the_batch_did_not_leave() -> None:
    writer = _Writer(_Transport(buffered=0, closing=True), _lost)
    with pytest.raises(CommandNotSentError):
        await _drained(_Conn(writer, 0.05))  # type: ignore[arg-type]
    assert writer.drains == 1
