"""Pipelines: ordered stages, each owning a percent range `[start, end)` (docs/api.md §5).

Built-in pipelines ship here; users add their own in a TOML file:

    [pipelines.transcode]
    stages = [
      { key = "fetch", label = "Fetching", start = 0, expected_seconds = 20 },
      { key = "encode", label = "Encoding", start = 10, chunks = true },
      { key = "publish", label = "Publishing", start = 90 },
    ]

A stage ends where the next one starts; the last ends at 100 (or at its own `end`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    """One stage of a pipeline and the percent range it owns."""

    key: str
    label: str
    start: float
    end: float
    expected_seconds: float | None = None
    chunks: bool = False


@dataclass(frozen=True, slots=True)
class Pipeline:
    """An ordered list of stages with increasing, non-overlapping ranges."""

    name: str
    stages: tuple[Stage, ...]

    def stage(self, key: str) -> Stage:
        """The stage named `key`; `ValueError` names the known ones otherwise."""
        for stage in self.stages:
            if stage.key == key:
                return stage
        known = ", ".join(s.key for s in self.stages)
        raise ValueError(f"unknown stage {key!r} for pipeline {self.name!r} (known: {known})")

    def to_json(self) -> dict[str, Any]:
        """The `GET /api/pipelines` form of this pipeline."""
        return {
            "name": self.name,
            "stages": [
                {
                    "key": s.key,
                    "label": s.label,
                    "start": s.start,
                    "end": s.end,
                    "expected_seconds": s.expected_seconds,
                    "chunks": s.chunks,
                }
                for s in self.stages
            ],
        }


class _StageSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: str
    start: float
    label: str | None = None
    end: float | None = None
    expected_seconds: float | None = None
    chunks: bool = False


class _PipelineSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stages: list[_StageSpec]


class _PipelinesFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Each pipeline is converted on its own, so that an error can name it.
    pipelines: dict[str, dict[str, Any]]


def build_pipeline(name: str, specs: Iterable[_StageSpec]) -> Pipeline:
    """Check stage specs and turn them into a `Pipeline`; `ValueError` says what is wrong."""
    specs = list(specs)
    if not specs:
        raise ValueError(f"pipeline {name!r} has no stages")
    for i in range(1, len(specs)):
        previous, spec = specs[i - 1], specs[i]
        if spec.start <= previous.start:
            # Checked first: otherwise the stage before would read as ending below its start.
            raise ValueError(
                f"pipeline {name!r}, stage {i + 1} ({spec.key!r}): start {spec.start:g} is not "
                f"after the previous stage's start {previous.start:g} (stages must be listed in "
                "increasing order)"
            )
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"pipeline {name!r}, stage {i + 1} ({spec.key!r})"
        if spec.key in seen:
            raise ValueError(f"{where}: duplicate stage key")
        seen.add(spec.key)
        nxt = specs[i + 1].start if i + 1 < len(specs) else None
        end = spec.end if spec.end is not None else (nxt if nxt is not None else 100.0)
        if not 0 <= spec.start <= 100 or not 0 <= end <= 100:
            raise ValueError(f"{where}: start and end must lie within 0-100")
        if end < spec.start:
            raise ValueError(f"{where}: end {end:g} is below start {spec.start:g}")
        if stages and spec.start < stages[-1].end:
            raise ValueError(
                f"{where}: start {spec.start:g} overlaps the previous stage, which ends at "
                f"{stages[-1].end:g} (ranges must not overlap)"
            )
        if spec.expected_seconds is not None and spec.expected_seconds <= 0:
            raise ValueError(f"{where}: expected_seconds must be positive")
        label = spec.label or spec.key.replace("_", " ").capitalize()
        stages.append(
            Stage(
                key=spec.key,
                label=label,
                start=spec.start,
                end=end,
                expected_seconds=spec.expected_seconds,
                chunks=spec.chunks,
            )
        )
    return Pipeline(name=name, stages=tuple(stages))


def _spec(key: str, start: float, label: str, **extra: Any) -> _StageSpec:
    return _StageSpec(key=key, start=start, label=label, **extra)


BUILTIN_PIPELINES: Final[Mapping[str, Pipeline]] = {
    p.name: p
    for p in (
        build_pipeline(
            "video",
            [
                _spec("queued", 0, "Queued"),
                _spec("downloading", 5, "Downloading video", expected_seconds=30),
                _spec("downloaded", 15, "Video downloaded"),
                _spec("uploading", 18, "Uploading video"),
                _spec("processing_started", 20, "Processing started"),
                _spec("transcribing", 25, "Transcribing audio", expected_seconds=60),
                _spec("analyzing", 50, "Analyzing content", expected_seconds=45),
                _spec("processing", 70, "Processing clips"),
                _spec("posting_tiktok", 80, "Posting to TikTok"),
                _spec("posting_instagram", 85, "Posting to Instagram"),
                _spec("uploading_clips", 90, "Uploading clips"),
                _spec("completed", 100, "Completed"),
            ],
        ),
        build_pipeline(
            "pdf",
            [
                _spec("parse", 0, "Parsing PDF"),
                _spec("extract", 25, "Extracting text"),
                _spec("process", 50, "Processing content"),
                _spec("finalize", 75, "Finalizing"),
            ],
        ),
        build_pipeline(
            "ocr",
            [
                _spec("split", 0, "Splitting document"),
                _spec("chunks", 5, "Processing chunks", chunks=True),
                _spec("merge", 90, "Merging OCR results"),
            ],
        ),
        build_pipeline(
            "summary",
            [
                _spec("connecting", 5, "Connecting"),
                _spec("metadata", 25, "Fetching metadata"),
                _spec("transcript", 40, "Fetching transcript"),
                _spec("analyzing", 60, "Analyzing"),
                _spec("generating", 80, "Generating summary", expected_seconds=20),
            ],
        ),
    )
}


class PipelineRegistry(Mapping[str, Pipeline]):
    """The pipelines a process knows: the built-ins plus any loaded from TOML."""

    def __init__(self, extra: Iterable[Pipeline] = ()) -> None:
        self._pipelines: dict[str, Pipeline] = dict(BUILTIN_PIPELINES)
        for pipeline in extra:
            self._pipelines[pipeline.name] = pipeline

    def __getitem__(self, name: str) -> Pipeline:
        return self._pipelines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pipelines)

    def __len__(self) -> int:
        return len(self._pipelines)

    def resolve(self, name: str | None) -> Pipeline | None:
        """The pipeline called `name` (None for none); `ValueError` names the known ones."""
        if name is None:
            return None
        try:
            return self._pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self._pipelines))
            raise ValueError(f"unknown pipeline {name!r} (known: {known})") from None


def load_pipelines(path: str | Path) -> PipelineRegistry:
    """Read a TOML file of extra pipelines; `ValueError` says which line is wrong and why."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read pipelines file {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"pipelines file {str(path)!r} is not valid TOML: {exc}") from exc
    where = f"pipelines file {str(path)!r}"
    try:
        spec = msgspec.convert(raw, _PipelinesFile)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    pipelines: list[Pipeline] = []
    for name, table in spec.pipelines.items():
        try:
            stages = msgspec.convert(table, _PipelineSpec).stages
        except msgspec.ValidationError as exc:
            raise ValueError(f"{where}: pipeline {name!r}: {exc}") from exc
        try:
            pipelines.append(build_pipeline(name, stages))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    return PipelineRegistry(pipelines)
