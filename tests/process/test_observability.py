"""``sendwise serve --workers 2`` end to end: every JSON log line of a request carries its
``X-Request-Id``, and one ``/metrics`` scrape, whichever worker answers it, covers both
workers (the supervisor prepares prometheus_client's multiprocess directory)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.process.serving import requires_linux, served

DECISIONS = 8


def _call(port: int, method: str, path: str, body: object = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a new connection each time
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@requires_linux()
@pytest.mark.slow
def test_request_ids_in_every_line_and_one_scrape_for_all_workers(tmp_path: Path) -> None:
    """Redis unreachable, so every decision is the fallback: no Redis needed, and each
    decision writes a warning and a decision line besides the access line."""
    env = {"REDIS_URL": f"unix://{tmp_path}/nothing-listens-here.sock",
           "SENDWISE_REDIS_TIMEOUT_SECONDS": "0.2", "SENDWISE_DATA_DIR": str(tmp_path / "data")}
    with served("--workers", "2", env=env) as server:
        assert server.stdout.wait(  # both workers' apps are up, so both count in /metrics
            lambda lines: sum('"app_started"' in line for line in lines) >= 2, 60), server.describe()
        ids = []
        for i in range(DECISIONS):
            status, headers, _ = _call(server.port, "POST", "/v1/decisions", {
                "message_id": f"m{i}", "user_id": "u1", "channels": ["email"]})
            assert status == 200
            ids.append(headers["x-request-id"])
            assert headers["x-sendwise-decision-id"].startswith("d_")
        for _ in range(4):
            status, _, text = _call(server.port, "GET", "/metrics")
            assert status == 200
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text.decode())
                       for s in family.samples}
            assert samples[("sendwise_workers", ())] == 2
            assert ("sendwise_event_loop_lag_seconds_count", ()) in samples  # both watched
            assert samples[("sendwise_fallback_decisions_total", ())] == DECISIONS
            assert samples[("sendwise_redis_errors_total", (("op", "decision"),))] == DECISIONS
        assert server.stdout.wait(
            lambda lines: sum('"event": "request"' in line and '"/v1/decisions"' in line
                              for line in lines) >= DECISIONS, 30), server.describe()
    records = [json.loads(line) for line in server.stdout.lines]
    for request_id in ids:
        events = sorted(r["event"] for r in records if r.get("request_id") == request_id)
        assert events == ["decision", "request", "store_unavailable"], (request_id, events)
    assert (tmp_path / "data" / "metrics").is_dir()
