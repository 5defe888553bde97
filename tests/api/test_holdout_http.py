"""The ``holdout`` policy field over HTTP: a bad document is a 400 naming the field path
and changes nothing; a good one holds recipients out with the published reason code."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.holdout import HoldoutSettings, in_global_group
from api.settings import Settings

Client = AsyncTestClient  # type: ignore[type-arg]
HOLDOUT = {"salt": "2026-q2", "global_percent": 50.0, "campaigns": {"spring-sale": 10.0}}


@pytest.mark.parametrize(("holdout", "field"), [
    ({"global_percent": 5.0}, "holdout.salt"),
    ({"salt": "s", "global_percent": 101}, "holdout.global_percent"),
    ({"salt": "s", "campaigns": {"spring-sale": 150}}, "holdout.campaigns.spring-sale"),
    ({"salt": "s", "percent": 5}, "holdout.percent"),
])
async def test_invalid_holdout_is_a_400_naming_the_field(client: Client, holdout: dict[str, Any],
                                                         field: str) -> None:
    bad = await client.put("/v1/policy", json={"holdout": holdout})
    assert bad.status_code == 400, bad.text
    assert bad.json()["field"] == field
    assert (await client.get("/v1/policy")).json()["version"] == 0  # nothing stored


async def test_holdout_policy_round_trips_and_holds_out(client: Client,
                                                       redis_settings: Settings) -> None:
    ok = await client.put("/v1/policy", json={"quiet_hours": [], "holdout": HOLDOUT})
    assert ok.status_code == 200
    assert (await client.get("/v1/policy")).json()["holdout"] == HOLDOUT
    settings = HoldoutSettings(**HOLDOUT)  # type: ignore[arg-type]
    tenant = redis_settings.default_tenant
    held = next(f"u{i}" for i in range(100) if in_global_group(settings, tenant, f"u{i}"))
    r = await client.post("/v1/decisions", json={"message_id": "m1", "user_id": held,
                                                  "channels": ["email"]})
    assert r.status_code == 200
    assert r.json()["decision"] == "suppress"
    assert r.json()["reasons"] == [{"code": "holdout", "rule": "policy.holdout.global_percent"}]
    codes = {c["code"] for c in (await client.get("/v1/reason-codes")).json()}
    assert "holdout" in codes
