"""The live demo: worker processes publishing through Redis, fast-forwarded for tests."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from progress_hub import demo
from pubsub.events import JobStatus, Snapshot
from pubsub.store import JobStore
from tests.conditions import eventually
from tests.hub import REPO, spawn_hub

SCENARIOS = ("video", "ocr", "summary", "pdf")


def _by_scenario(jobs: list[Snapshot]) -> dict[str, Snapshot]:
    """The demo names its jobs demo-<run>-<scenario>-<round>."""
    return {job.job_id.split("-")[2]: job for job in jobs if job.job_id.startswith("demo-")}


async def test_demo_round_reaches_every_end_state(redis_url: str, store: JobStore) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "progress_hub.cli", "demo", "--broker-url", redis_url]
        + ["--speed", "40", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        timeout=90,
    )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]

    jobs = _by_scenario(await store.list_jobs())
    assert set(jobs) == set(SCENARIOS)
    video, ocr, summary, pdf = (jobs[name] for name in SCENARIOS)

    assert (video.status, video.pipeline, video.progress) == (JobStatus.COMPLETED, "video", 100)
    assert await store.result(video.job_id) == (
        b'{"clips":3,"posted":["tiktok","instagram"]}',
        "application/json",
    )

    assert (ocr.status, ocr.stage_label) == (JobStatus.COMPLETED, "Merging OCR results")
    assert ocr.chunks is not None
    assert (ocr.chunks.total, ocr.chunks.completed, ocr.chunks.failed) == (17, 16, 1)
    assert ocr.error == "Chunk 5 (pages 101-125) failed: Document AI timeout"

    history = [json.loads(raw) for raw in await store.history(summary.job_id)]
    retries = [e["message"] for e in history if e["status"] == "retrying"]
    assert retries == ["Retrying... (2/3)", "Retrying... (3/3)"]
    assert (summary.status, summary.attempt, summary.error) == (JobStatus.COMPLETED, 3, None)

    assert pdf.status is JobStatus.FAILED
    assert pdf.error == "Could not extract text: the PDF is password-protected"
    assert pdf.stage == "extract"


async def test_serve_demo_keeps_jobs_moving_and_cancels_its_leftovers(
    redis_url: str, store: JobStore
) -> None:
    env = {"PROGRESS_BROKER_URL": redis_url}
    with spawn_hub(env, "--demo", "--demo-speed", "40") as hub:
        async with httpx.AsyncClient(base_url=hub.url) as http:

            async def ended_scenarios() -> set[str]:
                jobs = (await http.get("/api/jobs", params={"limit": 100})).json()["jobs"]
                return {
                    job["job_id"].split("-")[2]
                    for job in jobs
                    if job["job_id"].startswith("demo-")
                    and job["status"] in ("completed", "failed")
                }

            await eventually(
                ended_scenarios, lambda s: s == set(SCENARIOS), 60, "every scenario ended once"
            )
        hub.terminate()  # the hub's own exit status is not the demo's business

    # The demo stops with the hub and cancels the jobs its workers left unfinished.
    async def active_demo_jobs() -> list[str]:
        jobs = await store.list_jobs(
            status=[JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING]
        )
        return [job.job_id for job in jobs if job.job_id.startswith("demo-")]

    await eventually(active_demo_jobs, lambda ids: ids == [], 20, "no demo job left active")
    cancelled = await store.list_jobs(status=[JobStatus.CANCELLED])
    assert {job.message for job in cancelled} <= {"Demo stopped"}


def test_demo_refuses_a_memory_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--broker-url", "memory://"]) == 2
    assert "need a shared broker" in capsys.readouterr().err
