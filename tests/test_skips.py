"""`make test` runs every test: under `CI=true` a skipped test fails the run (conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hub import REPO

SKIPPING_TEST = """
import pytest


def test_needs_a_browser():
    pytest.skip("no Chromium at /usr/bin/chromium")
"""


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    # Outside CI a skip stays a skip: every local run without Chromium shows that.
    (tmp_path / "test_probe.py").write_text(SKIPPING_TEST)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "-q"]
        + ["-p", "no:cacheprovider", "-p", "tests.conftest", str(tmp_path / "test_probe.py")],
        cwd=REPO,
        env={**os.environ, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout
    assert "CI=true and this test skipped: Skipped: no Chromium" in done.stdout
