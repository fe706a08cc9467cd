"""The install story of README.md, checked from the built distributions.

The sdist is built from the repository and the wheel from the unpacked sdist (what
`python -m build` and `pip install progress-hub-*.tar.gz` do), then the wheel is
installed into a new virtualenv outside the repository, and everything below runs
from there, never from the source tree.

Third-party dependencies. Installing them from an index would make the suite slow and
dependent on the network, so the new venv is given a *view* of this project's venv:
a directory of links to exactly the distributions that the wheel's own `Requires-Dist`
pulls in (followed transitively, extras and markers evaluated), added to the venv by a
`.pth` file. The project itself comes only from the wheel: the view never holds
progress-hub. pip then installs the wheel with `--no-index`, so it must find every
dependency the wheel declares in the view and can fetch nothing else. That keeps both
checks honest: a dependency missing from the wheel's metadata fails the install or the
import, and the library-only install sees nothing but the library's closure, so
Starlette and uvicorn are genuinely absent there, not merely unimported. The whole
module takes a few seconds; a venv with pip and a real install would take a minute.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import store_on
from tests.hub import REPO, ProcessHub, spawn_hub

SERVER_ONLY = ("starlette", "uvicorn", "sse-starlette", "rich", "prometheus-client")
STATIC_FILES = ("index.html", "progress-client.js", "react-progress.js")


@dataclass
class Venv:
    """A virtualenv outside the repository, with the wheel installed by pip."""

    root: Path
    wheel: Path
    site: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def see(self, distributions: Iterable[importlib.metadata.Distribution], name: str) -> None:
        """Make `distributions` importable here, through a view of links (module docstring)."""
        view = self.root / name
        view.mkdir()
        for dist in distributions:
            for top in _top_level_entries(dist):
                link = view / top
                if not link.exists():
                    link.symlink_to(Path(str(dist.locate_file(top))))
        (self.site / f"{name}.pth").write_text(f"{view}\n")

    def pip_install(self, requirement: str) -> None:
        """`pip install --no-index requirement` into this venv, with this project's pip."""
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(self.python), "install", "--quiet"]
            + ["--no-index", "--disable-pip-version-check", requirement],
            check=True,
            cwd=self.root,
        )

    def run(self, code: str, cwd: Path, **env: str) -> str:
        """Run `code` with this venv's Python in `cwd`; its stdout."""
        done = subprocess.run(
            [str(self.python), "-c", textwrap.dedent(code)],
            cwd=cwd,
            env={**_clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def _clean_env() -> dict[str, str]:
    """This environment without anything that points Python at the repository or its venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {key: value for key, value in os.environ.items() if key not in drop}


def _top_level_entries(dist: importlib.metadata.Distribution) -> set[str]:
    """The names a distribution puts directly in site-packages (packages, modules, dist-info)."""
    entries = set()
    for file in dist.files or ():
        top = file.parts[0]
        if top not in ("..", "__pycache__") and not top.endswith(".pth"):
            entries.add(top)
    return entries


def _closure(requires: Iterable[str], extras: set[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that `requires` (with `extras`) pulls in, transitively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [(Requirement(line), extras) for line in requires]
    while pending:
        requirement, wanted = pending.pop()
        environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate(env) for env in environments):
            continue
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in found:
            continue
        dist = importlib.metadata.distribution(name)
        found[key] = dist
        pending.extend((Requirement(line), requirement.extras) for line in dist.requires or ())
    unique = {canonicalize_name(dist.metadata["Name"]): dist for dist in found.values()}
    return list(unique.values())


def _wheel_requires(wheel: Path) -> list[str]:
    """The wheel's own `Requires-Dist` lines, read from its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    prefix = "Requires-Dist: "
    return [line[len(prefix) :] for line in metadata.splitlines() if line.startswith(prefix)]


def _build(backend_call: str, source: Path, out: Path) -> Path:
    """Run one PEP 517 hook of setuptools (this venv's, no build isolation) in `source`."""
    done = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta as b; print(b.{backend_call})"],
        cwd=source,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel, built from the sdist, installed library-only into a new venv."""
    base = tmp_path_factory.mktemp("install")
    dist = base / "dist"
    dist.mkdir()
    sdist = _build(f"build_sdist({str(dist)!r})", REPO, dist)
    with tarfile.open(sdist) as archive:
        archive.extractall(base / "src", filter="data")
    unpacked = base / "src" / sdist.name.removesuffix(".tar.gz")
    wheel = _build(f"build_wheel({str(dist)!r})", unpacked, dist)

    root = base / "venv"
    venv.create(root, with_pip=False)
    site = next((root / "lib").glob("python3*/site-packages"))
    env = Venv(root=root, wheel=wheel, site=site)
    env.see(_closure(_wheel_requires(wheel), set()), "library-deps")
    env.pip_install(str(wheel))
    return env


def test_sdist_and_wheel_ship_the_dashboard_under_progress_hub(installed: Venv) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
    for file in STATIC_FILES:
        assert f"progress_hub/static/{file}" in names
    assert "pubsub/lua/commit.lua" in names
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith("dist-info")}
    assert tops == {"progress_hub", "pubsub"}, "the wheel claims no other import name"


def test_library_only_install_publishes_without_the_hub_dependencies(
    installed: Venv, redis_url: str, tmp_path: Path
) -> None:
    closure = {
        canonicalize_name(d.metadata["Name"])
        for d in _closure(_wheel_requires(installed.wheel), set())
    }
    assert not closure & set(SERVER_ONLY), "`pip install progress-hub` pulls the hub in"

    out = installed.run(
        f"""
        import asyncio, importlib.util, pubsub
        from pubsub import Tracker

        async def main():
            async with Tracker.connect({redis_url!r}, "lib-only") as job:
                await job.set(40, "Published by a worker without the hub")
                await job.complete({{"ok": True}})

        asyncio.run(main())
        missing = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m.replace("-", "_"))]
        print(pubsub.__file__, missing)
        """,
        cwd=tmp_path,
    )
    where, missing = out.split(" ", 1)
    assert where.startswith(str(installed.site)), "pubsub came from somewhere else"
    assert missing.strip() == "[]", f"installed without being asked for: {missing}"
    assert _stored(redis_url, "lib-only") == {"status": "completed", "progress": 100.0}


def _stored(redis_url: str, job_id: str) -> dict[str, object]:
    """What the hub would serve for `job_id`, read with this project's own store."""

    async def read() -> dict[str, object]:
        async with store_on(redis_url) as store:
            snapshot = await store.get(job_id)
        return {"status": snapshot.status, "progress": snapshot.progress}

    return anyio.run(read)


@pytest.fixture(scope="module")
def server_installed(installed: Venv) -> Venv:
    """The same venv after `pip install progress-hub[server]` from the wheel."""
    server_deps = _closure(_wheel_requires(installed.wheel), {"server"})
    installed.see(server_deps, "server-deps")
    installed.pip_install(f"progress-hub[server] @ {installed.wheel.as_uri()}")
    return installed


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A throwaway project with its own `app` package, as Flask and Celery projects have."""
    package = tmp_path / "project" / "app"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('NAME = "the user\'s own app"\n')
    return package.parent


def test_hub_from_the_wheel_serves_the_dashboard_beside_a_user_app_package(
    server_installed: Venv, user_project: Path
) -> None:
    out = server_installed.run(
        """
        import app, progress_hub.main, pubsub
        print(app.NAME, progress_hub.main.STATIC_DIR.is_dir(), pubsub.JobCancelled.__name__)
        print(progress_hub.main.__file__)
        """,
        cwd=user_project,
        PYTHONPATH=str(user_project),
    )
    names, where = out.strip().splitlines()
    assert names == "the user's own app True JobCancelled"
    assert where.startswith(str(server_installed.site)), "the hub came from somewhere else"

    # The user's project on the path, as when the hub runs inside it.
    command = [str(server_installed.root / "bin" / "progress-hub"), "serve"]
    env = {"PYTHONPATH": str(user_project), "PROGRESS_BROKER_URL": "memory://"}
    with spawn_hub(env, command=command, cwd=user_project) as hub:
        _assert_serves_the_static_files(hub)
        created = httpx.post(f"{hub.url}/api/jobs", json={"job_id": "from-wheel"}, timeout=5)
    assert created.status_code == 201, created.text


def _assert_serves_the_static_files(hub: ProcessHub) -> None:
    for file in STATIC_FILES:
        response = httpx.get(f"{hub.url}/{'' if file == 'index.html' else file}", timeout=5)
        assert response.status_code == 200, file
        assert response.content == (REPO / "static" / file).read_bytes(), file
