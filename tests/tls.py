"""Private servers that need more than a port: TLS (a throwaway CA) and passwords.

The certificates are made with the `openssl` CLI for the test session. Nothing here
skips: a machine that cannot run them fails the tests that need them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from progress_hub.embedded import EmbeddedServer, ServerCertificates, free_port

PASSWORD = "s3cret pass"  # a space: the URL must quote it
ACL_USER = "feeder"
ACL_PASSWORD = "feeder-pass"


def make_certificates(directory: Path) -> ServerCertificates:
    """A throwaway CA and a server certificate signed by it (for 127.0.0.1 and
    localhost), in `directory`."""
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return ServerCertificates(ca=ca, cert=cert, key=key)


@dataclass
class TlsServer:
    """A private server that also listens with TLS (no client certificates asked)."""

    server: EmbeddedServer
    tls_port: int
    certificates: ServerCertificates

    @property
    def url(self) -> str:
        """A `rediss://` URL that trusts the test CA (and checks the host name)."""
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.certificates.ca}"


def start_tls_server(directory: Path) -> TlsServer:
    """Start a server with a TLS port; the caller stops `server`."""
    certificates = make_certificates(directory)
    tls_port = free_port()
    server = EmbeddedServer(
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certificates.cert),
            "--tls-key-file", str(certificates.key),
            "--tls-ca-cert-file", str(certificates.ca),
            "--tls-auth-clients", "no",
        ]
    )  # fmt: skip
    server.start()
    return TlsServer(server=server, tls_port=tls_port, certificates=certificates)


def require_passwords(server: EmbeddedServer) -> None:
    """Make `server` ask for a password (the default user's) and know an ACL user."""
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        client.acl_setuser(
            ACL_USER, enabled=True, passwords=[f"+{ACL_PASSWORD}"],
            keys=["*"], channels=["*"], commands=["+@all"],
        )  # fmt: skip
        client.config_set("requirepass", PASSWORD)
    finally:
        client.close()


def password_url(server: EmbeddedServer, user: str = "", password: str = PASSWORD) -> str:
    """The URL of `server` with credentials in it."""
    return f"redis://{quote(user)}:{quote(password)}@127.0.0.1:{server.port}/0"
