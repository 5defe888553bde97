"""``channel_selection`` on the wire: strict decoding and the published schema."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from api.redis_client import RedisClient
from tests.api.test_http import body

Client = AsyncTestClient  # type: ignore[type-arg]


async def test_an_unknown_channel_selection_is_a_400_naming_the_field(
        client: Client, redis_client: RedisClient) -> None:
    r = await client.post("/v1/decisions", json=body(channel_selection="fastest"))
    assert r.status_code == 400, r.text
    assert (r.json()["field"], r.json()["code"]) == ("channel_selection", "invalid_field")
    assert await redis_client.dbsize() == 0
    ok = await client.post("/v1/decisions", json=body(channels=["email", "sms"],
                                                      channel_selection="ordered"))
    assert ok.status_code == 200 and ok.json()["channel"] == "email"


async def test_openapi_documents_channel_selection_and_the_new_send_time_fields(
        client: Client) -> None:
    schemas = (await client.get("/docs/openapi.json")).json()["components"]["schemas"]
    field = schemas["DecisionRequest"]["properties"]["channel_selection"]
    assert field["enum"] == ["best", "ordered"] and field["default"] == "best"
    if "SendTimeSettings" in schemas:  # the policy body, when the document carries it
        props = schemas["SendTimeSettings"]["properties"]
        assert {"fatigue_cost", "min_expected_value"} <= set(props)
    codes = {c["code"] for c in (await client.get("/v1/reason-codes")).json()}
    assert "low_expected_value" in codes
