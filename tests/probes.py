"""What fault tests read off a running hub from outside: its metrics and its memory."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def metric(http: httpx.AsyncClient, name: str) -> float:
    """The current value of one unlabelled sample on the hub's `GET /metrics`."""
    response = await http.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise KeyError(f"no sample {name!r} in /metrics")


async def settled(http: httpx.AsyncClient) -> bool:
    """True once the hub holds no stream and no broker subscription (all clients gone)."""
    open_streams = await metric(http, "progress_streams_open")
    return open_streams == 0 and await metric(http, "progress_subscriptions") == 0


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    children: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children
