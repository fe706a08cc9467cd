"""Runs the JavaScript unit tests (`node --test tests/js`) as part of pytest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_node_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: apt-get install nodejs")
    done = subprocess.run(
        [node, "--test", "tests/js"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"node --test tests/js failed:\n{done.stdout}\n{done.stderr}"
    assert "# fail 0" in done.stdout, done.stdout
