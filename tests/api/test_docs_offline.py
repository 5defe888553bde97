"""The interactive docs work with no internet: ReDoc and Swagger UI render every operation in
a real headless Chromium whose only reachable host is the app (see ``tests/browser.py``), and
the pages do not even try to reach another host (no CDN, no web fonts, no remote favicon)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis
from litestar.testing import TestClient
from playwright.sync_api import Browser

from api.app import create_app
from api.redis_server import EmbeddedRedis
from api.settings import Settings
from tests.browser import OfflinePage, launch_chromium

#: the summaries both pages must show (one per documented operation)
OPERATIONS = [
    "Decide send / defer / suppress", "Release a reservation", "Read a recipient's preferences",
    "Replace a recipient's preferences", "What was sent or reserved, when and why",
    "Report outcome events", "The tenant's policy document", "The closed set of reason codes",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def client(embedded_redis: EmbeddedRedis) -> Iterator[TestClient]:  # type: ignore[type-arg]
    redis.Redis.from_url(embedded_redis.url).flushdb()
    with TestClient(create_app(Settings(redis_url=embedded_redis.url, log_decisions=False))) as c:
        yield c


def test_docs_html_names_no_other_host(client: TestClient) -> None:  # type: ignore[type-arg]
    for path in ("/docs", "/docs/swagger"):
        page = client.get(path).text
        assert not re.findall(r"""(?:src|href)=["'](?:https?:)?//""", page), page
        assert "/docs/assets/" in page
    bundle = client.get("/docs/redoc.standalone.js")
    assert bundle.status_code == 200 and "cdn.redoc.ly" not in bundle.text
    assert bundle.headers["cache-control"] == "max-age=86400"


def test_redoc_renders_every_operation_offline(browser: Browser, client: TestClient) -> None:  # type: ignore[type-arg]
    page = OfflinePage(browser.new_page(), client)
    page.goto("/docs")
    page.page.wait_for_selector("text=Decide send / defer / suppress", timeout=20_000)
    body = page.page.inner_text("body")
    missing = [op for op in OPERATIONS if op not in body]
    assert not missing, missing
    # the error body is documented on the operation (ReDoc lists the response codes)
    page.page.click("text=Decide send / defer / suppress")
    page.page.wait_for_selector("text=409", timeout=10_000)
    assert page.blocked == [], f"the page tried to leave the app: {page.blocked}"
    assert page.failed == []


def test_swagger_ui_renders_every_operation_offline(browser: Browser, client: TestClient) -> None:  # type: ignore[type-arg]
    page = OfflinePage(browser.new_page(), client)
    page.goto("/docs/swagger")
    page.page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = page.page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.getAttribute('data-path'))")
    assert {"/v1/decisions", "/v1/decisions/{decision_id}/cancel", "/v1/events", "/v1/policy",
            "/v1/users/{user_id}/preferences", "/v1/users/{user_id}/timeline",
            "/health/ready", "/metrics"} <= set(paths), paths
    styles = page.page.eval_on_selector_all("link[rel=stylesheet]", "els => els.map(e => e.href)")
    assert styles and all(s.startswith("http://sendwise.test/docs/assets/") for s in styles)
    assert page.blocked == [], f"the page tried to leave the app: {page.blocked}"
    assert page.failed == []
