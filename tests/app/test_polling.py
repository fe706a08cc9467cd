"""The polling fallback and the write endpoints' validation, over a real hub."""

from __future__ import annotations

import json

import httpx
import pytest


async def test_polling_etag_answers_304_until_the_job_changes(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs/p1/events", json={"progress": 10})
    first = await client.get("/api/jobs/p1")
    assert first.status_code == 200
    assert first.headers["etag"] == '"1"'
    unchanged = await client.get("/api/jobs/p1", headers={"If-None-Match": '"1"'})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    await client.post("/api/jobs/p1/events", json={"progress": 20})
    changed = await client.get("/api/jobs/p1", headers={"If-None-Match": '"1"'})
    assert (changed.status_code, changed.headers["etag"], changed.json()["progress"]) == (
        200,
        '"2"',
        20,
    )


async def test_polling_unknown_job_answers_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/jobs/never-made")
    assert response.status_code == 404
    assert "never-made" in response.json()["error"]


async def test_polling_list_filters_by_status_newest_first(client: httpx.AsyncClient) -> None:
    for job_id in ("a", "b", "c"):
        assert (await client.post("/api/jobs", json={"job_id": job_id})).status_code == 201
    await client.post("/api/jobs/a/events", json={"progress": 5})
    await client.post("/api/jobs/c/events", json={"progress": 5})
    running = (await client.get("/api/jobs?status=running&limit=50")).json()["jobs"]
    assert [job["job_id"] for job in running] == ["c", "a"]
    everything = (await client.get("/api/jobs")).json()["jobs"]
    assert [job["job_id"] for job in everything] == ["c", "b", "a"]
    assert (await client.get("/api/jobs?status=bogus")).status_code == 400
    assert (await client.get("/api/jobs?limit=0")).status_code == 400


async def test_create_job_answers_201_then_409_for_the_same_id(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/jobs", json={"job_id": "once", "pipeline": "ocr"})
    assert created.status_code == 201
    body = created.json()
    assert (body["job_id"], body["seq"], body["status"], body["pipeline"]) == (
        "once",
        1,
        "queued",
        "ocr",
    )
    again = await client.post("/api/jobs", json={"job_id": "once"})
    assert again.status_code == 409
    assert "error" in again.json()


async def test_create_job_without_body_gets_a_generated_id(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/jobs")
    assert created.status_code == 201
    assert (await client.get(f"/api/jobs/{created.json()['job_id']}")).status_code == 200


async def test_delete_job_answers_204_then_404(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs/d1/events", json={"progress": 1})
    assert (await client.delete("/api/jobs/d1")).status_code == 204
    assert (await client.get("/api/jobs/d1")).status_code == 404
    assert (await client.delete("/api/jobs/d1")).status_code == 404


async def test_result_is_served_as_published(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/jobs/r1/result")).status_code == 404
    await client.post("/api/jobs/r1/events", json={"status": "completed", "result": {"n": 1}})
    json_result = await client.get("/api/jobs/r1/result")
    assert json_result.headers["content-type"] == "application/json"
    assert json_result.json() == {"n": 1}
    await client.post("/api/jobs/r2/events", json={"status": "completed", "result": "plain"})
    text = await client.get("/api/jobs/r2/result")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "plain"


BAD_BODIES = [
    pytest.param(b"{not json", "not valid JSON", id="malformed"),
    pytest.param(b'{"bogus": 1}', "unknown field `bogus`", id="unknown-field"),
    pytest.param(b'{"progress": 101}', "$.progress", id="progress-101"),
    pytest.param(b'{"progress": -1}', "$.progress", id="progress-negative"),
    pytest.param(b'{"progress": "50"}', "$.progress", id="progress-string"),
    pytest.param(b'{"stage_progress": 1.5}', "$.stage_progress", id="fraction-over-one"),
    pytest.param(b'{"status": "exploded"}', "$.status", id="unknown-status"),
    pytest.param(b'{"stage": "nope"}', "unknown stage", id="unknown-stage"),
    pytest.param(b'{"message": 5}', "$.message", id="message-number"),
    pytest.param(b"[]", "Expected `object`", id="array"),
]


@pytest.mark.parametrize(("body", "names"), BAD_BODIES)
async def test_publish_bad_input_answers_400_and_changes_nothing(
    client: httpx.AsyncClient, body: bytes, names: str
) -> None:
    await client.post("/api/jobs", json={"job_id": "guarded", "pipeline": "pdf"})
    before = (await client.get("/api/jobs/guarded")).json()
    response = await client.post(
        "/api/jobs/guarded/events", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert names in response.json()["error"]
    assert (await client.get("/api/jobs/guarded")).json() == before


@pytest.mark.parametrize("job_id", ["..%2Fx", "x" * 200, "-x", "a%20b", "%00"])
async def test_invalid_job_ids_are_refused_not_crashed(
    client: httpx.AsyncClient, job_id: str
) -> None:
    for method, path in (
        ("POST", f"/api/jobs/{job_id}/events"),
        ("GET", f"/api/jobs/{job_id}"),
        ("GET", f"/api/jobs/{job_id}/events"),
    ):
        response = await client.request(method, path, json={"progress": 1})
        assert response.status_code in (400, 404), (method, path, response.status_code)
        assert "error" in response.json()
    assert (await client.get("/api/jobs")).json()["jobs"] == []


async def test_create_job_with_invalid_id_answers_400(client: httpx.AsyncClient) -> None:
    for job_id in ("", "../x", "x" * 200):
        response = await client.post("/api/jobs", json={"job_id": job_id})
        assert response.status_code == 400, job_id
        assert "job_id" in response.json()["error"]


async def test_publish_body_over_64_kib_answers_413(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs/big/events", json={"progress": 1})
    body = json.dumps({"meta": {"x": "y" * (65 * 1024)}}).encode()
    response = await client.post(
        "/api/jobs/big/events", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "error" in response.json()
    assert (await client.get("/api/jobs/big")).json()["seq"] == 1


async def test_publish_result_up_to_1_mib_is_accepted_beyond_is_413(
    client: httpx.AsyncClient,
) -> None:
    ok = await client.post("/api/jobs/res/events", json={"result": "r" * (1024 * 1024 - 10)})
    assert ok.status_code == 202
    too_big = await client.post("/api/jobs/res2/events", json={"result": "r" * (1024 * 1024 + 10)})
    assert too_big.status_code == 413
    assert (await client.get("/api/jobs/res2")).status_code == 404


async def test_publish_to_terminal_job_answers_409(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs/t1/events", json={"status": "cancelled"})
    response = await client.post("/api/jobs/t1/events", json={"progress": 50})
    assert response.status_code == 409
    assert "cancelled" in response.json()["error"]


async def test_unknown_route_answers_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status_code == 404
