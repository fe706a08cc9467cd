"""The job view in Chromium: cancel from the page, the progress chart, the log's wording."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from pubsub import ChunkRef, JobStatus, JobStore, SyncTracker, Update, open_broker
from pubsub.events import ChunksPatch
from tests.browser.conftest import Api
from tests.conditions import wait_until
from tests.conftest import HubFactory
from tests.hub import ThreadHub

pytestmark = pytest.mark.browser

OCR_ERROR = "Chunk 3 (pages 51-75) failed: Document AI timeout"


def card(page: Page) -> Locator:
    return page.locator("#job-detail .job")


def publish_with_clock(broker_url: str, job_id: str, updates: list[Update], step: float) -> None:
    """Publish `updates` as a worker would, `step` seconds apart on a clock of our own,
    so times, the ETA and the chart's x positions do not depend on this machine's speed."""
    clock = [time.time() - step * (len(updates) + 1)]

    def now() -> float:
        clock[0] += step
        return clock[0]

    async def send() -> None:
        store = JobStore(open_broker(broker_url), clock=now)
        try:
            for update in updates:
                await store.publish(job_id, update, pipeline="ocr")
        finally:
            await store.broker.aclose()

    # Playwright's sync API keeps an event loop running on this thread.
    worker = threading.Thread(target=asyncio.run, args=(send(),))
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "publishing hung"


def ocr_story() -> list[Update]:
    """An OCR job: split, 5 chunks with one failure, a retry, then the merge under way."""
    run = JobStatus.RUNNING
    return [
        Update(status=run, stage="split", message="Splitting 125 pages"),
        Update(stage="chunks", chunks=ChunksPatch(total=5)),
        Update(chunks=ChunksPatch(add_completed=1)),
        Update(chunks=ChunksPatch(add_completed=1)),
        Update(
            chunks=ChunksPatch(add_failed=1, current=ChunkRef(index=2, page_start=51, page_end=75)),
            error=OCR_ERROR,
        ),
        Update(chunks=ChunksPatch(add_completed=1)),
        Update(status=JobStatus.RETRYING, attempt=2, max_attempts=3),
        Update(status=run, stage="chunks", chunks=ChunksPatch(add_completed=1)),
        Update(stage="merge", message="Merging OCR results"),  # what tracker.merge() sends
        Update(stage_progress=0.4),
    ]


def chart_points(page: Page) -> list[tuple[int, int]]:
    points: list[tuple[int, int]] = page.locator("#progress-chart .chart-point").evaluate_all(
        "dots => dots.map((d) => [Number(d.dataset.seq), Math.floor(Number(d.dataset.progress))])"
    )
    return points


def log_lines(page: Page) -> list[tuple[int, int]]:
    lines: list[tuple[int, int]] = page.locator("#event-log li").evaluate_all(
        "items => items.map((li) => [Number(li.dataset.seq),"
        " parseInt(li.querySelector('.log-percent').textContent, 10)])"
    )
    return lines


def test_job_view_chart_follows_the_event_log_and_the_log_says_things_once(
    page: Page, hub: ThreadHub, api: Api, redis_url: str, artifacts: Path
) -> None:
    story = ocr_story()
    publish_with_clock(redis_url, "ocr-chart", story, step=4.0)
    page.goto(f"{hub.url}/#/jobs/ocr-chart")
    expect(page.locator("#event-log li")).to_have_count(len(story))
    expect(page.locator("#progress-chart .chart-point")).to_have_count(len(story))
    assert chart_points(page) == log_lines(page)

    # Stages as bands (split, chunks, merge: the retry re-entered chunks, a new band);
    # the retry and the failed chunk marked once each; a dashed ETA from the newest point.
    bands = page.locator("#progress-chart .chart-band").evaluate_all(
        "bands => bands.map((b) => b.dataset.stage)"
    )
    assert bands == ["split", "chunks", "merge"]
    expect(page.locator("#progress-chart .chart-retry")).to_have_count(1)
    expect(page.locator("#progress-chart .chart-failure")).to_have_count(1)
    expect(page.locator("#progress-chart .chart-eta")).to_have_count(1)
    newest = page.locator("#progress-chart .chart-point").last
    eta = page.locator("#progress-chart .chart-eta")
    assert eta.get_attribute("x1") == newest.get_attribute("cx")
    assert float(eta.get_attribute("y2") or "nan") < float(newest.get_attribute("cy") or "nan")

    # The chunk's error on the event where it appeared, not on the later ones.
    errors = page.locator("#event-log .log-error")
    expect(errors).to_have_count(1)
    expect(errors).to_have_text(OCR_ERROR)
    assert page.locator("#event-log li:has(.log-error)").get_attribute("data-seq") == "5"
    # The stage label and a message that repeats it, once: card and log.
    merge_line = page.locator('#event-log li[data-seq="9"] .log-text')
    expect(merge_line).to_have_text("running Merging OCR results")
    expect(card(page).locator(".stage")).to_have_text("Merging OCR results")
    expect(card(page).locator(".message")).to_have_text("")
    page.screenshot(path=artifacts / "job-view-chart.png", full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=artifacts / "job-view-chart-dark.png", full_page=True)
    page.emulate_media(color_scheme="light")

    # Live: a new event is a new point, drawn where the log says.
    api.publish("ocr-chart", stage_progress=0.8, message="Merging page 100 of 125")
    expect(page.locator("#progress-chart .chart-point")).to_have_count(len(story) + 1)
    expect(page.locator("#event-log li")).to_have_count(len(story) + 1)
    assert chart_points(page) == log_lines(page)
    api.publish("ocr-chart", status="failed", error="Merge failed: out of memory")
    expect(errors).to_have_count(2)
    expect(page.locator("#progress-chart .chart-eta")).to_have_count(0)


@pytest.fixture
def worker(redis_url: str) -> Iterator[dict[str, threading.Event]]:
    """A worker-side tracker that waits silently for a cancel request, then, when the test
    says so, stops and records the job cancelled."""
    signals = {name: threading.Event() for name in ("started", "learnt", "proceed")}
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with SyncTracker(redis_url, "render-7", cancel_poll_interval=0.05) as job:
                job.start()
                job.set(30, "Rendering frame 300 of 1000")
                job.flush()
                signals["started"].set()
                wait_until(lambda: job.cancel_requested, 15, "the worker never heard")
                signals["learnt"].set()
                signals["proceed"].wait(15)
                job.cancel("Stopped on request")
        except BaseException as exc:  # handed to the test thread, which re-raises it
            failures.append(exc)
            signals["learnt"].set()

    thread = threading.Thread(target=run)
    thread.start()
    assert signals["started"].wait(10), "the worker did not start"
    yield signals
    signals["proceed"].set()
    thread.join(10)
    if failures:
        raise failures[0]


def test_cancel_from_the_job_view_confirms_shows_cancelling_then_cancelled(
    page: Page, hub: ThreadHub, worker: dict[str, threading.Event]
) -> None:
    page.goto(f"{hub.url}/#/jobs/render-7")
    job = page.locator("#job-detail .job")
    expect(job.locator(".badge")).to_have_text("running")
    cancel = job.get_by_role("button", name="Cancel job render-7")
    expect(cancel).to_be_visible()  # a loopback page of a hub without key or secret
    cancel.click()
    confirm = job.get_by_role("group", name="Cancel job render-7?")
    expect(confirm).to_contain_text("Cancel this job?")
    expect(confirm.get_by_role("button", name="Keep running")).to_be_focused()
    job.get_by_role("button", name="Yes, cancel it").click()

    expect(job.locator(".badge")).to_have_text("Cancelling…")
    expect(cancel).to_be_hidden()
    assert worker["learnt"].wait(10), "the worker's tracker never learnt of the request"
    expect(job.locator(".badge")).to_have_text("Cancelling…")  # until the worker ends it
    worker["proceed"].set()
    expect(job.locator(".badge")).to_have_text("cancelled")
    expect(job.locator(".message")).to_have_text("Stopped on request")
    expect(page.locator("#event-log li").last.locator(".log-status")).to_have_text("cancelled")


def test_no_cancel_button_where_the_page_may_not_cancel(
    page: Page, start_hub: HubFactory, redis_url: str
) -> None:
    guarded = start_hub(publish_key="k" * 20)  # loopback alone no longer allows it
    publish_with_clock(redis_url, "guarded", [Update(status=JobStatus.RUNNING)], 1.0)
    with page.expect_response(lambda response: "/api/access" in response.url) as asked:
        page.goto(f"{guarded.url}/#/jobs/guarded")
    assert asked.value.json() == {"can_cancel": False}
    job = page.locator("#job-detail .job")
    expect(job.locator(".badge")).to_have_text("running")
    expect(job.get_by_role("button", name="Cancel job guarded")).to_be_hidden()
