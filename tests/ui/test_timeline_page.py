"""``GET /ui/users/{user_id}`` rendered by a real headless Chromium, network blocked.

The scenario a support engineer meets: Ada (Berlin, at most 2 messages per rolling 24 h, in
France so SMS follows the French pack) got two promotions and a third was deferred. The page
must show the three ledger entries on her local clock, why the third waits, the quiet hours
and the French SMS windows shaded, and when her cap frees; and it must ask nothing of any
other host. Checked on the DOM after render and on a screenshot's pixels.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from litestar.testing import TestClient
from PIL import Image
from playwright.sync_api import Browser

from api.app import create_app
from api.clock import FixedClock
from api.keys import user_keys
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from tests.browser import OfflinePage, launch_chromium

#: Wednesday 2026-06-10 14:37 UTC, 16:37 in Berlin (CEST): daytime, outside quiet hours
START = int(dt.datetime(2026, 6, 10, 14, 37, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3_600_000
Client = TestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def client(embedded_redis: EmbeddedRedis, clock: FixedClock) -> Iterator[Client]:
    redis.Redis.from_url(embedded_redis.url).flushdb()
    app = create_app(Settings(redis_url=embedded_redis.url, log_decisions=False), clock=clock)
    with TestClient(app) as c:
        yield c


def _decide(client: Client, message_id: str) -> dict[str, Any]:
    r = client.post("/v1/decisions", json={"message_id": message_id, "user_id": "ada",
                                          "channels": ["email", "push"], "campaign_id": "spring"})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


@pytest.fixture
def capped_ada(client: Client, clock: FixedClock) -> dict[str, Any]:
    """Two sends an hour apart, then a third deferred by her own limit; the page is opened
    an hour later. Returns the deferred answer. (Deferrals unspread: the page's instants
    are asserted to the minute.)"""
    r = client.put("/v1/policy", json={"send_time": {"spread_minutes": 0}})
    assert r.status_code == 200, r.text
    r = client.put("/v1/users/ada/preferences", json={
        "timezone": "Europe/Berlin", "country": "FR",
        "frequency_limits": [{"limit": 2, "window_minutes": 1440}]})
    assert r.status_code == 200, r.text
    assert _decide(client, "promo-1")["decision"] == "send"
    clock.advance(HOUR)
    assert _decide(client, "promo-2")["decision"] == "send"
    clock.advance(HOUR)
    third = _decide(client, "promo-3")
    assert third["decision"] == "defer"
    assert third["reasons"][0]["code"] == "user_frequency_limit"
    clock.advance(HOUR)
    return third


def test_timeline_of_a_capped_user(browser: Browser, client: Client,
                                   capped_ada: dict[str, Any]) -> None:
    page = OfflinePage(browser.new_page(viewport={"width": 1400, "height": 900}), client)
    page.goto("/ui/users/ada")
    p = page.page
    p.wait_for_selector("#timeline .row[data-channel='email'] .entry")

    assert p.get_attribute("#timeline", "data-timezone") == "Europe/Berlin"
    # the three ledger entries on the email lane, on her local clock
    entries = p.eval_on_selector_all(
        "#timeline .row[data-channel='email'] .entry",
        "els => els.map(e => [e.dataset.messageId, e.dataset.status, e.title])")
    assert [(m, s) for m, s, _ in entries] == [("promo-1", "sent"), ("promo-2", "sent"),
                                              ("promo-3", "scheduled")]
    # hover text: when (local) and why
    assert "Wed 10 Jun 16:37" in entries[0][2]
    assert "defer scheduled at Thu 11 Jun 16:37" in entries[2][2]
    assert "user_frequency_limit (preferences.frequency_limits[0] on email until" in entries[2][2]

    # quiet hours shaded on every lane, 21:00 to 08:00 Berlin time
    quiet = p.eval_on_selector_all(
        "#timeline .row[data-channel='push'] .shade[data-code='quiet_hours']",
        "els => els.map(e => e.title)")
    assert quiet and all("default-quiet-hours" in t for t in quiet)
    assert any("Wed 10 Jun 21:00 to Thu 11 Jun 08:00" in t for t in quiet), quiet
    # the French pack's SMS window (22:00-08:00 and Sundays) only on the SMS lane
    french = p.eval_on_selector_all(
        ".row[data-channel='sms'] .shade[data-code='jurisdiction_window']",
        "els => els.map(e => e.dataset.rule)")
    assert french and all(rule.startswith("fr-") for rule in french), french
    assert p.query_selector(".row[data-channel='email'] .shade[data-code='jurisdiction_window']") is None
    # WhatsApp needs an explicit opt-in: the lane says so
    assert p.get_attribute(".row[data-channel='whatsapp']", "data-blocked-by") == "opt_in_required"

    # "why not now?": a message asked now would wait for the cap, and the cap window ends
    # at the instant the probe names
    assert p.get_attribute("#probe", "data-decision") == "defer"
    caps = p.eval_on_selector_all(
        ".row[data-channel='email'] .cap",
        "els => els.map(e => [e.dataset.code, e.dataset.until, e.title])")
    assert caps and caps[0][0] == "user_frequency_limit"
    probe_at = dt.datetime.fromisoformat(p.get_attribute("#probe", "data-send-at") or "")
    assert dt.datetime.fromisoformat(caps[0][1]) <= probe_at
    assert "frees at" in caps[0][2]

    # click an entry: its row in the ledger table is the target, with its reasons
    p.click(".row[data-channel='email'] .entry[data-message-id='promo-3']")
    p.wait_for_function("() => location.hash.startsWith('#entry-')")
    target = p.eval_on_selector("tr:target", "e => [e.dataset.messageId, e.innerText]")
    assert target[0] == "promo-3"
    assert "user_frequency_limit" in target[1] and "Thu 11 Jun 16:37" in target[1]

    # the pixels: the cap bar, the quiet-hours shading and a sent mark are really drawn
    shot = Image.open(io.BytesIO(p.locator("#timeline").screenshot())).convert("RGB")
    colours = {colour for _, colour in shot.getcolors(maxcolors=1 << 20) or []}
    assert (192, 57, 43) in colours  # cap bar and "now" line (#c0392b)
    assert (46, 157, 87) in colours  # a sent entry (#2e9d57)
    assert any(b > r + 20 and b > 200 and r < 230 for r, _, b in colours)  # quiet-hours blue tint
    assert page.blocked == [] and page.failed == []

    # the page's dry-run probe is not a decision: metrics count the three real ones only
    metrics = client.get("/metrics").text
    assert 'sendwise_decision_reasons_total{decision="defer",reason="user_frequency_limit"} 1.0' in metrics
    assert 'sendwise_decisions_total{channel="email",decision="send"} 2.0' in metrics
    assert "sendwise_decision_seconds_count 3.0" in metrics


def test_timeline_of_an_unknown_user_and_bad_parameters(browser: Browser, client: Client) -> None:
    # users without history explore too: this probe's message id must not
    assert client.put("/v1/policy", json={"send_time": {"exploration_rate": 0.0}}).status_code == 200
    page = OfflinePage(browser.new_page(), client)
    page.goto("/ui/users/nobody?channels=sms")
    p = page.page
    assert "no sends or reservations" in p.inner_text("#ledger")
    assert p.eval_on_selector_all(".row[data-channel]", "els => els.map(e => e.dataset.channel)") == ["sms"]
    assert p.get_attribute("#probe", "data-decision") == "send"
    r = client.get("/ui/users/ada?channels=fax")
    assert r.status_code == 400 and r.json()["field"] == "channels"
    r = client.get("/ui/users/ada?category=spam")
    assert r.status_code == 400 and r.json()["field"] == "category"


def test_an_error_is_a_page_in_a_browser_and_json_for_a_client(
        browser: Browser, client: Client, embedded_redis: EmbeddedRedis) -> None:
    """A support engineer opening the page of a recipient whose stored preferences this
    release cannot read (damaged, or a newer release's format) sees the 409 as a page: its
    code, what to do and the field; a bad parameter likewise. A client that does not ask
    for HTML keeps the JSON error body."""
    r = client.put("/v1/users/ada/preferences", json={"timezone": "Europe/Berlin"})
    assert r.status_code == 200, r.text
    redis.Redis.from_url(embedded_redis.url).hset(user_keys("default", "ada").prefs, "doc",
                                                  b"\x03later-format")
    page = OfflinePage(browser.new_page(), client)
    p = page.page
    page.goto("/ui/users/ada")
    assert (p.get_attribute("#error", "data-status"), p.get_attribute("#error", "data-code")) \
        == ("409", "preferences_unreadable")
    assert "PUT them again" in p.inner_text("#error-message")
    assert p.inner_text("#error-field") == "user_id"
    page.goto("/ui/users/ada?channels=fax")
    assert p.get_attribute("#error", "data-status") == "400"
    assert p.inner_text("#error-field") == "channels"
    assert not page.blocked and not page.failed
    r = client.get("/ui/users/ada")
    assert r.status_code == 409 and r.json()["code"] == "preferences_unreadable"
    r = client.get("/ui/users/ada", headers={"accept": "text/html"})
    assert (r.status_code, r.headers["content-type"]) == (409, "text/html; charset=utf-8")
