"""One scrape of ``/metrics`` covers every worker: two real uvicorn workers, multiprocess mode.

The parent prepares the shared directory (``api.metrics.prepare_multiprocess_dir``, what
``sendwise serve`` does) and the workers inherit it. Each scrape is a new connection, so it
lands on either worker; every one of them must report the totals of both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import MULTIPROC_ENV, NO_MODEL, prepare_multiprocess_dir
from api.redis_server import EmbeddedRedis
from models.artifact import read_manifest
from models.bundled_model import BUNDLED_MODEL_DIR
from models.features import HEURISTIC_VERSION
from tests.uvicorn_server import uvicorn_app

pytestmark = pytest.mark.slow
DECISIONS = 24
BUNDLED = read_manifest(BUNDLED_MODEL_DIR).model_version


@pytest.fixture
def two_workers(embedded_redis: EmbeddedRedis, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    redis.Redis.from_url(embedded_redis.url).flushdb()
    monkeypatch.setenv(MULTIPROC_ENV, "")  # restored after the test: this process stays single
    prepare_multiprocess_dir(tmp_path / "metrics")
    with uvicorn_app(embedded_redis.url, workers=2) as base:
        yield base


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
        # no SENDWISE_MODEL_DIR: the bundled model scores every decision, and says so
        assert samples[("sendwise_model_info", (("model_version", BUNDLED),))] == 1
        assert ("sendwise_model_info", (("model_version", HEURISTIC_VERSION),)) not in samples
        assert samples[("sendwise_model_info", (("model_version", NO_MODEL),))] == 0
        assert samples[("sendwise_model_score_seconds_count", ())] == DECISIONS
        assert samples[("sendwise_fallback_decisions_total", ())] == 0
        assert samples[("sendwise_redis_errors_total", (("op", "decision"),))] == 0
    # both workers wrote their own files into the shared directory
    pids = {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "metrics").glob("gauge_livesum_*.db")}
    assert len(pids) == 2
