"""Hub process faults: a crash (kill -9) beside a second hub, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import httpx

from tests.conditions import wait_until
from tests.hub import spawn_hub
from tests.probes import child_pids
from tests.sse_frames import Frame
from tests.streams import RawStream

CLIENTS = 20


async def _publish(http: httpx.AsyncClient, job_id: str, body: dict[str, object]) -> int:
    response = await http.post(f"/api/jobs/{job_id}/events", json=body)
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


async def _open_many(base_url: str, path: str) -> list[RawStream]:
    return list(await asyncio.gather(*(RawStream.open(base_url, path) for _ in range(CLIENTS))))


async def _events_until(stream: RawStream, seq: int) -> list[Frame]:
    """Every event up to and including `seq`."""
    events: list[Frame] = []
    while not events or events[-1].seq < seq:
        event = await stream.next_event(timeout=5)
        assert event is not None, f"stream closed after {[e.seq for e in events]}"
        events.append(event)
    return events


async def test_hub_kill_clients_resume_on_the_other_hub_with_exactly_the_missed_events(
    redis_url: str,
) -> None:
    env = {"PROGRESS_BROKER_URL": redis_url}
    with spawn_hub(env) as doomed, spawn_hub(env) as survivor:
        async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as http:
            for step in range(3):
                await _publish(http, "k9", {"status": "running", "progress": step})
            streams = await _open_many(doomed.url, "/api/jobs/k9/events")
            last_seen: list[int] = []
            for stream in streams:
                snapshot = await stream.next_event()
                assert snapshot is not None and snapshot.event == "snapshot"
                last_seen.append(snapshot.seq)
            seq = await _publish(http, "k9", {"progress": 10})
            for i, stream in enumerate(streams):
                last_seen[i] = (await _events_until(stream, seq))[-1].seq

            doomed.kill()
            killed_at = time.monotonic()
            for stream in streams:
                assert await stream.next_block(timeout=5) is None, "the killed hub's stream lives"
                await stream.aclose()
            missed = [await _publish(http, "k9", {"progress": 20 + i}) for i in range(10)]

            async def resume(last: int) -> tuple[RawStream, list[int], float]:
                headers = {"Last-Event-ID": str(last)}
                stream = await RawStream.open(survivor.url, "/api/jobs/k9/events", headers=headers)
                events = await _events_until(stream, missed[-1])
                assert {e.event for e in events} == {"progress"}
                return stream, [e.seq for e in events], time.monotonic() - killed_at

            results = await asyncio.gather(*(resume(last) for last in last_seen))
            try:
                for (_, seqs, _), last in zip(results, last_seen, strict=True):
                    assert seqs == list(range(last + 1, missed[-1] + 1))
                # Live again on the survivor, with no duplicate of what was replayed.
                after = await _publish(http, "k9", {"progress": 60})
                for stream, _, _ in results:
                    live = await stream.next_event()
                    assert live is not None and live.event == "progress" and live.seq == after
            finally:
                await asyncio.gather(*(stream.aclose() for stream, _, _ in results))
            print(
                f"\nhub kill -9: {CLIENTS} clients resumed on the other hub with exactly "
                f"their missed events within {max(t for _, _, t in results):.3f}s of the kill"
            )


def _refuses_connections(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_sigterm_asks_streams_to_reconnect_and_keeps_the_embedded_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir))
    env = {"PROGRESS_BROKER_URL": ""}
    with spawn_hub(env, *args) as hub:
        (broker_pid,) = child_pids(hub.process.pid)
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            seq = await _publish(http, "kept", {"status": "running", "progress": 42})
            streams = await _open_many(hub.url, "/api/jobs/kept/events")
            for stream in streams:
                assert (await stream.next_event()) is not None
            started = time.monotonic()
            hub.process.send_signal(signal.SIGTERM)
            farewells = await asyncio.gather(*(s.blocks_until_close(timeout=5) for s in streams))
            closed_after = time.monotonic() - started
            for blocks in farewells:
                assert blocks, "the stream closed without a word"
                retry = blocks[-1].retry
                assert retry is not None and retry <= 2000, blocks
            assert _refuses_connections(hub.url)
            exit_code = hub.process.wait(10)
            exited_after = time.monotonic() - started
            await asyncio.gather(*(s.aclose() for s in streams))
        assert exit_code == 0
        assert not Path(f"/proc/{broker_pid}").exists(), "the embedded broker outlived the hub"

    with spawn_hub(env, *args) as again:
        response = httpx.get(f"{again.url}/api/jobs/kept")
        assert response.status_code == 200
        assert response.json()["seq"] == seq
        assert response.json()["progress"] == 42
    print(
        f"\nSIGTERM: {CLIENTS} streams told to reconnect and closed within "
        f"{closed_after:.3f}s; process exited 0 after {exited_after:.3f}s; data kept"
    )
    # The pid is gone, not merely a zombie: the hub reaped it.
    wait_until(lambda: not Path(f"/proc/{broker_pid}").exists(), 5, "broker pid lingers")
    assert os.path.isdir(data_dir)
