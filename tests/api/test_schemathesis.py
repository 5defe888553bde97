"""Schemathesis against the service's own OpenAPI document, through a real uvicorn server.

It generates valid and invalid requests for every documented operation (bounded examples,
a fixed seed so CI is reproducible; set ``SENDWISE_SCHEMATHESIS_SEED`` to explore others) and
checks that nothing answers 5xx and that every response conforms to the document: status
codes, content types, headers and bodies.

Two of its checks are left out, on purpose:

* ``positive_data_acceptance``: JSON Schema calls ``1.0`` an integer and the document cannot
  say that a ``channels`` map's keys are channel names, but the decoder is strict on purpose
  (``"priority": 1.0`` is refused rather than guessed at), so "schema-valid" data it
  generates is sometimes rightly refused;
* ``allow_header_conformance``: litestar's automatic ``OPTIONS`` answer lists only the first
  handler's methods for a path served by two handlers (GET and PUT of ``/v1/policy``);
  ``OPTIONS`` is no operation of this API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.redis_server import EmbeddedRedis
from tests.uvicorn_server import uvicorn_app

pytestmark = pytest.mark.slow

SEED = os.environ.get("SENDWISE_SCHEMATHESIS_SEED", "20261124")
MAX_EXAMPLES = os.environ.get("SENDWISE_SCHEMATHESIS_EXAMPLES", "30")


@pytest.fixture
def served(embedded_redis: EmbeddedRedis) -> Iterator[str]:
    """A real uvicorn worker on loopback, on the embedded Redis (flushed first)."""
    redis.Redis(unix_socket_path=embedded_redis.socket_path).flushdb()
    with uvicorn_app(embedded_redis.url) as base:
        yield base


def test_no_5xx_and_every_response_conforms_to_the_document(served: str, tmp_path: Path) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(cli), "run", f"{served}/docs/openapi.json",
         "--checks", "all",
         "--exclude-checks", "positive_data_acceptance,allow_header_conformance",
         "--max-examples", MAX_EXAMPLES, "--seed", SEED,
         "--generation-database", "none", "--request-timeout", "10", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    summary = result.stdout[result.stdout.find("SUMMARY"):] if "SUMMARY" in result.stdout else ""
    print(summary or result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "Tested:" in summary
