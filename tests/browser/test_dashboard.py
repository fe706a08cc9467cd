"""The dashboard in headless Chromium against a real hub and Redis (docs/dashboard.md)."""

from __future__ import annotations

from urllib.parse import urlparse

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from pubsub import Update, issue_token
from tests.browser.conftest import Api, publish_to_broker
from tests.conftest import HubFactory
from tests.hub import ThreadHub, run_hub

pytestmark = pytest.mark.browser


def row(page: Page, job_id: str) -> Locator:
    return page.locator(f'#jobs .job[data-job-id="{job_id}"]')


def logged_seqs(page: Page) -> list[int]:
    seqs: list[int] = page.locator("#event-log li").evaluate_all(
        "items => items.map((item) => Number(item.dataset.seq))"
    )
    return seqs


def expect_log_matches_history(page: Page, api: Api, job_id: str) -> None:
    """Every retained event is in the log once, in seq order: none lost, none twice."""
    history = [event["seq"] for event in api.history(job_id)]
    expect(page.locator("#event-log li")).to_have_count(len(history))
    assert logged_seqs(page) == history


def test_dashboard_follows_a_job_created_after_opening_through_its_stages_to_100(
    page: Page, hub: ThreadHub, api: Api
) -> None:
    page.goto(hub.url)
    expect(page.locator("#connection")).to_have_attribute("data-mode", "live")
    expect(page.locator("#empty")).to_be_visible()

    api.create("video-1", pipeline="video")
    job = row(page, "video-1")
    expect(job.locator(".badge")).to_have_text("queued")
    bar = job.get_by_role("progressbar")
    for stage, label, percent in [
        ("downloading", "Downloading video", "5"),
        ("transcribing", "Transcribing audio", "25"),
        ("analyzing", "Analyzing content", "50"),
        ("uploading_clips", "Uploading clips", "90"),
    ]:
        api.publish("video-1", status="running", stage=stage)
        expect(bar).to_have_attribute("aria-valuenow", percent)
        expect(job.locator(".stage")).to_have_text(label)
    api.publish("video-1", status="completed", message="All clips posted")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(job.locator(".percent")).to_have_text("100%")
    expect(job.locator(".badge")).to_have_text("completed")
    expect(job.locator(".message")).to_have_text("All clips posted")


def test_dashboard_shows_failure_text_retry_attempt_chunks_and_filters(
    page: Page, hub: ThreadHub, api: Api
) -> None:
    page.goto(hub.url)
    api.create("ocr-1", pipeline="ocr")
    api.publish("ocr-1", status="running", stage="chunks", chunks={"total": 17})
    api.publish("ocr-1", chunks={"completed": 10, "failed": 1})
    api.publish("pdf-2", status="retrying", attempt=2, max_attempts=3, message="Timed out")
    error = "Chunk 5 (pages 101-125) failed: Document AI timeout"
    api.publish("pdf-3", status="failed", error=error)

    expect(row(page, "ocr-1").locator(".chunks")).to_have_text("10/17, 1 failed")
    expect(row(page, "pdf-2").locator(".badge")).to_have_text("retrying, attempt 2/3")
    expect(row(page, "pdf-3").locator(".badge")).to_have_text("failed")
    expect(row(page, "pdf-3").locator(".job-error")).to_have_text(error)
    expect(row(page, "ocr-1").locator(".job-error")).to_be_hidden()

    # Newest first.
    ids = page.locator("#jobs .job").evaluate_all("rows => rows.map((r) => r.dataset.jobId)")
    assert ids == ["pdf-3", "pdf-2", "ocr-1"]

    # Filter by keyboard: focus the filter group and walk it with the arrow keys.
    page.locator('#filters input[value="failed"]').focus()
    page.keyboard.press("Space")
    expect(page.locator("#jobs .job:visible")).to_have_count(1)
    expect(row(page, "pdf-3")).to_be_visible()
    expect(page.locator('#filters [data-count="active"]')).to_have_text("2")
    page.keyboard.press("ArrowLeft")  # cancelled
    expect(page.locator("#empty")).to_be_visible()
    page.locator('#filters input[value=""]').check()
    expect(page.locator("#jobs .job:visible")).to_have_count(3)


def test_dashboard_marks_a_silent_job_stalled(page: Page, start_hub: HubFactory) -> None:
    hub = start_hub(stall_after=0.5, retry_ms=300)
    Api(hub.url).publish("quiet-1", status="running", progress=40)
    page.goto(hub.url)
    expect(row(page, "quiet-1").locator(".badge")).to_have_text("stalled")
    expect(row(page, "quiet-1")).to_have_attribute("data-tone", "stalled")


def test_job_view_replays_history_then_follows_live_and_links_the_result(
    page: Page, hub: ThreadHub, api: Api
) -> None:
    for percent in (10, 20, 30):
        api.publish("pdf-9", status="running", progress=percent, message=f"At {percent}")
    page.goto(hub.url)

    # Keyboard only: the row's link opens the job view, which takes focus.
    row(page, "pdf-9").locator(".job-link").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{hub.url}/#/jobs/pdf-9")
    expect(page.locator("#job-title")).to_be_focused()
    expect(page.locator("#job-title")).to_have_text("pdf-9")
    expect(page.locator("#event-log li")).to_have_count(3)

    api.publish("pdf-9", progress=70, message="At 70")
    api.publish("pdf-9", status="completed", result={"pages": 12})
    detail = page.locator("#job-detail .job")
    expect(detail.locator(".badge")).to_have_text("completed")
    expect(detail.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#event-log li").nth(3)).to_contain_text("At 70")
    expect_log_matches_history(page, api, "pdf-9")
    link = page.get_by_role("link", name="Open the result")
    expect(link).to_have_attribute("href", "/api/jobs/pdf-9/result")

    page.get_by_role("link", name="← All jobs").click()
    expect(page.locator("#list-view")).to_be_visible()
    expect(row(page, "pdf-9").locator(".job-link")).to_be_focused()


def test_dashboard_reads_a_token_from_the_fragment_and_keeps_it(
    page: Page, start_hub: HubFactory
) -> None:
    hub = start_hub(subscriber_secret="s3cret", retry_ms=300)
    api = Api(hub.url)
    api.publish("secret-1", status="running", progress=30)
    api.publish("secret-1", status="completed", result="done")

    page.goto(hub.url)
    expect(page.locator("#list-notice")).to_contain_text("needs a subscriber token")

    token = issue_token("s3cret", ["*"], 60)
    page.goto(f"{hub.url}/#token={token}")
    page.reload()
    expect(row(page, "secret-1").locator(".badge")).to_have_text("completed")
    expect(page.locator("#connection")).to_have_attribute("data-mode", "live")
    row(page, "secret-1").locator(".job-link").click()
    expect(page).to_have_url(f"{hub.url}/#/jobs/secret-1?token={token}")
    expect(page.locator("#event-log li")).to_have_count(2)
    result = page.get_by_role("link", name="Open the result")
    expect(result).to_have_attribute("href", f"/api/jobs/secret-1/result?token={token}")


def test_job_view_of_an_unknown_job_says_so(page: Page, hub: ThreadHub) -> None:
    page.goto(f"{hub.url}/#/jobs/nobody")
    expect(page.locator("#job-missing")).to_have_text("Job nobody is unknown or has expired.")


def test_a_deleted_job_leaves_the_list_and_its_view_says_so(
    page: Page, hub: ThreadHub, api: Api
) -> None:
    api.publish("gone-1", status="running", progress=20)
    api.publish("kept-2", status="running", progress=20)
    page.goto(f"{hub.url}/#/jobs/gone-1")
    expect(page.locator("#job-detail .percent")).to_have_text("20%")
    assert httpx.delete(f"{hub.url}/api/jobs/gone-1").status_code == 204
    expect(page.locator("#job-missing")).to_have_text("Job gone-1 was deleted.")
    page.get_by_role("link", name="← All jobs").click()
    expect(row(page, "kept-2")).to_be_visible()
    expect(row(page, "gone-1")).to_have_count(0)


def test_hub_restart_shows_reconnecting_then_live_without_losing_or_repeating_updates(
    page: Page, hub: ThreadHub, api: Api, redis_url: str
) -> None:
    for step in range(1, 4):
        api.publish("job-r", status="running", progress=step * 10, message=f"Step {step}")
    page.goto(f"{hub.url}/#/jobs/job-r")
    indicator = page.locator("#connection")
    expect(indicator).to_have_attribute("data-mode", "live")
    expect(page.locator("#event-log li")).to_have_count(3)

    port = urlparse(hub.url).port
    assert port is not None
    hub.stop()
    expect(indicator).to_have_attribute("data-mode", "reconnecting")
    # A worker keeps publishing while the hub is down: the browser must get it on return.
    publish_to_broker(redis_url, ("job-r", Update(progress=45, message="While the hub was down")))

    with run_hub(hub.settings, port=port):
        expect(indicator).to_have_attribute("data-mode", "live", timeout=20_000)
        api.publish("job-r", progress=80, message="Step 5")
        api.publish("job-r", status="completed")
        expect(page.locator("#job-detail .badge")).to_have_text("completed")
        expect(page.locator("#event-log")).to_contain_text("While the hub was down")
        expect_log_matches_history(page, api, "job-r")


def test_blocked_streams_fall_back_to_polling_and_still_reach_the_end(
    page: Page, hub: ThreadHub, api: Api
) -> None:
    # What a proxy that cannot pass SSE looks like to the page.
    page.route("**/events*", lambda route: route.abort())
    page.goto(hub.url)
    indicator = page.locator("#connection")
    expect(indicator).to_have_attribute("data-mode", "polling")

    api.publish("job-p", status="running", progress=10)
    expect(row(page, "job-p").locator(".percent")).to_have_text("10%")
    api.publish("job-p", progress=60)
    api.publish("job-p", status="completed")
    expect(row(page, "job-p").locator(".badge")).to_have_text("completed")

    # The job view polls with If-None-Match and fills the log from history.
    api.publish("job-q", status="running", progress=5)
    page.goto(f"{hub.url}/#/jobs/job-q")
    expect(page.locator("#job-detail .percent")).to_have_text("5%")
    for percent in (20, 40, 60, 80):
        api.publish("job-q", progress=percent)
    api.publish("job-q", status="failed", error="Worker lost")
    expect(page.locator("#job-detail .job-error")).to_have_text("Worker lost")
    expect(indicator).to_have_attribute("data-mode", "polling")
    expect_log_matches_history(page, api, "job-q")


def test_reload_mid_job_resumes_following(page: Page, hub: ThreadHub, api: Api) -> None:
    api.publish("job-l", status="running", progress=10)
    page.goto(f"{hub.url}/#/jobs/job-l")
    percent = page.locator("#job-detail .percent")
    expect(percent).to_have_text("10%")
    api.publish("job-l", progress=40)
    expect(percent).to_have_text("40%")

    page.reload()
    expect(percent).to_have_text("40%")
    expect(page.locator("#connection")).to_have_attribute("data-mode", "live")
    api.publish("job-l", progress=70)
    expect(percent).to_have_text("70%")
    api.publish("job-l", status="completed")
    expect(page.locator("#job-detail .badge")).to_have_text("completed")
    expect_log_matches_history(page, api, "job-l")
