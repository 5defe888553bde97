"""Headless Chromium for the browser tests (``tests/ui``, ``tests/api/test_docs_offline.py``).

Debian's ``chromium`` driven by playwright-python (``executable_path``): playwright's own
browser download is never used, so the tests need no network. One browser per test module
(a launch costs about a second). Without Chromium the tests skip with the command that
installs it; ``.ci/run`` installs it when it runs as root, so CI always runs them.

Pages are loaded from a made-up origin whose requests are answered by the app itself,
through litestar's test client, with every other request aborted and recorded: the network is
blocked for the page, and a test can assert that the page did not even try another host.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from litestar.testing import TestClient
    from playwright.sync_api import Browser, Page, Route

#: where the app appears to live, for the browser
ORIGIN = "http://sendwise.test"


def chromium_path() -> str | None:
    path = os.environ.get("SENDWISE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


def launch_chromium() -> Iterator[Browser]:
    """Yield a headless Chromium, or skip the module saying how to get one."""
    path = chromium_path()
    if path is None:
        pytest.skip("browser test: Chromium not found (install it with `apt-get install chromium` "
                    "as root, or point SENDWISE_CHROMIUM at a Chromium binary); .ci/run installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - playwright is a dev dependency
        pytest.skip("browser test: playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        try:
            yield browser
        finally:
            browser.close()


class OfflinePage:
    """A page whose only reachable host is the app (through ``client``)."""

    def __init__(self, page: Page, client: TestClient) -> None:  # type: ignore[type-arg]
        self.page = page
        self.client = client
        self.blocked: list[str] = []
        self.failed: list[str] = []
        page.route("**/*", self._route)
        page.on("requestfailed", lambda request: self.failed.append(request.url))

    def _route(self, route: Route) -> None:
        url = route.request.url
        if not url.startswith(ORIGIN + "/"):
            self.blocked.append(url)
            route.abort("internetdisconnected")
            return
        answer = self.client.request(route.request.method, url[len(ORIGIN):],
                                     headers={k: v for k, v in route.request.headers.items()
                                              if k.lower() not in ("host", "accept-encoding")})
        route.fulfill(status=answer.status_code, body=answer.content,
                      headers={k: v for k, v in answer.headers.items()
                               if k.lower() not in ("content-length", "content-encoding")})

    def goto(self, path: str) -> None:
        self.page.goto(ORIGIN + path)
