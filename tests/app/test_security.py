"""Who may write and who may read (docs/api.md §6), CORS, security headers, and what is logged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import structlog
from starlette.requests import Request
from starlette.responses import Response

from progress_hub import polling
from progress_hub.cli import main as cli_main
from pubsub.tokens import issue_token, verify_token
from tests.conditions import eventually
from tests.conftest import HubFactory
from tests.hub import spawn_hub
from tests.streams import RawStream

KEY = "publish-key-0123456789"
SECRET = "subscriber-secret-0123456789"
OTHER_SECRET = "some-other-secret"

WRITES = [
    ("POST", "/api/jobs", {"job_id": "w1"}, 201),
    ("POST", "/api/jobs/w1/events", {"progress": 5}, 202),
    ("DELETE", "/api/jobs/w1", None, 204),
]


def _assert_json_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["error"], str)


# --- publish key ----------------------------------------------------------------------


async def test_publish_key_is_needed_for_every_write(start_hub: HubFactory) -> None:
    hub = start_hub(publish_key=KEY)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        for method, path, body, _ in WRITES:
            missing = await http.request(method, path, json=body)
            _assert_json_error(missing, 401)
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = await http.request(
                method, path, json=body, headers={"Authorization": f"Bearer {KEY}x"}
            )
            _assert_json_error(wrong, 403)
        # Nothing was written by the refused requests.
        assert (await http.get("/api/jobs/w1")).status_code == 404
        for method, path, body, status in WRITES:
            allowed = await http.request(
                method, path, json=body, headers={"Authorization": f"Bearer {KEY}"}
            )
            assert allowed.status_code == status, allowed.text


@pytest.mark.parametrize(
    "relayed",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        # Headers uvicorn does not act on: the hub must not take the local proxy that sent
        # them for a loopback client.
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
async def test_without_a_publish_key_only_loopback_clients_may_write(
    start_hub: HubFactory, relayed: dict[str, str]
) -> None:
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        for method, path, body, _ in WRITES:
            _assert_json_error(await http.request(method, path, json=body, headers=relayed), 403)
        for method, path, body, status in WRITES:
            assert (await http.request(method, path, json=body)).status_code == status


@pytest.mark.parametrize(("publish_key", "warned"), [(None, True), (KEY, False)])
def test_start_warns_when_writes_are_open_to_loopback(
    start_hub: HubFactory, publish_key: str | None, warned: bool
) -> None:
    with structlog.testing.capture_logs() as logs:
        start_hub(publish_key=publish_key)
    warnings = [e for e in logs if e["event"] == "publish_key_missing"]
    assert [e["log_level"] for e in warnings] == (["warning"] if warned else [])


# --- subscriber tokens ----------------------------------------------------------------

READS = [
    "/api/jobs/r1",
    "/api/jobs",
    "/api/jobs/r1/history",
    "/api/jobs/r1/result",
    "/api/jobs/r1/milestone?client=c",
    "/api/pipelines",
    "/readyz",
    "/metrics",
    "/openapi.json",
]


def _token(jobs: list[str], ttl: float = 60, secret: str = SECRET) -> str:
    return issue_token(secret, jobs, ttl)


def _bad_tokens() -> dict[str, str]:
    good = _token(["r1"])
    payload, signature = good.split(".")
    return {
        "wrong job": _token(["other"]),
        "expired": issue_token(SECRET, ["r1"], 1, now=time.time() - 10),
        "forged": _token(["r1"], secret=OTHER_SECRET),
        "tampered": _token(["*"]).split(".")[0] + "." + signature,
        "malformed": "not-a-token",
        "three parts": f"{payload}.{signature}.x",
        "non-ascii": "é.é",
        "empty signature": f"{payload}.",
        "huge": "a" * 10_000 + ".b",
    }


async def test_every_read_but_healthz_needs_a_token(start_hub: HubFactory) -> None:
    hub = start_hub(subscriber_secret=SECRET)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post("/api/jobs/r1/events", json={"result": "done"})).status_code == 202
        assert (await http.get("/healthz")).status_code == 200
        for path in [*READS, "/api/jobs/r1/events", "/api/events"]:
            _assert_json_error(await http.get(path), 403)
        star = {"Authorization": f"Bearer {_token(['*'])}"}

        async def ready() -> httpx.Response:
            return await http.get("/readyz", headers=star)

        # Ready once the hub's subscription feed is up (it connects in the background).
        await eventually(ready, lambda r: r.status_code == 200, 5, "the hub became ready")
        for path in READS:
            response = await http.get(path, headers=star)
            assert response.status_code in (200, 204), (path, response.text)


@pytest.mark.parametrize("case", list(_bad_tokens()))
async def test_bad_tokens_get_403_json_never_500(start_hub: HubFactory, case: str) -> None:
    hub = start_hub(subscriber_secret=SECRET)
    token = _bad_tokens()[case]
    async with httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post("/api/jobs/r1/events", json={"progress": 1})).status_code == 202
        for path in ("/api/jobs/r1", "/api/jobs/r1/events"):
            _assert_json_error(await http.get(path, params={"token": token}), 403)
            header = f"Bearer {token}".encode()  # bytes: httpx would refuse non-ASCII text
            by_header = await http.get(path, headers={b"Authorization": header})
            _assert_json_error(by_header, 403)


async def test_create_job_returns_a_token_for_that_job_only(start_hub: HubFactory) -> None:
    hub = start_hub(subscriber_secret=SECRET, token_ttl=120)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        created = await http.post("/api/jobs", json={"job_id": "mine"})
        assert created.status_code == 201
        token = created.json()["token"]
        assert verify_token(SECRET, token).jobs == ["mine"]
        assert 100 < verify_token(SECRET, token).exp - time.time() <= 120
        assert (await http.post("/api/jobs", json={"job_id": "theirs"})).status_code == 201
        assert (await http.get("/api/jobs/mine", params={"token": token})).status_code == 200
        _assert_json_error(await http.get("/api/jobs/theirs", params={"token": token}), 403)
        _assert_json_error(await http.get("/api/events", params={"token": token}), 403)


async def test_create_job_has_no_token_when_reads_are_open(start_hub: HubFactory) -> None:
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        created = await http.post("/api/jobs", json={"job_id": "open"})
        assert created.status_code == 201
        assert "token" not in created.json()


def test_token_command_prints_a_token_the_hub_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["token", "--job", "a", "--job", "b", "--ttl", "60", "--secret", SECRET])
    assert code == 0
    claims = verify_token(SECRET, capsys.readouterr().out.strip())
    assert claims.jobs == ["a", "b"]


def test_token_command_without_a_job_refuses_rather_than_sign_a_master_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["token", "--secret", SECRET]) == 2
    assert "--job '*' for every job" in capsys.readouterr().err
    assert cli_main(["token", "--job", "*", "--secret", SECRET]) == 0
    assert verify_token(SECRET, capsys.readouterr().out.strip()).jobs == ["*"]


def test_token_command_without_a_secret_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROGRESS_SUBSCRIBER_SECRET", raising=False)
    assert cli_main(["token", "--job", "a"]) == 2
    assert "PROGRESS_SUBSCRIBER_SECRET" in capsys.readouterr().err


@pytest.mark.parametrize("heartbeat", [0.2, 30.0])
async def test_token_expiry_closes_an_open_stream(start_hub: HubFactory, heartbeat: float) -> None:
    hub = start_hub(subscriber_secret=SECRET, heartbeat=heartbeat)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post("/api/jobs/exp/events", json={"progress": 1})).status_code == 202
    issued = time.monotonic()
    token = _token(["exp"], ttl=1)
    async with await RawStream.open(hub.url, f"/api/jobs/exp/events?token={token}") as stream:
        assert stream.status == 200
        blocks = await stream.blocks_until_close(timeout=5)
    closed_after = time.monotonic() - issued
    assert [b.event for b in blocks if b.event] == ["snapshot"]
    # Closed within a second of the expiry, not before it, whatever the heartbeat.
    assert 1.0 <= closed_after < 3.0
    # The browser's reconnect with the same token is refused for good.
    async with await RawStream.open(hub.url, f"/api/jobs/exp/events?token={token}") as again:
        assert again.status == 403


# --- CORS and headers -----------------------------------------------------------------

ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


async def test_cors_is_closed_by_default(start_hub: HubFactory) -> None:
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        simple = await http.get("/api/jobs", headers={"Origin": ORIGIN})
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers
        preflight = await http.options("/api/jobs", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code == 405


async def test_cors_allows_configured_origins_only(start_hub: HubFactory) -> None:
    hub = start_hub(cors_origins=(ORIGIN,))
    async with httpx.AsyncClient(base_url=hub.url) as http:
        preflight = await http.options("/api/jobs", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        stranger = await http.options("/api/jobs", headers={**PREFLIGHT, "Origin": "https://x.y"})
        assert stranger.status_code == 400
        assert "access-control-allow-origin" not in stranger.headers
        assert stranger.json() == {"error": "Disallowed CORS origin."}
        simple = await http.get("/api/jobs", headers={"Origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert (await http.post("/api/jobs/c1/events", json={"progress": 1})).status_code == 202
    stream_headers = {"Origin": ORIGIN}
    async with await RawStream.open(hub.url, "/api/jobs/c1/events", headers=stream_headers) as s:
        assert s.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("path", ["/healthz", "/api/jobs", "/api/jobs/nope", "/"])
async def test_security_headers_on_every_answer(start_hub: HubFactory, path: str) -> None:
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        response = await http.get(path)
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp


async def test_an_unexpected_error_is_a_json_500_with_the_edge_headers(
    start_hub: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug stands in for every bug: the route table takes the handler when the app is made.
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    monkeypatch.setattr(polling, "list_jobs", broken)
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        response = await http.get("/api/jobs", headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500
    assert response.json() == {"error": "The hub hit an unexpected error."}
    assert response.headers["x-request-id"] == "trace-500"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in response.headers["content-security-policy"]


async def test_request_id_is_echoed_or_made(start_hub: HubFactory) -> None:
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url) as http:
        made = await http.get("/healthz")
        assert len(made.headers["x-request-id"]) == 16
        kept = await http.get("/healthz", headers={"X-Request-ID": "trace-42"})
        assert kept.headers["x-request-id"] == "trace-42"
        forged = await http.get("/healthz", headers={"X-Request-ID": "a b" + "x" * 100})
        assert forged.headers["x-request-id"] != "a b" + "x" * 100


# --- logs -----------------------------------------------------------------------------


async def test_logs_hold_no_secret(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    host_port = redis_url.split("//")[1].split("/")[0]
    env = {
        # A password in the URL (and in its query) must not reach the logs either; the
        # private server has none, so this hub's broker refuses it: writes answer 503.
        "PROGRESS_BROKER_URL": f"redis://user:broker-pass-123@{host_port}/0?password=q-pass-456",
        "PROGRESS_PUBLISH_KEY": KEY,
        "PROGRESS_SUBSCRIBER_SECRET": SECRET,
    }
    token = _token(["j1"])
    with spawn_hub(env, "--log-json", log=log) as hub:
        async with httpx.AsyncClient(base_url=hub.url) as http:
            auth = {"Authorization": f"Bearer {KEY}"}
            refused = await http.post("/api/jobs/j1/events", json={"progress": 1}, headers=auth)
            assert refused.status_code == 503
            wrong_key = {"Authorization": f"Bearer {KEY}-wrong"}
            await http.post("/api/jobs/j1/events", json={"progress": 1}, headers=wrong_key)
            await http.get("/api/jobs/j1", params={"token": token})
            await http.get("/api/jobs/j1", headers={"Authorization": f"Bearer {token}x"})
    text = log.read_text()
    for secret in (KEY, SECRET, token, "broker-pass-123", "q-pass-456"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    started = next(line for line in lines if line["event"] == "hub_started")
    assert started["broker"] == f"redis://***@{host_port}/0"
    assert started["publish_key"] is True and started["subscriber_tokens"] is True


async def test_log_lines_are_json_with_request_and_job_ids(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    with spawn_hub({"PROGRESS_BROKER_URL": redis_url}, "--log-json", log=log) as hub:
        async with httpx.AsyncClient(base_url=hub.url) as http:
            created = await http.post(
                "/api/jobs", json={"job_id": "j1"}, headers={"X-Request-ID": "req-1"}
            )
            assert created.status_code == 201
            deleted = await http.delete("/api/jobs/j1", headers={"X-Request-ID": "req-2"})
            assert deleted.status_code == 204
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    by_event = {line["event"]: line for line in lines}
    assert by_event["job_created"]["request_id"] == "req-1"
    assert by_event["job_created"]["job_id"] == "j1"
    assert by_event["job_deleted"]["request_id"] == "req-2"
    assert by_event["job_deleted"]["job_id"] == "j1"
    assert {"timestamp", "level"} <= set(by_event["job_created"])
