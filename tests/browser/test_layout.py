"""How the dashboard looks and copes: screenshots, narrow screens, dark mode, 500 jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from pubsub import JobStatus, Update
from tests.browser.conftest import Api, publish_to_broker
from tests.hub import ThreadHub

pytestmark = pytest.mark.browser

MANY_JOBS = 500


def publish_showcase(api: Api) -> None:
    """One job in each state the dashboard distinguishes, oldest first."""
    api.create("video-77aa", pipeline="video")
    for stage in ("downloading", "transcribing", "uploading_clips"):
        api.publish("video-77aa", status="running", stage=stage)
    api.publish("video-77aa", status="completed", message="5 clips posted")

    api.create("pdf-report-2", pipeline="pdf")
    api.publish("pdf-report-2", status="running", stage="extract", message="Page 3 of 40")
    api.publish("pdf-report-2", status="cancelled", message="Cancelled by user")

    api.create("summary-podcast-3", pipeline="summary")
    api.publish("summary-podcast-3", status="running", stage="transcript")
    api.publish(
        "summary-podcast-3",
        status="failed",
        error="Chunk 5 (pages 101-125) failed: Document AI timeout",
    )

    api.create("pdf-contract-7", pipeline="pdf")
    api.publish("pdf-contract-7", status="running", stage="process", message="Section 4 of 9")
    api.publish(
        "pdf-contract-7",
        status="retrying",
        attempt=2,
        max_attempts=3,
        message="Retrying after a timeout",
    )

    api.create("ocr-invoices-12", pipeline="ocr")
    api.publish("ocr-invoices-12", status="running", stage="chunks", chunks={"total": 17})
    api.publish(
        "ocr-invoices-12",
        message="Processing chunk 12/17",
        chunks={
            "completed": 10,
            "failed": 1,
            "current": {"index": 11, "page_start": 276, "page_end": 300},
        },
    )

    api.create("video-8c1f", pipeline="video")
    api.publish(
        "video-8c1f",
        status="running",
        stage="transcribing",
        stage_progress=0.4,
        message="Transcribing 2/5",
    )
    api.create("video-9d0e", pipeline="video")


def test_dashboard_screenshots_in_every_state_width_and_scheme(
    page: Page, hub: ThreadHub, api: Api, artifacts: Path
) -> None:
    publish_showcase(api)
    page.goto(hub.url)
    expect(page.locator("#jobs .job")).to_have_count(7)
    expect(page.locator('#jobs .job[data-job-id="video-77aa"] .badge')).to_have_text("completed")
    expect(page.locator('#jobs .job[data-job-id="ocr-invoices-12"] .chunks')).to_have_text(
        "10/17, 1 failed"
    )
    expect(page.locator("#connection")).to_have_attribute("data-mode", "live")
    page.screenshot(path=artifacts / "dashboard.png", full_page=True)

    # 360 px: everything still fits, nothing scrolls sideways.
    page.set_viewport_size({"width": 360, "height": 780})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 360px screen"
    page.screenshot(path=artifacts / "dashboard-360.png", full_page=True)

    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 1280, "height": 800})
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(246, 247, 249)", "dark mode kept the light background"
    page.screenshot(path=artifacts / "dashboard-dark.png", full_page=True)

    page.emulate_media(color_scheme="light")
    page.goto(f"{hub.url}/#/jobs/ocr-invoices-12")
    expect(page.locator("#event-log li")).to_have_count(3)
    page.screenshot(path=artifacts / "job-view.png", full_page=True)


def test_dashboard_keeps_up_with_500_jobs_updating_at_once(
    page: Page, hub: ThreadHub, redis_url: str
) -> None:
    ids = [f"bulk-{n:03d}" for n in range(MANY_JOBS)]
    publish_to_broker(
        redis_url, *((job_id, Update(status=JobStatus.RUNNING, progress=1)) for job_id in ids)
    )
    page.goto(hub.url)
    expect(page.locator("#jobs .job")).to_have_count(MANY_JOBS, timeout=20_000)
    expect(page.locator("#job-count")).to_have_text(f"({MANY_JOBS})")

    # What the page does to the DOM during the burst, counted rather than timed (a
    # loaded machine makes any time limit flaky): rows updated in place, at most once
    # per row and frame, never the list rebuilt per event.
    page.evaluate(
        """() => {
            window.work = { rowsAdded: 0, barChanges: 0 };
            new MutationObserver((records) => {
                for (const record of records) {
                    if (record.type === 'attributes') window.work.barChanges += 1;
                    else if (record.target.id === 'jobs') {
                        window.work.rowsAdded += record.addedNodes.length;
                    }
                }
            }).observe(document.getElementById('jobs'), {
                subtree: true, childList: true,
                attributes: true, attributeFilter: ['aria-valuenow'],
            });
        }"""
    )
    burst = [(job_id, Update(progress=percent)) for percent in (40, 99) for job_id in ids]
    publish_to_broker(redis_url, *burst)
    expect(page.locator('#jobs [aria-valuenow="99"]')).to_have_count(MANY_JOBS, timeout=20_000)
    work: dict[str, int] = page.evaluate("window.work")
    assert work["rowsAdded"] == 0, f"rows were rebuilt instead of updated: {work}"
    # Each row's bar moves to 40 and then 99, or straight to 99 when both arrive in one
    # frame: never more than the events it got.
    assert MANY_JOBS <= work["barChanges"] <= len(burst), work
