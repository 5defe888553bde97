"""Worker warm-up (api/warmup.py): the first-use caches are filled before the app serves,
nothing is written to Redis, and an unreachable Redis does not stop a worker starting.

Timings are not asserted (the box is shared); the caches whose cold fill made the first
decision of a fresh worker 20-40x slower than the tenth are (docs/benchmarks.md, "Stalls").
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.clock import FixedClock
from api.engine import Engine
from api.jurisdictions import _holiday_countries, holiday_dates, load_builtin_packs
from api.locale import ZONE_NAMES, is_subdivision, is_valid_zone, parse_phone
from api.localtime import _bucket
from api.redis_client import RedisClient, make_redis
from api.settings import Settings
from api.store import Store
from api.warmup import GC_GEN0_THRESHOLD, PHONES, WarmupReport, warm_up
from models.timeutil import zone
from tests.conftest import TEST_ID_KEY


@pytest.fixture
def cold() -> Iterator[None]:
    """Empty the lazily filled caches first; undo the warm-up's gc.freeze() after."""
    for cached in (holiday_dates, parse_phone, is_subdivision, _bucket, is_valid_zone, zone):
        cached.cache_clear()
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _expected_calendars() -> int:
    """Per pack that blocks public holidays: national + every subdivision, two years."""
    supported = _holiday_countries()
    countries = {p.country for p in load_builtin_packs() if p.blocked_public_holidays}
    return sum(1 + len(supported.get(c, ())) for c in countries) * 2


@pytest.mark.usefixtures("cold")
async def test_warm_up_fills_the_first_use_caches_before_serving(
        redis_client: RedisClient, redis_settings: Settings, clock: FixedClock) -> None:
    app = create_app(redis_settings, clock=clock, warm_up=True)
    async with AsyncTestClient(app=app) as client:
        report: WarmupReport = app.state.warmup
        assert report.error == ""
        assert report.probes >= 20  # every place x two categories ran the whole decision path
        assert report.phones == len(PHONES)
        assert holiday_dates.cache_info().currsize == _expected_calendars() == report.holiday_calendars
        assert is_subdivision.cache_info().currsize > 0
        assert parse_phone.cache_info().currsize == len(PHONES)
        assert _bucket.cache_info().currsize > 0  # zone offsets of the probes' zones
        assert report.zones == len(ZONE_NAMES) == zone.cache_info().currsize  # every zone loaded
        assert report.gc_frozen > 0 and gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        # the probes are dry runs: nothing was written for the warm-up tenant
        assert await redis_client.keys("*") == []
        # nor counted: the metrics operators alert on start at zero
        registry = app.state.engine.metrics.registry
        for name, labels in (("sendwise_redis_seconds_count", {"op": "read"}),
                             ("sendwise_redis_seconds_count", {"op": "commit"}),
                             ("sendwise_model_score_seconds_count", {})):
            assert not registry.get_sample_value(name, labels), name
        # and the app serves normally afterwards
        resp = await client.post("/v1/decisions", json={
            "message_id": "m1", "user_id": "u1", "channels": ["sms", "email"], "country": "US",
            "region": "FL", "timezone": "America/New_York"})
        assert resp.status_code == 200, resp.text
        assert registry.get_sample_value("sendwise_redis_seconds_count", {"op": "read"}) == 1
        assert registry.get_sample_value("sendwise_model_score_seconds_count", {}) == 1


def test_unwarmed_app_is_the_default() -> None:
    """Tests and embedders opt in: only the served worker factory warms up."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1", id_key=TEST_ID_KEY))
    assert not hasattr(app.state, "warmup")


@pytest.mark.usefixtures("cold")
async def test_unreachable_redis_still_warms_the_offline_parts(clock: FixedClock) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1", log_decisions=False,
                        redis_timeout_seconds=0.5, id_key=TEST_ID_KEY)
    client = make_redis(settings)
    try:
        engine = Engine(Store(client), settings, clock)
        report = await warm_up(engine, freeze_gc=False)
    finally:
        await client.aclose()
    assert report.error.startswith("Redis unreachable")
    assert report.probes == 0
    assert report.holiday_calendars == _expected_calendars()
    assert parse_phone.cache_info().currsize == len(PHONES)
    assert report.gc_frozen == 0
    assert gc.get_threshold()[0] != GC_GEN0_THRESHOLD
