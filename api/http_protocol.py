"""uvicorn's httptools protocol with a deadline for receiving a request and a cap on its
header bytes.

uvicorn bounds only the idle time *between* requests (``timeout_keep_alive``); a connection
that never sends a byte, or sends half its headers and stops, is held until the client
goes away. Each such socket costs a file descriptor, and with the common limit of 1,024 a
thousand of them make the worker refuse everyone else. This subclass gives every request a
total read deadline, counted from the connection's opening (first request) or its first
byte (later keep-alive requests), and closes the connection when it passes. A deadline on
the whole request, not on the gap between bytes, is what stops a client that trickles one
byte every few seconds. Within that deadline the headers are also capped in size (uvicorn's
``h11_max_incomplete_event_size`` does that for h11 only; it sets none for httptools).
See docs/production.md for the values and the proxy in front.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

_BODY_408 = b"request not received in time"
_BODY_431 = b"request headers too large"
_RESPONSE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                 b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
                 + str(len(_BODY_431)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY_431)
_RESPONSE_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                 b"content-length: " + str(len(_BODY_408)).encode() + b"\r\nconnection: close\r\n\r\n"
                 + _BODY_408)


class ReadDeadlineHttpToolsProtocol(HttpToolsProtocol):
    """``read_timeout``: seconds a client has to deliver one complete request (headers and
    body). Past it the connection is closed; a client stuck inside its headers first gets a
    408 (one that sent nothing has no request to answer, and once the headers are complete
    the app owns the response, so a 408 could interleave with it).

    ``max_header_bytes``: bytes a request may send before its headers are complete; past
    it the client gets a 431 and the connection is closed.
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 read_timeout: float, max_header_bytes: int = 32 * 1024) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._read_timeout = read_timeout
        self._max_header_bytes = max_header_bytes
        #: bytes received since the current request's headers started (None: headers done)
        self._header_bytes: int | None = 0
        self._read_deadline: asyncio.TimerHandle | None = None
        #: a request's first byte arrived but its headers are not complete: the one state
        #: in which a 408 can be written without racing a response the app is writing
        self._in_headers = False

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self._read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        # still inside the headers after feeding everything received: they are too long
        if (self._header_bytes is not None and self._header_bytes > self._max_header_bytes
                and not self.transport.is_closing()):
            self._disarm()
            self.transport.write(_RESPONSE_431)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_bytes = 0  # the next request's headers start
        super().on_message_complete()

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self.transport.write(_RESPONSE_408)
        self.transport.close()

