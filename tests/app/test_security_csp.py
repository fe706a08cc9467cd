"""The dashboard works under the hub's strict Content-Security-Policy (docs/api.md §6).

A real Chromium loads `/` from a live hub, with a job publishing, and must report no CSP
violation and no script error: an inline script or style, or a CDN, would show up here.
"""

from __future__ import annotations

import httpx
import pytest

from progress_hub.main import STATIC_DIR
from tests.browser.conftest import CHROMIUM, LAUNCH_ARGS
from tests.conftest import HubFactory

pytestmark = pytest.mark.browser

# Installed before any page script runs, so that no violation is missed.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


async def test_dashboard_runs_under_the_content_security_policy(start_hub: HubFactory) -> None:
    if not (STATIC_DIR / "index.html").is_file():
        pytest.skip("no dashboard in this tree (static/index.html)")
    playwright_api = pytest.importorskip("playwright.async_api")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does as root)")
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        await http.post("/api/jobs/csp/events", json={"status": "running", "progress": 10})
    async with playwright_api.async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=LAUNCH_ARGS
            )
        except playwright_api.Error as exc:
            pytest.skip(f"Chromium is not installed for Playwright: {exc.message[:80]}")
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.add_init_script(RECORD_VIOLATIONS)
            response = await page.goto(hub.url + "/", wait_until="load")
            assert response is not None and response.status == 200
            assert "script-src 'self'" in response.headers["content-security-policy"]
            # The page has run its scripts, opened its stream and rendered the job.
            # A locator, not wait_for_function: a string predicate is eval'd in the page,
            # which the very CSP under test forbids.
            await playwright_api.expect(page.locator("body")).to_contain_text("csp", timeout=10_000)
            violations = await page.evaluate("window.__cspViolations")
        finally:
            await browser.close()
    assert violations == []
    assert errors == []
