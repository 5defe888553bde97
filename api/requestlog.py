"""Request ids and the access log: one id per request, in every log line and in the answer.

A support engineer holding an ``X-Request-Id`` from a customer's HTTP client (or the
platform's own id, passed in the same header) must find every line that request wrote: the
access line, the decision line, a warning about Redis. So the middleware:

* takes the caller's ``X-Request-Id`` when it is a plausible id (1-128 characters of
  ``[A-Za-z0-9._:-]``, nothing that could forge a log line), otherwise makes one;
* binds it with ``structlog.contextvars`` for the duration of the request, so every
  structlog line of the request carries ``request_id`` (the logging configuration must
  include ``structlog.contextvars.merge_contextvars``, as structlog's default does);
* echoes it as the ``X-Request-Id`` response header;
* writes one ``request`` line when the response is done: method, route, status, duration.
  The route is the matched *template* (``/v1/users/{user_id:str}/preferences``), never the
  raw path: user ids are personal data and stay out of the logs (null when no route matched:
  an unknown path, or a method the path does not have).

It is plain ASGI (no per-request objects beyond one closure) because it runs on the decision
hot path. The access line is an ``info`` line, and the app turns it off below that level
(``SENDWISE_LOG_LEVEL=warning``; the benchmarks do, to measure the service rather than its
logging) by passing ``access_log=False``: the decision is made here rather than left to the
logging configuration, which a worker process may not have received.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING

import structlog
from litestar.enums import ScopeType

if TYPE_CHECKING:
    from collections.abc import Iterable

    from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")

log = structlog.get_logger("sendwise.access")


def incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The caller's request id, when it is one we can safely repeat in logs and headers."""
    for name, value in headers:
        if name == _REQUEST_ID_BYTES:
            return value.decode("ascii") if _VALID_ID.match(value) else None
    return None


class RequestLogMiddleware:
    """ASGI middleware: request id (bound, echoed) and one access-log line per request."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        request_id = incoming_request_id(scope["headers"]) or uuid.uuid4().hex
        header = (_REQUEST_ID_BYTES, request_id.encode("ascii"))
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                log.info("request", method=method, route=scope.get("path_template"),
                         status=status,
                         duration_ms=round((time.perf_counter() - started) * 1000, 3))
            structlog.contextvars.reset_contextvars(**tokens)
