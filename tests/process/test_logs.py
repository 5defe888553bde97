"""Logs are JSON lines in every worker, reason codes print as their value, and an internal
error logs its traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.process.serving import ROOT, requires_linux, served


@requires_linux()
@pytest.mark.slow
def test_two_worker_decision_logs_are_json_with_plain_reason_codes(tmp_path: Path) -> None:
    """Redis unreachable, so every decision is the fallback carrying a ReasonCode enum."""
    env = {"REDIS_URL": f"unix://{tmp_path}/nothing-listens-here.sock",
           "SENDWISE_REDIS_TIMEOUT_SECONDS": "0.2"}
    with served("--workers", "2", env=env) as server:
        workers = server.wait_workers(2)
        assert len(set(workers)) == 2
        for i in range(6):
            status, body = server.request("POST", "/v1/decisions", {
                "message_id": f"m{i}", "user_id": "u1", "channels": ["email"]})
            assert status == 200
            assert body["reasons"][0]["code"] == "policy_store_unavailable"
        assert server.stdout.wait(
            lambda lines: sum('"decision"' in line for line in lines) >= 6, 30), server.describe()
    records = [json.loads(line) for line in server.stdout.lines]  # every line is JSON
    decisions = [r for r in records if r["event"] == "decision"]
    assert len(decisions) == 6
    assert all(r["reasons"] == ["policy_store_unavailable"] for r in decisions)
    assert all(r["level"] == "info" and r["timestamp"].endswith("Z") for r in decisions)
    assert {r["pid"] for r in records if r["event"] == "worker_started"} == set(workers)


_PROVOKE = textwrap.dedent("""
    from litestar.testing import TestClient

    from api.app import create_app
    from api.engine import Engine
    from api.serve import configure_logging
    from api.settings import Settings

    async def broken(self, tenant, request):
        raise RuntimeError("boom in the engine")

    Engine.decide = broken
    configure_logging("info")
    app = create_app(Settings(redis_url="unix:///nonexistent.sock", log_decisions=False))
    with TestClient(app=app) as client:
        r = client.post("/v1/decisions",
                        json={"message_id": "m", "user_id": "u", "channels": ["email"]})
        assert r.status_code == 500 and r.json()["code"] == "internal_error", r.text
        assert "boom" not in r.text
""")


def test_internal_error_logs_its_traceback() -> None:
    """In a fresh interpreter: structlog's configuration is process-global and cached."""
    done = subprocess.run([sys.executable, "-c", _PROVOKE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    errors = [json.loads(line) for line in done.stdout.splitlines()
              if '"unhandled_error"' in line]
    assert len(errors) == 1, done.stdout
    assert errors[0]["level"] == "error"
    trace = errors[0]["exception"]
    assert trace.startswith("Traceback (most recent call last)")
    assert "RuntimeError: boom in the engine" in trace
    assert "in broken" in trace


def test_enums_log_as_their_values() -> None:
    from api.reasons import ReasonCode
    from api.serve import _plain_values

    event = {"reasons": [ReasonCode.QUIET_HOURS, "x"], "code": ReasonCode.NO_CONSENT, "n": 1}
    assert _plain_values(None, "info", event) == {
        "reasons": ["quiet_hours", "x"], "code": "no_consent", "n": 1}
    assert type(event["code"]) is str
