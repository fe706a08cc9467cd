from __future__ import annotations

import httpx


async def test_healthz_answers_while_the_process_lives(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
