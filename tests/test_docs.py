"""Every code block of README.md and docs/*.md, run as written against a live hub.

The rules, which are all a writer of the docs needs to know:

- A block is a fence of three backticks and a language at the start of a line. By
  language:
  - `python`: run by this virtualenv's Python;
  - `sh`, `bash`, `shell`: run by `bash -e -o pipefail`, with the virtualenv's `bin/`
    first on PATH (so `python3` and `progress-hub` are the project's);
  - `js`, `javascript`, `mjs`: run as an ES module by `node --experimental-eventsource`
    (fetch and EventSource, as in a browser); skipped when there is no node;
  - `json`, `toml`: parsed;
  - anything else (`text`, `nginx`, none): not run.
- The blocks of one document run in order, in a temporary directory, against one hub of
  their own on a fresh Redis; each must exit 0 within BLOCK_TIMEOUT seconds. (README's
  Python and JS examples run in a test of their own: the page first, then the worker.)
- Addresses: `127.0.0.1:8000` and `localhost:8000` are rewritten to that hub's, and
  `redis://127.0.0.1:6390/0` (`make run`'s embedded broker) to its broker, whose URL is
  also in PROGRESS_BROKER_URL (no other PROGRESS_* variable is passed on).
- An HTML comment on the line just before the fence changes what happens:
  - `<!-- doc-test: fragment ... -->`: a piece of a larger program (browser code, names
    defined elsewhere): only its syntax is checked (`compile`, `bash -n`, `node --check`);
  - `<!-- doc-test: needs WHAT -->`: it needs what this test cannot give (a Redis Cluster,
    a Celery broker, a terminal of its own): only its syntax is checked;
  - `<!-- doc-test: transcript -->` (shell): each line starting with `$ ` is a command,
    and the lines after it, up to the next `$ `, are its exact output.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from progress_hub.settings import Settings
from tests.hub import REPO, ThreadHub, run_hub

BLOCK_TIMEOUT = 30.0
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
EMBEDDED_BROKER = "redis://127.0.0.1:6390/0"
NODE = shutil.which("node")
PYTHON = ("python",)
SHELL = ("sh", "bash", "shell")
JS = ("js", "javascript", "mjs")
FENCE = re.compile(r"^```([\w+-]*)[ \t]*$")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(fragment|needs|transcript)\b(.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its marker (if any) and its text."""

    document: str
    line: int
    language: str
    marker: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line} ({self.language or 'no language'})"


def blocks(document: str) -> list[Block]:
    """The fenced blocks of `document`, in order."""
    lines = (REPO / document).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        before = lines[index - 1] if index else ""
        marker = MARKER.match(before)
        if marker is None and "doc-test:" in before:
            raise ValueError(f"{document}:{index}: unknown doc-test marker {before!r}")
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        text = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(document, index + 1, opening[1].lower(), marker and marker[1], text))
        index = end + 1
    return found


@dataclass
class Runner:
    """Runs blocks against one hub, in one temporary directory."""

    hub: ThreadHub
    workdir: Path

    @property
    def broker_url(self) -> str:
        assert self.hub.settings.broker_url is not None
        return self.hub.settings.broker_url

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PROGRESS_BROKER_URL"] = self.broker_url
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def rewrite(self, text: str) -> str:
        address = self.hub.url.removeprefix("http://")
        text = text.replace("127.0.0.1:8000", address).replace("localhost:8000", address)
        return text.replace(EMBEDDED_BROKER, self.broker_url)

    def command(self, block: Block, *, check_only: bool) -> list[str] | None:
        """The command that runs (or only checks) `block`; None when it is not run."""
        if block.language in PYTHON:
            path = self.write(block, "py")
            if check_only:
                return [sys.executable, "-c", f"compile(open({str(path)!r}).read(), 'b', 'exec')"]
            return [sys.executable, str(path)]
        if block.language in SHELL:
            path = self.write(block, "sh")
            return (
                ["bash", "-n", str(path)]
                if check_only
                else ["bash", "-e", "-o", "pipefail", str(path)]
            )
        if block.language in JS:
            if NODE is None:
                return None
            path = self.write(block, "mjs")
            if check_only:
                return [NODE, "--check", str(path)]
            return [NODE, "--experimental-eventsource", "--no-warnings", str(path)]
        return None

    def write(self, block: Block, suffix: str) -> Path:
        path = self.workdir / f"block-{block.line}.{suffix}"
        path.write_text(self.rewrite(block.text), encoding="utf-8")
        return path

    def run(self, block: Block) -> subprocess.CompletedProcess[str] | None:
        """Run one block as its rules say; raise AssertionError naming it if it fails."""
        if block.language in ("json", "toml") and block.marker is None:
            if block.language == "json":
                json.loads(block.text)
            else:
                tomllib.loads(block.text)
            return None
        if block.marker == "transcript":
            self.run_transcript(block)
            return None
        command = self.command(block, check_only=block.marker in ("fragment", "needs"))
        if command is None:
            return None
        return self.execute(block, command)

    def execute(
        self, block: Block, command: list[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                command,
                cwd=self.workdir,
                env=self.env(),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{block.where} ran over {BLOCK_TIMEOUT} s") from None
        assert done.returncode == 0, (
            f"{block.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done

    def run_transcript(self, block: Block) -> None:
        steps = re.split(r"^\$ ", block.text, flags=re.MULTILINE)[1:]
        assert steps, f"{block.where}: a transcript needs `$ ` command lines"
        for step in steps:
            command, _, expected = step.partition("\n")
            done = self.execute(
                block, ["bash", "-e", "-o", "pipefail", "-c", self.rewrite(command)]
            )
            assert done.stdout.strip() == expected.strip(), (
                f"{block.where}: `{command}` printed\n{done.stdout}\nnot\n{expected}"
            )


@pytest.fixture
def runner(redis_url: str, tmp_path: Path) -> Iterator[Runner]:
    with run_hub(Settings(broker_url=redis_url)) as hub:
        yield Runner(hub, tmp_path)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_code_block_of_the_document_runs_as_written(runner: Runner, document: str) -> None:
    for block in blocks(document):
        if document == "README.md" and block.language in PYTHON + JS:
            continue  # run by the test below, the page first, as a newcomer would
        runner.run(block)


def test_readme_page_shows_the_state_at_once_every_update_and_the_end(runner: Runner) -> None:
    # The newcomer's path: the page (README's JS) opens before the worker (README's
    # Python) starts, sees the job at once, then every update, then the end.
    if NODE is None:
        pytest.skip("no node on PATH")
    readme = blocks("README.md")
    page = next(b for b in readme if b.language in JS)
    worker = next(b for b in readme if b.language in PYTHON)
    page_command = runner.command(page, check_only=False)
    assert page_command is not None
    browser = subprocess.Popen(
        page_command, cwd=runner.workdir, env=runner.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert browser.stdout is not None
        ready, _, _ = select.select([browser.stdout], [], [], BLOCK_TIMEOUT)
        assert ready, "the page printed nothing: it must show the job's state at once"
        first = browser.stdout.readline()
        assert first == "queued 0% \n", "the page shows the job before the worker starts"
        runner.run(worker)
        rest, _ = browser.communicate(timeout=BLOCK_TIMEOUT)
    finally:
        browser.kill()  # a no-op once it exited; a page that never ends must not outlive us
        browser.wait()
    assert browser.returncode == 0
    assert rest.splitlines() == [
        "running 25% Reading pages",
        "running 37.5% Page 10 of 20",
        "completed 100% Page 10 of 20",
    ], rest


def test_extractor_rules_find_markers_and_languages(tmp_path: Path) -> None:
    sample = [
        "<!-- doc-test: fragment (browser) -->",
        "```js",
        "render();",
        "```",
        "",
        "```python",
        "print(1)",
        "```",
    ]
    document = tmp_path / "sample.md"
    document.write_text("\n".join(sample), encoding="utf-8")
    found = [(b.language, b.marker, b.line) for b in blocks(str(document))]  # absolute path
    assert found == [("js", "fragment", 2), ("python", None, 6)]
