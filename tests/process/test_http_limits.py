"""Idle and half-sent connections are closed by the server; the concurrency limit answers
503 at once instead of letting held connections starve everyone."""

from __future__ import annotations

import socket
import time

import pytest

from api.redis_server import EmbeddedRedis
from models.artifact import read_manifest
from models.bundled_model import BUNDLED_MODEL_DIR
from tests.process.serving import requires_linux, served

READ_TIMEOUT = 0.5
SLACK = 3.0  # a loaded 2-core box schedules late; the bug held sockets for minutes

#: /health/ready of a fresh install: Redis up, the bundled model scoring
READY = {"status": "ok", "model_version": read_manifest(BUNDLED_MODEL_DIR).model_version}


def _closed_by_server(sock: socket.socket, deadline: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    sock.settimeout(deadline)
    received = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return received, time.monotonic()
        received += chunk


def _one_response(sock: socket.socket) -> bytes:
    """Read exactly one response (headers, then content-length bytes) off a keep-alive
    connection."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


@requires_linux()
@pytest.mark.slow
def test_idle_and_half_sent_connections_time_out_and_the_limit_sheds_load(
        embedded_redis: EmbeddedRedis) -> None:
    env = {"REDIS_URL": embedded_redis.url,
           "SENDWISE_HTTP_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
           "SENDWISE_HTTP_KEEPALIVE_TIMEOUT_SECONDS": "1",
           "SENDWISE_HTTP_LIMIT_CONCURRENCY": "4"}
    with served(env=env) as server:
        server.wait_workers(1)
        assert server.request("GET", "/health/live")[0] == 200  # the worker is serving

        opened = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", server.port))
        half = socket.create_connection(("127.0.0.1", server.port))
        half.sendall(b"POST /v1/decisions HTTP/1.1\r\nHost: sendwise\r\nContent-Ty")
        # two held connections, a third is a normal request: still served
        assert server.request("GET", "/health/ready") == (200, READY)
        # two more idle ones reach the limit of 4: the next request is shed, not queued
        more = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        shed_at = time.monotonic()
        status, _ = server.request("GET", "/health/live")
        assert status == 503
        assert time.monotonic() - shed_at < SLACK

        silent_reply, silent_closed = _closed_by_server(silent, READ_TIMEOUT + SLACK)
        half_reply, half_closed = _closed_by_server(half, READ_TIMEOUT + SLACK)
        for sock in more:
            _closed_by_server(sock, READ_TIMEOUT + SLACK)
        assert silent_reply == b""  # nothing was asked, nothing is answered
        assert half_reply.startswith(b"HTTP/1.1 408 ")
        for closed in (silent_closed, half_closed):
            assert READ_TIMEOUT * 0.8 <= closed - opened <= READ_TIMEOUT + SLACK
        print(f"\nsilent socket closed after {silent_closed - opened:.2f} s, half-sent after "
              f"{half_closed - opened:.2f} s (read timeout {READ_TIMEOUT} s)")

        # the held connections are gone: requests are served again
        assert server.request("GET", "/health/ready") == (200, READY)
        for sock in (silent, half, *more):
            sock.close()


@requires_linux()
@pytest.mark.slow
def test_idle_keep_alive_connection_is_closed_and_a_trickled_request_gets_a_deadline(
        embedded_redis: EmbeddedRedis) -> None:
    """After a response the keep-alive timeout applies; a later request that trickles in
    gets the read deadline from its first byte, however often bytes arrive. Headers past
    the size cap get a 431 at once."""
    env = {"REDIS_URL": embedded_redis.url,
           "SENDWISE_HTTP_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
           "SENDWISE_HTTP_KEEPALIVE_TIMEOUT_SECONDS": "1",
           "SENDWISE_HTTP_MAX_HEADER_BYTES": "4096"}
    with served(env=env) as server:
        server.wait_workers(1)
        with socket.create_connection(("127.0.0.1", server.port)) as fine:
            fine.sendall(b"GET /health/live HTTP/1.1\r\nHost: sendwise\r\nX-Pad: "
                         + b"a" * 2000 + b"\r\n\r\n")
            assert _one_response(fine).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", server.port)) as huge:
            huge.sendall(b"GET /health/live HTTP/1.1\r\nHost: sendwise\r\nX-Pad: "
                         + b"a" * 8000)
            reply, _ = _closed_by_server(huge, READ_TIMEOUT)  # well before the read deadline
            assert reply.startswith(b"HTTP/1.1 431 ")

        kept = socket.create_connection(("127.0.0.1", server.port))
        kept.sendall(b"GET /health/live HTTP/1.1\r\nHost: sendwise\r\n\r\n")
        assert _one_response(kept).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        reply, closed = _closed_by_server(kept, 1 + SLACK)
        assert reply == b""
        assert 0.8 <= closed - answered <= 1 + SLACK

        trickle = socket.create_connection(("127.0.0.1", server.port))
        trickle.sendall(b"GET /health/live HTTP/1.1\r\nHost: sendwise\r\n\r\n")
        assert _one_response(trickle).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        trickle.sendall(b"GET /health/live HTTP/1.1\r\nX-Slow: ")
        # a byte whenever the server has not closed yet, never letting the line go idle
        # for long; the deadline counts from the first byte all the same
        trickle.settimeout(0.1)
        received = b""
        while time.monotonic() - started < READ_TIMEOUT + SLACK:
            try:
                chunk = trickle.recv(4096)
            except TimeoutError:
                try:
                    trickle.sendall(b"a")
                except OSError:
                    break
                continue
            if not chunk:
                break
            received += chunk
        ended = time.monotonic()
        assert received.startswith(b"HTTP/1.1 408 ")
        assert READ_TIMEOUT * 0.8 <= ended - started <= READ_TIMEOUT + SLACK
        kept.close()
        trickle.close()


def test_serve_options_from_env() -> None:
    from api.serve import ServeOptions
    from api.settings import SettingsError

    assert ServeOptions.from_env({}) == ServeOptions(
        read_timeout_seconds=5.0, keepalive_timeout_seconds=5, limit_concurrency=1000,
        graceful_shutdown_seconds=10)
    options = ServeOptions.from_env({"SENDWISE_HTTP_READ_TIMEOUT_SECONDS": "0.5",
                                     "SENDWISE_HTTP_LIMIT_CONCURRENCY": "4"})
    assert (options.read_timeout_seconds, options.limit_concurrency) == (0.5, 4)
    for name, bad in [("SENDWISE_HTTP_READ_TIMEOUT_SECONDS", "0"),
                      ("SENDWISE_HTTP_KEEPALIVE_TIMEOUT_SECONDS", "0"),
                      ("SENDWISE_HTTP_LIMIT_CONCURRENCY", "many")]:
        with pytest.raises(SettingsError, match=name):
            ServeOptions.from_env({name: bad})
