"""Browser fixtures: one headless Chromium per session, a fresh context per test.

Playwright drives Debian's Chromium (`/usr/bin/chromium`); `playwright install`
is never run. Tests skip only when that binary is missing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from pubsub import JobStore, Update, open_broker
from tests.conftest import HubFactory
from tests.hub import ThreadHub
from tests.threads import run_in_thread

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent / "artifacts"
REACT_FILES = {
    "react.js": HERE / "node_modules/react/umd/react.production.min.js",
    "react-dom.js": HERE / "node_modules/react-dom/umd/react-dom.production.min.js",
}
# Reconnect fast after a restart: the default 3 s hint would only slow the tests.
RETRY_MS = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run browser tests after all others.

    Playwright's sync API keeps its event loop marked as running on the main
    thread until the shared browser closes at session end; an async test after
    it could not start its own loop.
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium, shared by every browser test of the session."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _is_problem(message: ConsoleMessage) -> bool:
    # Chromium logs every refused or aborted request as a console error; the
    # tests cause those on purpose. CSP violations and script errors are bugs.
    text = message.text
    return message.type == "error" and "net::ERR_" not in text and "Failed to load" not in text


@pytest.fixture
def page(browser: Browser, start_hub: HubFactory) -> Iterator[Page]:
    """A page in a fresh context (own localStorage); fails on script errors and CSP violations.

    Depends on `start_hub` so the page closes its streams before any hub stops:
    a hub with streams open waits out its graceful-shutdown timeout.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    opened = context.new_page()
    problems: list[str] = []

    def on_page_error(error: Exception) -> None:
        problems.append(f"uncaught: {error}")

    def on_console(message: ConsoleMessage) -> None:
        if _is_problem(message):
            problems.append(message.text)

    opened.on("pageerror", on_page_error)
    opened.on("console", on_console)
    yield opened
    context.close()
    assert not problems, f"the page reported errors: {problems}"


class Api:
    """The hub's HTTP API as a pipeline and a reader use it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def create(self, job_id: str, **fields: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/api/jobs", json={"job_id": job_id, **fields})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def publish(self, job_id: str, **update: Any) -> int:
        response = httpx.post(f"{self.url}/api/jobs/{job_id}/events", json=update)
        assert response.status_code == 202, response.text
        seq: int = response.json()["seq"]
        return seq

    def history(self, job_id: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/jobs/{job_id}/history")
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


def publish_to_broker(broker_url: str, *updates: tuple[str, Update]) -> None:
    """Publish `(job_id, update)` pairs as a worker does, straight to the broker.

    Works while no hub runs, and is the quick way to publish hundreds of updates.
    """

    async def send() -> None:
        store = JobStore(open_broker(broker_url))
        try:
            for job_id, update in updates:
                await store.publish(job_id, update)
        finally:
            await store.broker.aclose()

    # Playwright's sync API keeps an event loop running on this thread, so the
    # async tracker gets a thread of its own.
    run_in_thread(lambda: asyncio.run(send()), timeout=10, what="publishing to the broker")


@pytest.fixture
def hub(start_hub: HubFactory) -> ThreadHub:
    """A hub whose streams ask browsers to come back quickly after a drop."""
    return start_hub(retry_ms=RETRY_MS)


@pytest.fixture
def api(hub: ThreadHub) -> Api:
    """The API of `hub`."""
    return Api(hub.url)


@pytest.fixture(scope="session")
def react_build() -> dict[str, Path]:
    """React 18 UMD files from the npm registry, installed into tests/browser/node_modules."""
    if not all(path.exists() for path in REACT_FILES.values()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install React for the hook test (apt-get install npm)")
        done = subprocess.run(
            [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm install failed:\n{done.stdout}\n{done.stderr}"
    return REACT_FILES


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
