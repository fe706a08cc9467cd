"""docs/publishing.md's Celery, RQ and tqdm sections, run as written.

Each section's files and commands are taken from the page itself; the only change is the
Redis address: the module's private server instead of `make run`'s embedded one (6390).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hub import REPO
from tests.integrations.conftest import Redis, Worker, stop_worker, wait_for_status

PAGE = REPO / "docs" / "publishing.md"
DOC_REDIS = "redis://127.0.0.1:6390"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def section(title: str) -> list[tuple[str, str]]:
    """The fenced blocks of one `## title` section, as (language, text)."""
    text = PAGE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return BLOCK.findall(text[start : end if end != -1 else None])


def commands(console: str) -> list[str]:
    """The `$ ` commands of a console block (a command runs on until the next `$ `)."""
    found: list[str] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            found.append(line[2:])
        elif found:
            found[-1] += "\n" + line
    return found


@pytest.fixture
def folder(tmp_path: Path, private_redis: Redis) -> Iterator[tuple[Path, dict[str, str]]]:
    """A directory to run the examples in, and the environment their commands see."""
    env = {
        **{name: value for name, value in os.environ.items() if name != "PROGRESS_BROKER_URL"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(tmp_path),
    }
    yield tmp_path, env


def local(text: str, private_redis: Redis) -> str:
    return text.replace(DOC_REDIS, f"redis://127.0.0.1:{private_redis.server.port}")


def write_module(block: str, folder: Path, private_redis: Redis) -> None:
    first = block.splitlines()[0]
    assert first.startswith("# ") and first.endswith(".py"), "the block names its file"
    (folder / first[2:]).write_text(local(block, private_redis))


def run_example(
    title: str, folder: tuple[Path, dict[str, str]], private_redis: Redis, http: httpx.Client
) -> None:
    """Write the section's module, start its worker, run its producer, watch the job end."""
    path, env = folder
    blocks = section(title)
    write_module(next(text for lang, text in blocks if lang == "python"), path, private_redis)
    console = next(text for lang, text in blocks if lang == "console")
    start, produce = (local(command, private_redis) for command in commands(console))
    log = path / "worker.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            start, shell=True, cwd=path, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, log)
    try:
        job_id = subprocess.run(
            produce, shell=True, cwd=path, env=env, capture_output=True, text=True,
            check=True, timeout=30,
        ).stdout.strip()
        done = wait_for_status(http, job_id, ["completed", "failed", "cancelled"], timeout=30)
        assert done["status"] == "completed", worker.output()
        assert (done["pipeline"], done["chunks"]["completed"]) == ("ocr", 17)
        assert http.get(f"/api/jobs/{job_id}/result").json() == {"pages": 17}
    finally:
        stop_worker(worker, 9)


def test_docs_celery_example_runs_as_written(
    folder: tuple[Path, dict[str, str]], private_redis: Redis, http: httpx.Client
) -> None:
    run_example("Celery", folder, private_redis, http)


def test_docs_rq_example_runs_as_written(
    folder: tuple[Path, dict[str, str]], private_redis: Redis, http: httpx.Client
) -> None:
    run_example("RQ", folder, private_redis, http)


def test_docs_tqdm_example_runs_as_written(
    private_redis: Redis, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    (code,) = (text for lang, text in section("tqdm") if lang == "python")
    monkeypatch.delenv("PROGRESS_BROKER_URL", raising=False)  # the page's default, rewritten

    exec(compile(local(code, private_redis), str(PAGE), "exec"), {})

    done = wait_for_status(http, "thumbnails-7", ["completed"])
    assert done["message"].startswith("Thumbnails: 10000/10000 (")
