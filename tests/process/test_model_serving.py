"""The loop closed against a real ``sendwise serve --workers 2`` (issue 8): a startup model
from ``--model`` scores decisions in every worker; events and decisions served ->
``sendwise export`` -> ``sendwise train`` -> ``POST /v1/models/reload`` answered by one
worker -> every worker answers with the new model_version.

Nothing sleeps: ``GET /v1/models`` names the worker that answered (``worker_pid``), and
each request is a new connection, so the loop below asks until every worker has answered
with the version it waits for (bounded by a deadline)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from api.redis_server import EmbeddedRedis
from models.scorer import Scorer
from tests.modelkit import write_tiny_model
from tests.process.serving import ROOT, Served, requires_linux, served

pytestmark = [pytest.mark.slow, requires_linux()]
NY = "America/New_York"


def until_every_worker(server: Served, pids: list[int], version: str,
                       timeout: float = 60.0) -> dict[int, dict[str, Any]]:
    """``GET /v1/models`` on new connections until each worker's latest answer names
    ``version``."""
    deadline = time.monotonic() + timeout
    latest: dict[int, dict[str, Any]] = {}
    while not (set(latest) >= set(pids)
               and all(latest[p]["model_version"] == version for p in pids)):
        assert time.monotonic() < deadline, (latest, server.describe())
        status, info = server.request("GET", "/v1/models")
        assert status == 200, info
        latest[info["worker_pid"]] = info
    return latest


def history(now: dt.datetime, users: int, days: int) -> list[dict[str, Any]]:
    """Each user active around their own New York hour on most of the last ``days`` days."""
    rng = np.random.default_rng(5)
    tz = dt.timezone(dt.timedelta(hours=-4))  # the hours only need to be consistent
    events = []
    for i in range(users):
        user, hour = f"c{i}", int(rng.integers(9, 20))
        midnight = now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        for day in range(1, days + 1):
            for _ in range(int(rng.integers(0, 3))):
                at = midnight - dt.timedelta(days=day) + dt.timedelta(
                    hours=hour + float(np.clip(rng.normal(0.5, 0.8), 0, 0.99)))
                events.append({"type": "activity", "user_id": user, "timezone": NY,
                               "at": at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return events


def sendwise(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sendwise", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_retrained_model_reaches_every_worker(embedded_redis: EmbeddedRedis,
                                                tmp_path: Path) -> None:
    redis.Redis.from_url(embedded_redis.url).flushdb()
    startup = write_tiny_model(tmp_path / "startup")
    startup_version = Scorer.load(startup).model_version
    env = {"REDIS_URL": embedded_redis.url, "SENDWISE_DATA_DIR": str(tmp_path / "data"),
           "SENDWISE_LOG_DECISIONS": "0",
           "SENDWISE_MODEL_REFRESH_SECONDS": "0.05"}
    with served("--workers", "2", "--model", str(startup), env=env) as server:
        pids = server.wait_workers(2)
        # the startup model, in every worker, scores decisions
        for info in until_every_worker(server, pids, startup_version).values():
            assert info["scope"] == "startup" and info["kind"] == "lightgbm:binary"
        status, first = server.request("POST", "/v1/decisions", {
            "message_id": "first", "user_id": "nobody", "channels": ["email"]})
        assert status == 200 and first["model_version"] == startup_version, first

        events = history(dt.datetime.now(dt.UTC), users=80, days=42)
        for start in range(0, len(events), 400):
            status, body = server.request("POST", "/v1/events",
                                          {"events": events[start:start + 400]})
            assert status == 202, body
        sendwise("export", "--tenant", "default", "--out", str(tmp_path / "export"),
                 "--redis-url", embedded_redis.url)
        sendwise("train", "--activity", str(tmp_path / "export" / "activity.parquet"),
                 "--out", str(tmp_path / "model"), "--valid-days", "7", "--tune-days", "5",
                 "--trees", "20", "--threads", "1", "--no-report", "--quiet")
        trained = Scorer.load(tmp_path / "model").model_version

        # a model this small need not pass its gate: served forced, as an operator would
        # after reading its report
        status, info = server.request("POST", "/v1/models/reload", {
            "directory": str(tmp_path / "model"), "force": True})
        assert status == 200, info
        assert info["model_version"] == trained and info["scope"] == "global"
        assert info["pointer"]["revision"] == 1
        for info in until_every_worker(server, pids, trained).values():
            assert info["scope"] == "global" and info["last_error"] is None
        for i in range(6):  # whichever worker answers
            status, answer = server.request("POST", "/v1/decisions", {
                "message_id": f"after{i}", "user_id": "c0", "channels": ["email"],
                "category": "promotional", "timezone": NY,
                "deadline": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=24)).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")})
            assert status == 200, answer
            assert answer["model_version"] == trained and answer["features_source"] == "profile"
        status, ready = server.request("GET", "/health/ready")
        assert status == 200 and ready["model_version"] == trained
