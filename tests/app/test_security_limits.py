"""Size and count limits (docs/api.md §2, §7): bodies, results, fields, ids, headers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from tests.conditions import eventually
from tests.conftest import HubFactory
from tests.hub import ThreadHub
from tests.streams import RawStream

KIB = 1024


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message: str = response.json()["error"]
    return message


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"message": "m" * 1000}, 202),
        ({"message": "m" * 1001}, 400),
        ({"meta": {"k": "v" * (8 * KIB - 20)}}, 202),
        ({"meta": {"k": "v" * (8 * KIB)}}, 413),
        ({"result": "r" * (1024 * KIB - 10)}, 202),
        ({"result": "r" * (1024 * KIB + 10)}, 413),
        ({"result": "r" * 1000, "meta": {"k": "v" * 7000}, "message": "m" * 1000}, 202),
    ],
    ids=[
        "message-1000",
        "message-1001",
        "meta-under-8k",
        "meta-over-8k",
        "result-under-1m",
        "result-over-1m",
        "everything-at-once",
    ],
)
async def test_publish_limits(client: httpx.AsyncClient, body: dict[str, Any], status: int) -> None:
    response = await client.post("/api/jobs/limits/events", json=body)
    if status == 202:
        assert response.status_code == 202, response.text
        return
    _error(response, status)
    # A rejected update changes nothing.
    assert (await client.get("/api/jobs/limits")).status_code == 404


async def test_body_over_64k_is_refused(client: httpx.AsyncClient) -> None:
    # Every field but `result` is bounded well below 64 KiB, so pad with JSON whitespace.
    padded = b'{"progress": 1' + b" " * (64 * KIB) + b"}"
    response = await client.post(
        "/api/jobs/big/events", content=padded, headers={"Content-Type": "application/json"}
    )
    _error(response, 413)
    assert (await client.get("/api/jobs/big")).status_code == 404


async def test_body_over_the_limit_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    async def endless() -> Any:
        chunk = b"[" * (64 * KIB)
        for _ in range(64):  # 4 MiB, streamed without a Content-Length
            yield chunk

    response = await client.post(
        "/api/jobs/big/events", content=endless(), headers={"Content-Type": "application/json"}
    )
    _error(response, 413)


async def test_declared_oversized_body_is_refused_without_waiting_for_it(hub: ThreadHub) -> None:
    port = int(hub.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/jobs/big/events HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n{"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"413"


@pytest.mark.parametrize(
    "job_id", ["a" * 129, "-leading-dash", "has space", "star*", "dot..ok..but..é"]
)
async def test_job_id_pattern_is_enforced(client: httpx.AsyncClient, job_id: str) -> None:
    assert "job id" in _error(await client.post(f"/api/jobs/{job_id}/events", json={}), 400)
    assert (await client.get(f"/api/jobs/{job_id}")).status_code in (400, 404)
    created = await client.post("/api/jobs", json={"job_id": job_id})
    _error(created, 400)


async def test_job_id_of_128_characters_is_fine(client: httpx.AsyncClient) -> None:
    job_id = "a" + "b" * 127
    assert (await client.post(f"/api/jobs/{job_id}/events", json={})).status_code == 202


async def test_dashboard_filters_are_bounded(client: httpx.AsyncClient) -> None:
    params = {"job": [f"j{i}" for i in range(101)]}
    _error(await client.get("/api/events", params=params), 400)


async def test_list_limit_takes_only_plain_digits(client: httpx.AsyncClient) -> None:
    for limit in ("\u00b2", "\u0663", "-1", "0", "501", "ten"):  # ², Arabic-Indic 3
        _error(await client.get("/api/jobs", params={"limit": limit}), 400)
    assert (await client.get("/api/jobs", params={"limit": "500"})).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"message": "' + b"m" * (70 * KIB) + b'"}',
        b'{"bogus": "' + b"b" * (70 * KIB) + b'"}',
        b"not json " * (8 * KIB),
    ],
    ids=["long-message", "unknown-field", "not-json"],
)
async def test_body_over_64k_is_413_whatever_else_is_wrong(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(
        "/api/jobs/big/events", content=body, headers={"Content-Type": "application/json"}
    )
    _error(response, 413)
    assert (await client.get("/api/jobs/big")).status_code == 404


async def test_oversized_request_headers_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/jobs", headers={"X-Padding": "p" * (64 * KIB)})
    _error(response, 431)


async def test_milestone_clients_per_job_are_bounded(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/jobs/gate/events", json={"progress": 1})).status_code == 202
    bad = await client.get("/api/jobs/gate/milestone", params={"client": "x" * 129})
    _error(bad, 400)
    many = await client.get(
        "/api/jobs/gate/milestone", params={"milestones": ",".join(["5"] * 101)}
    )
    _error(many, 400)


async def _try_streams(hub: ThreadHub, count: int) -> list[RawStream] | None:
    """`count` streams that each got their snapshot; None (all closed) if one was turned away."""
    streams = [await RawStream.open(hub.url, "/api/jobs/full/events") for _ in range(count)]
    events = [await stream.next_event() for stream in streams]
    if all(event is not None and event.event == "snapshot" for event in events):
        return streams
    await asyncio.gather(*(s.aclose() for s in streams))
    return None


async def _open_streams(hub: ThreadHub, count: int) -> list[RawStream]:
    streams = await _try_streams(hub, count)
    assert streams is not None, "a stream was turned away below the limit"
    return streams


async def test_past_max_connections_streams_are_turned_away_and_json_gets_503(
    start_hub: HubFactory,
) -> None:
    hub = start_hub(max_connections=2)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post("/api/jobs/full/events", json={"progress": 1})).status_code == 202
        streams = await _open_streams(hub, 2)
        try:
            # A stream gets 200, a jittered retry: of 5-15 s, and a close (docs/api.md §3).
            retries = set()
            for _ in range(3):
                async with await RawStream.open(hub.url, "/api/jobs/full/events") as refused:
                    assert refused.status == 200
                    assert refused.headers["content-type"].startswith("text/event-stream")
                    blocks = await refused.blocks_until_close(timeout=5)
                    assert len(blocks) == 1 and blocks[0].event is None
                    assert blocks[0].retry is not None and 5000 <= blocks[0].retry <= 15000
                    retries.add(blocks[0].retry)
            assert len(retries) > 1, "the retry hint is not jittered"
            poll = await http.get("/api/jobs/full")
            assert "limit" in _error(poll, 503)
            assert int(poll.headers["retry-after"]) >= 1
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
        finally:
            await asyncio.gather(*(s.aclose() for s in streams))

        # Once a client leaves, its slot is free again.
        await eventually(
            lambda: http.get("/api/jobs/full"),
            lambda response: response.status_code == 200,
            5,
            "a freed slot admits a request",
            interval=0.02,
        )


async def test_clients_that_leave_before_the_stream_starts_free_their_slot(
    start_hub: HubFactory,
) -> None:
    hub = start_hub(max_connections=3)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post("/api/jobs/full/events", json={"progress": 1})).status_code == 202
        port = int(hub.url.rsplit(":", 1)[1])
        for i in range(50):
            # Send a request and vanish: before any answer, or right after the first bytes.
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /api/jobs/full/events HTTP/1.1\r\nHost: x\r\n\r\n")
                if i % 2:
                    sock.recv(1)

        # The hub notices each vanished client a moment later; until then it may turn a
        # stream away. Every slot must come back.
        streams = await eventually(
            lambda: _try_streams(hub, 3),
            lambda opened: opened is not None,
            10,
            "every slot came back",
            interval=0.05,
        )
        assert streams is not None
        await asyncio.gather(*(s.aclose() for s in streams))
