"""`progress-hub serve` as a user runs it: the embedded default and bad configuration."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from progress_hub.embedded import free_port
from tests.conditions import wait_until
from tests.hub import serve_refuses, spawn_hub


def _env_without_progress_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_")}


def test_serve_with_no_broker_url_embeds_a_server_that_keeps_jobs_across_restarts(
    tmp_path: Path,
) -> None:
    env = _env_without_progress_settings()
    data_dir = str(tmp_path / "data")
    with spawn_hub(env, "--data-dir", data_dir) as first:
        created = httpx.post(first.url + "/api/jobs", json={"job_id": "kept", "pipeline": "pdf"})
        assert created.status_code == 201
        published = httpx.post(first.url + "/api/jobs/kept/events", json={"stage": "extract"})
        assert published.status_code == 202
        assert first.terminate() == 0
    with spawn_hub(env, "--data-dir", data_dir) as second:
        snapshot = httpx.get(second.url + "/api/jobs/kept")
    assert snapshot.status_code == 200
    assert (snapshot.json()["seq"], snapshot.json()["stage"]) == (2, "extract")


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["--broker-url", "kafka://x"], {}, "unknown broker scheme 'kafka'"),
        ([], {"PROGRESS_HEARTBEAT": "-1"}, "heartbeat must be a positive number"),
        ([], {"PROGRESS_PORT": "eighty"}, "PROGRESS_PORT must be a number"),
        (["--pipelines", "/nonexistent/pipelines.toml"], {}, "cannot be read"),
        (["--max-connections", "0"], {}, "max_connections must be at least 1"),
        (["--port", "abc"], {}, "argument --port: invalid int value: 'abc'"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    ],
)
def test_serve_bad_configuration_exits_2_with_one_line_reason(
    args: list[str], env: dict[str, str], reason: str
) -> None:
    line = serve_refuses(*args, env={**_env_without_progress_settings(), **env})
    assert reason in line


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_serve_killed_hard_takes_its_embedded_server_down_too(tmp_path: Path) -> None:
    with spawn_hub(_env_without_progress_settings(), "--data-dir", str(tmp_path)) as hub:
        servers = _children(hub.process.pid)
        assert len(servers) == 1
        hub.kill()
    wait_until(lambda: _gone(servers[0]), 10, "the embedded server outlived a SIGKILLed hub")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_serve_and_its_embedded_server_keep_off_transparent_huge_pages(tmp_path: Path) -> None:
    # Where the machine's setting is `always`, 2 MiB pages hold the hub's RSS up in 2 MiB
    # steps (app/tuning.py); the test runner's own process may have them.
    with spawn_hub(_env_without_progress_settings(), "--data-dir", str(tmp_path)) as hub:
        pids = [hub.process.pid, *_children(hub.process.pid)]
        states = {pid: _status(pid, "THP_enabled") for pid in pids}
    assert len(states) == 2 and set(states.values()) == {"0"}, states


def _status(pid: int, field: str) -> str:
    """A field of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return value.strip()
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_serve_with_its_embedded_port_taken_exits_2_naming_it(tmp_path: Path) -> None:
    # Workers publish to the fixed address (README "Ten lines"): never to whatever holds it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = serve_refuses(
            *("--port", str(free_port()), "--embedded-port", str(port)),
            *("--data-dir", str(tmp_path)),
            env=_env_without_progress_settings(),
        )
    assert f"port 127.0.0.1:{port} is taken" in line and "PROGRESS_EMBEDDED_PORT" in line


def test_serve_help_explains_each_flag_with_its_variable_and_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "progress_hub.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    assert "seconds between SSE comment pings (PROGRESS_HEARTBEAT; default: 15.0)" in result.stdout
    assert "(PROGRESS_EMBEDDED_PORT; default: 6390)" in result.stdout


def test_serve_against_an_absent_broker_names_it_at_start_and_on_readyz(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    log = tmp_path / "hub.log"
    with spawn_hub({"PROGRESS_BROKER_URL": url}, log=log) as hub:
        ready = httpx.get(hub.url + "/readyz")
    assert ready.status_code == 503
    assert f"at {url}; check that it runs" in ready.json()["error"]
    lines = log.read_text().splitlines()
    warning = next(i for i, line in enumerate(lines) if "broker does not answer" in line)
    serving = next(i for i, line in enumerate(lines) if "serving on" in line)
    assert warning < serving, "the warning comes before 'serving on'"
    assert f"nothing answers at {url}" in lines[warning]
