"""`GET /api/pipelines`, user pipelines in a running hub, and bad pipeline files at start."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from progress_hub.embedded import free_port
from tests.conftest import HubFactory
from tests.hub import serve_refuses

TRANSCODE = """
[pipelines.transcode]
stages = [
  { key = "fetch", label = "Fetching source", start = 0, expected_seconds = 20 },
  { key = "encode", label = "Encoding", start = 10, chunks = true },
  { key = "publish", label = "Publishing", start = 90 },
]
"""


async def test_pipelines_endpoint_lists_every_pipeline_with_its_stages(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/pipelines")

    assert response.status_code == 200
    pipelines = {p["name"]: p for p in response.json()["pipelines"]}
    assert set(pipelines) >= {"video", "pdf", "ocr", "summary"}
    assert pipelines["ocr"] == {
        "name": "ocr",
        "stages": [
            {
                "key": "split",
                "label": "Splitting document",
                "start": 0,
                "end": 5,
                "expected_seconds": None,
                "chunks": False,
            },
            {
                "key": "chunks",
                "label": "Processing chunks",
                "start": 5,
                "end": 90,
                "expected_seconds": None,
                "chunks": True,
            },
            {
                "key": "merge",
                "label": "Merging OCR results",
                "start": 90,
                "end": 100,
                "expected_seconds": None,
                "chunks": False,
            },
        ],
    }
    downloading = pipelines["video"]["stages"][1]
    assert (downloading["key"], downloading["expected_seconds"]) == ("downloading", 30)


async def test_pipelines_from_a_toml_file_serve_and_label_jobs(
    start_hub: HubFactory, tmp_path: Path
) -> None:
    path = tmp_path / "pipelines.toml"
    path.write_text(TRANSCODE, encoding="utf-8")
    hub = start_hub(pipelines=str(path))

    async with httpx.AsyncClient(base_url=hub.url) as http:
        listed = (await http.get("/api/pipelines")).json()["pipelines"]
        created = await http.post("/api/jobs", json={"job_id": "tc-1", "pipeline": "transcode"})
        moved = await http.post("/api/jobs/tc-1/events", json={"stage": "encode"})
        wrong = await http.post("/api/jobs/tc-1/events", json={"stage": "downloading"})
        snapshot = (await http.get("/api/jobs/tc-1")).json()

    transcode = next(p for p in listed if p["name"] == "transcode")
    assert [s["key"] for s in transcode["stages"]] == ["fetch", "encode", "publish"]
    assert (created.status_code, moved.status_code) == (201, 202)
    assert (snapshot["stage"], snapshot["stage_label"], snapshot["progress"]) == (
        "encode",
        "Encoding",
        10,
    )
    assert wrong.status_code == 400
    assert "unknown stage 'downloading' for pipeline 'transcode'" in wrong.json()["error"]


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0, end = 60 }, '
            '{ key = "b", start = 50 }]',
            "start 50 overlaps the previous stage, which ends at 60",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 50 }, { key = "b", start = 20 }]',
            "start 20 is not after the previous stage's start 50",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0, weight = 2 }]',
            "unknown field `weight`",
        ),
        (None, "cannot be read"),
    ],
    ids=["overlap", "not-increasing", "unknown-key", "unreadable"],
)
def test_serve_with_a_bad_pipelines_file_exits_2_with_one_line(
    tmp_path: Path, toml: str | None, says: str
) -> None:
    path = tmp_path / "pipelines.toml"
    if toml is not None:
        path.write_text(toml, encoding="utf-8")
    env = {**os.environ, "PROGRESS_PIPELINES": str(path), "PROGRESS_BROKER_URL": "memory://"}

    line = serve_refuses("--port", str(free_port()), env=env)
    assert line.startswith("progress-hub: bad configuration: ")
    assert says in line
