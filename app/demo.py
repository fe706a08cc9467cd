"""`progress-hub demo`: simulated pipelines, each in its own process, publishing through the broker.

Four scenarios run side by side, each in a worker process that runs its job again and
again, so whoever opens the dashboard sees jobs move:

- `video`: the video pipeline stage by stage, auto-advancing while it downloads and
  transcribes (the async `Tracker`);
- `ocr`: a 425-page PDF in 17 chunks spread over three more processes, chunk 5 failing,
  then the merge (`SyncTracker`, counts exact across processes);
- `summary`: times out twice, retries (2/3, 3/3), then completes;
- `pdf`: fails while extracting text (the context manager fails the job).

Workers use only the public library, as real ones would. `speed` divides every pause, so
a test runs a round in about a second. Stopping the demo stops its processes and cancels
the jobs they left unfinished.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final
from urllib.parse import urlsplit

import anyio
import structlog

from progress_hub.logs import configure_logging
from pubsub.broker import open_broker
from pubsub.errors import BrokerUnavailable, JobCancelled
from pubsub.events import ACTIVE_STATUSES, JobStatus, Update
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from pubsub.sync import SyncTracker

log = structlog.get_logger(__name__)

EXIT_BAD_CONFIG: Final = 2
OCR_PAGES: Final = 425
OCR_CHUNKS: Final = 17
OCR_WORKERS: Final = 3
OCR_FAILING_CHUNK: Final = 4  # "Chunk 5 (pages 101-125) failed", as in docs/api.md §1
SUMMARY_ATTEMPTS: Final = 3
PAUSE_BETWEEN_ROUNDS: Final = 3.0
STOP_TIMEOUT: Final = 10.0
STDIN_FD: Final = 0


class WorkerGone(BaseException):
    """The demo that started this worker is gone: stop too.

    A BaseException, like KeyboardInterrupt: an interrupted worker has not failed its job.
    """


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What every demo process needs: where to publish, how fast, how many rounds."""

    broker_url: str
    speed: float = 1.0
    rounds: int | None = None
    """None: forever."""
    run_id: str = ""
    """Prefix of this demo's job ids, so it cancels only its own jobs when stopped."""
    parent_pid: int = 0

    def pause(self, seconds: float) -> None:
        """Simulate `seconds` of work, faster by `speed`; stop if the demo is gone."""
        self._check_parent()
        time.sleep(seconds / self.speed)

    async def apause(self, seconds: float) -> None:
        """`pause` for async workers."""
        self._check_parent()
        await anyio.sleep(seconds / self.speed)

    def _check_parent(self) -> None:
        # A worker whose parent died (SIGKILL, say) is adopted by init: stop publishing.
        if self.parent_pid and os.getppid() != self.parent_pid:
            raise WorkerGone()


async def _video(config: DemoConfig, job_id: str) -> None:
    # Cancel from the dashboard stops it at its next call (docs/api.md §9).
    async with Tracker.connect(
        config.broker_url, job_id, pipeline="video", raise_on_cancel=True
    ) as job:
        await job.meta(title="Weekly cooking show, episode 12", source="youtube")
        await job.start("Queued for processing")
        await job.stage("downloading", expected_seconds=4 / config.speed)
        await config.apause(3.5)
        for stage, seconds in (("downloaded", 0.5), ("uploading", 1), ("processing_started", 0.5)):
            await job.stage(stage)
            await config.apause(seconds)
        await job.stage("transcribing", expected_seconds=6 / config.speed)
        await config.apause(5)
        await job.stage("analyzing")
        for scene in range(1, 6):
            await config.apause(0.8)
            await job.advance(scene / 5, f"Analyzing scene {scene}/5")
        await job.stage("processing")
        for clip in range(1, 4):
            await config.apause(1)
            await job.advance(clip / 3, f"Rendering clip {clip}/3")
        for stage in ("posting_tiktok", "posting_instagram", "uploading_clips"):
            await job.stage(stage)
            await config.apause(1)
        await job.complete({"clips": 3, "posted": ["tiktok", "instagram"]})


def video_job(config: DemoConfig, job_id: str) -> None:
    """A video walking every stage of the `video` pipeline (async tracker)."""
    try:
        anyio.run(_video, config, job_id)
    except JobCancelled:
        pass  # someone pressed Cancel: the tracker recorded the job cancelled


def ocr_job(config: DemoConfig, job_id: str) -> None:
    """A 17-chunk OCR job, chunks done by three processes, one failing, then the merge."""
    with SyncTracker.connect(config.broker_url, job_id, pipeline="ocr") as job:
        job.meta(document="annual-report-2024.pdf", pages=OCR_PAGES)
        job.start()
        job.stage("split")
        config.pause(1.5)
        job.chunks(OCR_CHUNKS)
        # The total must be in place before any worker counts a chunk against it.
        job.flush()
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(
                target=_ocr_worker,
                args=(config, job_id, list(range(n, OCR_CHUNKS, OCR_WORKERS)), os.getpid()),
                name=f"demo-ocr-{n}",
            )
            for n in range(OCR_WORKERS)
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        finally:
            _stop(workers)
        job.merge()
        config.pause(2)
        job.complete(f"Recognised text of {OCR_PAGES} pages (chunk 5 needs a rerun).")


def _ocr_worker(config: DemoConfig, job_id: str, indexes: list[int], parent_pid: int) -> None:
    """One OCR worker process: reports its chunks of a job another process started."""
    configure_logging(json=False, level=logging.WARNING)
    config = DemoConfig(config.broker_url, config.speed, config.rounds, config.run_id, parent_pid)
    pages = OCR_PAGES // OCR_CHUNKS
    with SyncTracker.connect(config.broker_url, job_id, pipeline="ocr") as job:
        for index in indexes:
            try:
                config.pause(0.4 + 0.15 * (index % 4))
            except WorkerGone:
                return
            first, last = index * pages + 1, (index + 1) * pages
            if index == OCR_FAILING_CHUNK:
                job.chunk_failed(index, first, last, "Document AI timeout")
            else:
                job.chunk_done(index, first, last)


def summary_job(config: DemoConfig, job_id: str) -> None:
    """A summary that times out fetching the transcript twice, then succeeds."""
    with (
        contextlib.suppress(JobCancelled),  # Cancel pressed: recorded cancelled on the way out
        SyncTracker.connect(
            config.broker_url, job_id, pipeline="summary", raise_on_cancel=True
        ) as job,
    ):
        job.meta(video="Keynote: the state of the web")
        job.start()
        for attempt in range(1, SUMMARY_ATTEMPTS + 1):
            if attempt > 1:
                job.retrying(attempt, SUMMARY_ATTEMPTS, "Transcript service timed out")
                config.pause(1.5)
            for stage, seconds in (("connecting", 0.8), ("metadata", 0.8), ("transcript", 1.0)):
                job.stage(stage)
                config.pause(seconds)
            if attempt < SUMMARY_ATTEMPTS:
                continue
            job.stage("analyzing")
            config.pause(1.5)
            job.stage("generating", expected_seconds=3 / config.speed)
            config.pause(2.5)
            job.complete("The web platform keeps growing; three themes stood out: ...")


class ExtractionError(Exception):
    """What the simulated PDF extractor raises."""


def pdf_job(config: DemoConfig, job_id: str) -> None:
    """A PDF job that fails: the exception leaves the `with` block and fails the job."""
    try:
        with SyncTracker.connect(config.broker_url, job_id, pipeline="pdf") as job:
            job.meta(document="scanned-contract.pdf", pages=12)
            job.start()
            job.stage("parse")
            for page in range(1, 13):
                config.pause(0.2)
                job.advance(page / 12, f"Parsing page {page}/12")
            job.stage("extract")
            config.pause(1.5)
            job.advance(0.3, "Extracting text from page 4/12")
            config.pause(1)
            raise ExtractionError("Could not extract text: the PDF is password-protected")
    except ExtractionError:
        pass  # the job is failed already; a real worker would report it to its queue too


SCENARIOS: Final[dict[str, Callable[[DemoConfig, str], None]]] = {
    "video": video_job,
    "ocr": ocr_job,
    "summary": summary_job,
    "pdf": pdf_job,
}


def _scenario(config: DemoConfig, name: str, delay: float) -> None:
    """One scenario's process: its job, again and again."""
    configure_logging(json=False, level=logging.WARNING)
    run = SCENARIOS[name]
    try:
        config.pause(delay)
        round_ = 0
        while config.rounds is None or round_ < config.rounds:
            round_ += 1
            run(config, f"demo-{config.run_id}-{name}-{round_}")
            if config.rounds is None or round_ < config.rounds:
                config.pause(PAUSE_BETWEEN_ROUNDS)
    except (WorkerGone, KeyboardInterrupt):
        return


def _stop(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(STOP_TIMEOUT)


async def _cancel_leftovers(config: DemoConfig) -> None:
    """Cancel this demo's unfinished jobs, so they do not linger as stalled."""
    store = JobStore(open_broker(config.broker_url))
    try:
        prefix = f"demo-{config.run_id}-"
        for job in await store.list_jobs(status=sorted(ACTIVE_STATUSES), limit=100):
            if job.job_id.startswith(prefix):
                update = Update(status=JobStatus.CANCELLED, message="Demo stopped")
                await store.publish(job.job_id, update)
    finally:
        await store.broker.aclose()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _stop_when_stdin_closes() -> None:
    """Stop the demo (as SIGTERM does) once standard input reaches its end.

    `serve --demo` hands the demo a pipe: the kernel closes it when the hub ends, in
    whatever way it ends (uvicorn re-raises SIGTERM, skipping cleanup; SIGKILL skips
    everything), so the demo never outlives its hub.
    """
    # The raw descriptor, not sys.stdin: a thread blocked in a buffered read holds a lock
    # that interpreter shutdown would wait for.
    while os.read(STDIN_FD, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def run(config: DemoConfig, *, stop_with_stdin: bool = False) -> int:
    """Run every scenario in its own process until they finish (or the demo is stopped)."""
    config = DemoConfig(
        config.broker_url, config.speed, config.rounds, secrets.token_hex(2), os.getpid()
    )
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_scenario, args=(config, name, i * 1.5), name=f"demo-{name}", daemon=False
        )
        for i, name in enumerate(SCENARIOS)
    ]
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if stop_with_stdin:
        threading.Thread(target=_stop_when_stdin_closes, name="demo-stdin", daemon=True).start()
    log.info("demo_started", scenarios=list(SCENARIOS), speed=config.speed, run_id=config.run_id)
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(processes)
        try:
            anyio.run(_cancel_leftovers, config)
        except BrokerUnavailable:
            log.warning("demo_leftovers_not_cancelled", run_id=config.run_id)
        log.info("demo_stopped", run_id=config.run_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `progress-hub demo` (and `python -m app.demo`)."""
    parser = argparse.ArgumentParser(prog="progress-hub demo", description=__doc__)
    parser.add_argument("--broker-url", required=True, help="redis://host:port/db")
    parser.add_argument("--speed", type=float, default=1.0, help="run this many times faster")
    parser.add_argument("--rounds", type=int, default=None, help="stop after N rounds")
    parser.add_argument(
        "--stop-with-stdin", action="store_true", help="stop when standard input closes"
    )
    args = parser.parse_args(argv)
    if urlsplit(args.broker_url).scheme == "memory":
        print(
            "progress-hub demo: the demo's workers run in their own processes and need a "
            "shared broker (redis://...), not memory://",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    if not args.speed > 0 or (args.rounds is not None and args.rounds < 1):
        print("progress-hub demo: --speed must be positive, --rounds at least 1", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_logging(json=False)
    config = DemoConfig(args.broker_url, args.speed, args.rounds)
    return run(config, stop_with_stdin=args.stop_with_stdin)


if __name__ == "__main__":
    sys.exit(main())
