"""One scrape of ``/metrics`` covers every worker: two real uvicorn workers, multiprocess mode.

The parent prepares the shared directory (``api.metrics.prepare_multiprocess_dir``, what
``sendwise serve`` does) and the workers inherit it. Each scrape is a new connection, so it
lands on either worker; every one of them must report the totals of both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import MULTIPROC_ENV, NO_MODEL, prepare_multiprocess_dir
from api.redis_server import EmbeddedRedis
from models.features import HEURISTIC_VERSION

pytestmark = pytest.mark.slow
DECISIONS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def two_workers(embedded_redis: EmbeddedRedis, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    redis.Redis.from_url(embedded_redis.url).flushdb()
    monkeypatch.setenv(MULTIPROC_ENV, "")  # restored after the test: this process stays single
    prepare_multiprocess_dir(tmp_path / "metrics")
    port = _free_port()
    env = {**os.environ, "REDIS_URL": embedded_redis.url, "SENDWISE_LOG_DECISIONS": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app_from_env", "--factory", "--workers", "2",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=Path.cwd())
    assert server.stderr is not None
    seen: list[str] = []
    for raw in server.stderr:  # readiness: both workers' own startup lines
        seen.append(raw.decode(errors="replace"))
        if sum("Application startup complete" in line for line in seen) == 2:
            break
    else:
        server.wait(timeout=10)
        pytest.fail(f"uvicorn did not start: {''.join(seen)}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)
        server.stderr.close()


def _scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with httpx.Client() as fresh:  # a new connection: any worker may answer
        text = fresh.get(f"{base}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_one_scrape_covers_every_worker(two_workers: str, tmp_path: Path) -> None:
    for _ in range(4):
        assert _scrape(two_workers)[("sendwise_workers", ())] == 2
    for i in range(DECISIONS):
        with httpx.Client() as fresh:
            r = fresh.post(f"{two_workers}/v1/decisions", json={
                "message_id": f"m{i}", "user_id": f"u{i}", "channels": ["email"],
                "category": "transactional"})
            assert r.status_code == 200 and r.json()["decision"] == "send"
    for _ in range(4):
        samples = _scrape(two_workers)
        assert samples[("sendwise_decisions_total",
                        (("channel", "email"), ("decision", "send")))] == DECISIONS
        assert samples[("sendwise_decision_seconds_count", ())] == DECISIONS
        assert samples[("sendwise_redis_seconds_count", (("op", "read"),))] == DECISIONS
        assert samples[("sendwise_redis_seconds_count", (("op", "commit"),))] == DECISIONS
        assert samples[("sendwise_policy_version", (("tenant", "default"),))] == 0
        # no model directory: the heuristic fallback scores every decision, and says so
        assert samples[("sendwise_model_info", (("model_version", HEURISTIC_VERSION),))] == 1
        assert samples[("sendwise_model_info", (("model_version", NO_MODEL),))] == 0
        assert samples[("sendwise_model_score_seconds_count", ())] == DECISIONS
        assert samples[("sendwise_fallback_decisions_total", ())] == 0
        assert samples[("sendwise_redis_errors_total", (("op", "decision"),))] == 0
    # both workers wrote their own files into the shared directory
    pids = {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "metrics").glob("gauge_livesum_*.db")}
    assert len(pids) == 2
