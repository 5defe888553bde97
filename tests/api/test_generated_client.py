"""A Python client generated from the served OpenAPI document drives the README's scenario.

``openapi-python-client`` (a maintained generator) builds a typed client from
``/docs/openapi.json`` with ``--fail-on-warning``: every schema and response of the document
must be something a generator understands. The client is then used exactly as an integrator
would, with ``raise_on_unexpected_status`` on, so any status the document does not list fails
the test, and every body must parse into the documented model: send, defer, suppress, cancel,
preferences, events, timeline, and the errors (400, 401, 404, 409, 413, 503) as ``ErrorBody``.
The generated client's HTTP goes through litestar's test client (an ``httpx.Client``), so the
requests reach the real app without a socket.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from litestar.testing import TestClient

from api.app import DECISION_ID_HEADER, REQUEST_BODIES, create_app
from api.auth import ApiKey, hash_key
from api.body import BodyDecoder
from api.clock import FixedClock
from api.openapi import REQUEST_EXAMPLES
from api.redis_server import EmbeddedRedis
from api.settings import Settings

pytestmark = pytest.mark.slow

#: the README's run: 15:37 UTC, 16:37 in Berlin
NOW = int(dt.datetime(2026, 11, 23, 15, 37, 35, tzinfo=dt.UTC).timestamp() * 1000)
PACKAGE = "sendwise_generated_client"


@pytest.fixture
def settings(embedded_redis: EmbeddedRedis) -> Settings:
    redis.Redis.from_url(embedded_redis.url).flushdb()
    key = ApiKey(sha256=hash_key("key-acme"), tenant="acme", role="admin")
    return Settings(redis_url=embedded_redis.url, log_decisions=False, api_keys={key.sha256: key})


@pytest.fixture
def served(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(create_app(settings, clock=FixedClock(NOW))) as client:
        yield client


@pytest.fixture
def generated(served: TestClient, tmp_path: Path) -> Iterator[ModuleType]:  # type: ignore[type-arg]
    """Generate the client from the document the app serves, and import it."""
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(served.get("/docs/openapi.json").json()))
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(tmp_path / PACKAGE), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _op(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.default.{name}")


def test_request_examples_are_valid_requests() -> None:
    """Every example in the document decodes with the strict decoder of its operation."""
    assert set(REQUEST_EXAMPLES) <= set(REQUEST_BODIES)
    for key, examples in REQUEST_EXAMPLES.items():
        decoder = BodyDecoder(REQUEST_BODIES[key])
        for example in examples.values():
            decoder.decode(json.dumps(example["value"]).encode())


def test_the_readme_scenario_through_a_generated_client(
        generated: ModuleType, served: TestClient, settings: Settings) -> None:  # type: ignore[type-arg]
    models = importlib.import_module(f"{PACKAGE}.models")
    served.headers["Authorization"] = "Bearer key-acme"
    client = generated.Client(base_url=str(served.base_url), raise_on_unexpected_status=True)
    client.set_httpx_client(served)
    decide = _op(generated, "v1_decisions_create_decision").sync_detailed
    cancel = _op(generated, "v1_decisions_decision_id_cancel_cancel_decision").sync_detailed

    # preferences: Berlin, at most 2 per rolling 24 h
    prefs = models.Preferences.from_dict(
        {"timezone": "Europe/Berlin", "frequency_limits": [{"limit": 2, "window_minutes": 1440}]})
    put = _op(generated, "v1_users_user_id_preferences_put_preferences").sync_detailed(
        "ada", client=client, body=prefs)
    assert put.status_code == 200 and put.parsed.preferences.timezone == "Europe/Berlin"
    got = _op(generated, "v1_users_user_id_preferences_get_preferences").sync(
        "ada", client=client)
    assert got.preferences.frequency_limits[0].limit == 2

    def message(mid: str, **extra: Any) -> Any:
        return models.DecisionRequest.from_dict(
            {"message_id": mid, "user_id": "ada", "channels": ["email", "push"],
             "campaign_id": "spring", **extra})

    answers = [decide(client=client, body=message(f"promo-{i}")) for i in (1, 2, 3)]
    assert [a.parsed.decision.value for a in answers] == ["send", "defer", "defer"]
    assert all(a.headers[DECISION_ID_HEADER] == a.parsed.decision_id for a in answers)
    assert all(a.headers["x-request-id"] for a in answers)
    spread = dt.timedelta(minutes=30)
    # promo-2: the default promotional spacing (30 min), spread over the 30 min after it
    spaced = answers[1].parsed
    assert [(r.code, r.rule) for r in spaced.reasons] == [("frequency_cap",
                                                          "promotional-spacing")]
    freed = dt.datetime(2026, 11, 23, 16, 7, 35, tzinfo=dt.UTC)
    assert spaced.reasons[0].until == freed and freed <= spaced.send_at < freed + spread
    # promo-3: Ada's own limit frees 24 h after promo-1
    deferred = answers[2].parsed
    assert [r.code for r in deferred.reasons] == ["frequency_cap", "user_frequency_limit"]
    until = dt.datetime(2026, 11, 24, 15, 37, 35, tzinfo=dt.UTC)
    assert deferred.reasons[1].until == until and until <= deferred.send_at < until + spread
    assert deferred.local_send_at.utcoffset() == dt.timedelta(hours=1)

    deadline = dt.datetime(2026, 11, 23, 17, 37, tzinfo=dt.UTC).isoformat()
    suppressed = decide(client=client, body=message("promo-4", channels=["email"],
                                                     deadline=deadline)).parsed
    assert suppressed.decision.value == "suppress" and suppressed.send_at is None
    assert [r.code for r in suppressed.reasons] == ["frequency_cap", "user_frequency_limit",
                                                    "deadline_exceeded"]

    # cancel releases the reservation, idempotently; an unknown id is a documented 404
    first = cancel(deferred.decision_id, client=client)
    assert first.status_code == 200 and first.parsed.released is True
    assert cancel(deferred.decision_id, client=client).parsed.released is False
    missing = cancel("d_bm9ib2R5.bm90aGluZw", client=client)
    assert missing.status_code == 404
    assert (missing.parsed.code, missing.parsed.field) == ("not_found", "decision_id")

    # the timeline says what was reserved and why
    timeline = _op(generated, "v1_users_user_id_timeline_get_timeline").sync("ada", client=client)
    assert [e.message_id for e in timeline.entries] == ["promo-1", "promo-2"]

    # events: an unsubscribe suppresses the channel for the next decision
    batch = models.EventBatch.from_dict({"events": [
        {"type": "unsubscribed", "user_id": "ada", "channel": "email",
         "at": dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC).isoformat()}]})
    accepted = _op(generated, "v1_events_post_events").sync_detailed(client=client, body=batch)
    assert accepted.status_code == 202 and accepted.parsed.opt_outs == 1
    after = decide(client=client, body=message("promo-5", channels=["email"])).parsed
    assert after.decision.value == "suppress"
    assert "no_consent" in [r.code for r in after.reasons]

    # errors parse as the documented ErrorBody
    bad = decide(client=client, body=message("promo-6", timezone="Mars/Olympus"))
    assert bad.status_code == 400
    assert (bad.parsed.code, bad.parsed.field) == ("invalid_timezone", "timezone")
    reuse = decide(client=client, body=message("promo-1", channels=["push"]))
    assert reuse.status_code == 409 and reuse.parsed.code == "idempotency_conflict"
    huge = decide(client=client, body=message("promo-7", tags=["x" * 60] * 2000))
    assert huge.status_code == 413 and huge.parsed.code == "payload_too_large"
    # the health endpoints and the reason codes parse too
    assert _op(generated, "health_ready_ready").sync(client=client).status.value == "ok"
    codes = _op(generated, "v1_reason_codes_reason_codes").sync(client=client)
    assert "user_frequency_limit" in {c.code for c in codes}

    # without a key: a documented 401 everywhere but the health probes
    del served.headers["Authorization"]
    anonymous = decide(client=client, body=message("promo-8"))
    assert anonymous.status_code == 401 and anonymous.parsed.code == "unauthorized"
    for name in ("v1_reason_codes_reason_codes", "metrics_metrics", "v1_policy_get_policy"):
        refused = _op(generated, name).sync_detailed(client=client)
        assert refused.status_code == 401 and refused.parsed.code == "unauthorized", name
    assert _op(generated, "health_live_live").sync(client=client).status.value == "ok"


def test_redis_down_through_a_generated_client(generated: ModuleType) -> None:
    """With Redis unreachable: decisions answer the documented fallback, reads a documented 503."""
    models = importlib.import_module(f"{PACKAGE}.models")
    down = Settings(redis_url="redis://127.0.0.1:1/0", log_decisions=False,
                    redis_timeout_seconds=0.2)
    with TestClient(create_app(down, clock=FixedClock(NOW))) as served:
        client = generated.Client(base_url=str(served.base_url), raise_on_unexpected_status=True)
        client.set_httpx_client(served)
        fallback = _op(generated, "v1_decisions_create_decision").sync(
            client=client, body=models.DecisionRequest.from_dict(
                {"message_id": "m1", "user_id": "ada", "channels": ["email"]}))
        assert fallback.decision.value == "defer"
        assert fallback.reasons[0].code == "policy_store_unavailable"
        unavailable = _op(generated, "v1_users_user_id_preferences_get_preferences").sync_detailed(
            "ada", client=client)
        assert unavailable.status_code == 503 and unavailable.parsed.code == "store_unavailable"
        ready = _op(generated, "health_ready_ready").sync_detailed(client=client)
        assert ready.status_code == 503 and ready.parsed.status.value == "redis_unreachable"
