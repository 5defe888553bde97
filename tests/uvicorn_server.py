"""A real uvicorn serving ``api.app:app_from_env`` on loopback, for tests that need real HTTP
(schemathesis, several workers) but not the ``sendwise serve`` supervisor (tests/process).

Readiness is uvicorn's own "Application startup complete" line from every worker, not a poll.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.process.serving import free_port


@contextmanager
def uvicorn_app(redis_url: str, *, workers: int = 1,
                env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Yields the base URL; stops the server (and its workers) on exit."""
    port = free_port()
    full_env = {**os.environ, "REDIS_URL": redis_url, "SENDWISE_LOG_DECISIONS": "0", **(env or {})}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app_from_env", "--factory",
         "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "info"],
        env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=Path.cwd())
    assert server.stderr is not None
    seen: list[str] = []
    try:
        for raw in server.stderr:
            seen.append(raw.decode(errors="replace"))
            if sum("Application startup complete" in line for line in seen) == workers:
                break
        else:
            server.wait(timeout=10)
            pytest.fail(f"uvicorn did not start: {''.join(seen)}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)
        server.stderr.close()
