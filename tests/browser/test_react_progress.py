"""useProgress (static/react-progress.js) under a real React build from the npm registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import HERE, Api
from tests.hub import ThreadHub

pytestmark = pytest.mark.browser

# The harness lives at the hub's origin (so /react-progress.js is the hub's own
# file) but is served by the test; nothing of it is installed into static/.
HARNESS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>useProgress</title>
<script src="/__react__/react.js"></script>
<script src="/__react__/react-dom.js"></script>
<script type="module" src="/__react__/app.js"></script>
</head><body><div id="root"></div></body></html>
"""
# The hub's own policy, so the hook is shown to work under it.
CSP = "default-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'"


def serve_harness(page: Page, hub: ThreadHub, react_build: dict[str, Path]) -> None:
    files = {**react_build, "app.js": HERE / "react_app.js"}

    def fulfil(route: Route) -> None:
        name = route.request.url.split("/__react__/", 1)[1].split("?", 1)[0]
        headers = {"Content-Security-Policy": CSP}
        if name == "index.html":
            route.fulfill(body=HARNESS, content_type="text/html", headers=headers)
        else:
            route.fulfill(path=files[name], content_type="text/javascript", headers=headers)

    page.route(f"{hub.url}/__react__/**", fulfil)


def test_use_progress_renders_live_updates_until_the_end(
    page: Page, hub: ThreadHub, api: Api, react_build: dict[str, Path]
) -> None:
    serve_harness(page, hub, react_build)
    api.publish("react-1", status="running", progress=10)
    page.goto(f"{hub.url}/__react__/index.html?job=react-1")
    expect(page.locator("#mode")).to_have_text("live")
    expect(page.locator("#progress")).to_have_text("10")
    api.publish("react-1", progress=55.5)
    expect(page.locator("#progress")).to_have_text("55.5")
    api.publish("react-1", status="completed")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#progress")).to_have_text("100")
    expect(page.locator("#mode")).to_have_text("ended")


def test_use_progress_reports_an_unknown_job(
    page: Page, hub: ThreadHub, react_build: dict[str, Path]
) -> None:
    serve_harness(page, hub, react_build)
    page.goto(f"{hub.url}/__react__/index.html?job=missing")
    expect(page.locator("#error")).to_have_text("not_found")
    expect(page.locator("#mode")).to_have_text("ended")
