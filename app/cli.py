"""`progress-hub`: serve the hub, run the demo, issue tokens, watch a job, migrate keys."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis
import structlog
import uvicorn
from sse_starlette.sse import AppStatus

from progress_hub import migrate, watch
from progress_hub.embedded import EmbeddedServer, NoServerBinary
from progress_hub.logs import configure_logging
from progress_hub.main import create_app
from progress_hub.settings import ENV_PREFIX, HELP, Settings, comma_list
from progress_hub.shutdown import HubServer, ShutdownNotice
from progress_hub.tuning import keep_off_huge_pages, tune_gc
from pubsub.broker import unreachable_hint
from pubsub.brokers.connect import SCHEMES, address_of, plain_url, tls_refusal

log = structlog.get_logger(__name__)

EXIT_BAD_CONFIG = 2
# How long streams that cannot take the goodbye (stuck clients) may hold up the exit.
SHUTDOWN_GRACE_SECONDS = 5
BROKER_CHECK_TIMEOUT = 2.0


class _OneLineErrors(argparse.ArgumentParser):
    """Bad flags exit 2 with one line, like bad PROGRESS_* variables, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: {message} (see --help)\n")


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the hub (flags beat PROGRESS_* variables)",
        description="Serve the hub. Each flag is also a PROGRESS_* variable; a flag beats it.",
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        parse: Any = int if kind.startswith("int") else float if kind.startswith("float") else str
        default = f.default if f.default not in (None, ()) else "unset"
        serve.add_argument(
            flag,
            dest=f.name,
            type=parse,
            default=None,
            metavar=f.name.upper(),
            help=f"{HELP.get(f.name, f.name.replace('_', ' '))} "
            f"(PROGRESS_{f.name.upper()}; default: {default})",
        )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="hub processes sharing the port (default: 1); see docs/production.md",
    )
    serve.add_argument("--demo", action="store_true", help="also run simulated pipelines")
    serve.add_argument("--demo-speed", type=float, default=1.0, help="run the demo N times faster")
    serve.add_argument("--log-json", action="store_true", help="JSON log lines")


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None)
        if value is not None and str(f.type).startswith("tuple"):
            value = comma_list(str(value))
        overrides[f.name] = value
    return Settings.load(overrides=overrides)


def serve(args: argparse.Namespace) -> int:
    """Run the hub until SIGINT/SIGTERM; start an embedded server when no broker is set."""
    configure_logging(json=args.log_json)
    keep_off_huge_pages()  # first: before most of what the hub will allocate
    try:
        settings = _settings_from(args)
        create_app(replace(settings, broker_url=settings.broker_url or "memory://"))
    except ValueError as exc:
        print(f"progress-hub: bad configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    embedded: EmbeddedServer | None = None
    demo: subprocess.Popen[bytes] | None = None
    try:
        if settings.broker_url is None:
            try:
                embedded = EmbeddedServer(data_dir=settings.data_dir, port=settings.embedded_port)
                settings = replace(settings, broker_url=embedded.start())
            except (NoServerBinary, RuntimeError) as exc:
                print(f"progress-hub: {exc}", file=sys.stderr)
                return EXIT_BAD_CONFIG
            print(
                f"progress-hub: embedded broker at {settings.broker_url} "
                f"(data in {settings.data_dir}); workers publish with "
                f"PROGRESS_BROKER_URL={settings.broker_url}",
                flush=True,
            )
        assert settings.broker_url is not None
        problem = broker_problem(settings.broker_url)
        if problem is not None:
            print(f"progress-hub: warning: {problem}", file=sys.stderr, flush=True)
        print(f"progress-hub: serving on http://{settings.host}:{settings.port}", flush=True)
        if args.demo:
            demo_args = ["--broker-url", settings.broker_url, "--speed", str(args.demo_speed)]
            # The pipe on stdin closes when this process ends, however it ends: the
            # demo stops with it (uvicorn re-raises SIGTERM, skipping the finally below).
            demo = subprocess.Popen(
                [sys.executable, "-m", "progress_hub.cli", "demo", "--stop-with-stdin", *demo_args],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.PIPE,
            )
        if args.workers > 1:
            return _serve_workers(settings, args.workers)
        notice = ShutdownNotice()
        config = uvicorn.Config(
            create_app(settings, shutdown=notice),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,  # never shown at "warning"; skip building each line
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            lifespan="on",
        )
        # The hub ends its own streams on shutdown (app.shutdown); sse-starlette's watcher
        # would otherwise race it and cut streams before they hear where to reconnect.
        AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
        tune_gc()
        HubServer(config, notice).run()
        return 0
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(10)
            if demo.stdin is not None:
                demo.stdin.close()
        if embedded is not None:
            embedded.stop()


def _serve_workers(settings: Settings, workers: int) -> int:
    """Several hub processes on one port: uvicorn's supervisor runs `progress_hub.asgi:app`
    in each, configured by the PROGRESS_* variables set here (the embedded broker, if
    any, was started once, in this process, and its URL is among them).

    Divergence from one process: uvicorn's own workers run, not `HubServer`, so on
    SIGTERM open streams are closed by sse-starlette and browsers come back after their
    `retry:` delay rather than at once (docs/production.md).
    """
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            os.environ.pop(ENV_PREFIX + f.name.upper(), None)
        else:
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            os.environ[ENV_PREFIX + f.name.upper()] = text
    uvicorn.run(
        "progress_hub.asgi:app",
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        lifespan="on",
    )
    return 0


def broker_problem(url: str) -> str | None:
    """Why the broker at `url` cannot be used right now, or None when it answers PING.

    Said before "serving on", so that a wrong URL is found at start and not from the 503s
    that follow (the hub serves anyway and connects when the broker comes up). A cluster
    URL is checked at the node it names: any node answers PING itself.
    """
    if urlsplit(url).scheme not in SCHEMES:
        return None  # memory:// needs nothing
    try:
        client = redis.Redis.from_url(
            plain_url(url),
            socket_connect_timeout=BROKER_CHECK_TIMEOUT,
            socket_timeout=BROKER_CHECK_TIMEOUT,
        )
    except ValueError:
        return None  # a URL redis-py's client cannot parse; the hub's broker says why
    try:
        client.ping()
    except redis.RedisError as exc:
        tls = tls_refusal(exc, address_of(url))
        why = f": {tls}." if tls else f" ({type(exc).__name__}): {unreachable_hint(url)}"
        return f"the broker does not answer{why} Serving anyway; /readyz answers 503 until it does."
    finally:
        client.close()
    return None


def token(args: argparse.Namespace) -> int:
    """Print a subscriber token for the `--job` ids (`--job '*'`: every job), signed with the
    configured secret; refuses without `--job`."""
    from pubsub.tokens import issue_token

    secret = args.secret or os.environ.get("PROGRESS_SUBSCRIBER_SECRET")
    if not secret:
        print("progress-hub: set PROGRESS_SUBSCRIBER_SECRET or --secret", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not args.job:
        # A token for every job is a master key: it must be asked for by name.
        print(
            "progress-hub: name the jobs the token may read: --job JOB_ID (repeat it), "
            "or --job '*' for every job",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    print(issue_token(secret, args.job, args.ttl, can_cancel=args.can_cancel))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `progress-hub` command."""
    parser = _OneLineErrors(prog="progress-hub", description=__doc__)
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", required=True, parser_class=_OneLineErrors
    )
    _serve_parser(sub)
    tok = sub.add_parser("token", help="issue a subscriber token")
    tok.add_argument("--job", action="append", help="job id the token may read ('*': all)")
    tok.add_argument("--ttl", type=float, default=3600.0, help="seconds the token lives")
    tok.add_argument("--secret", default=None, help="default: PROGRESS_SUBSCRIBER_SECRET")
    tok.add_argument(
        "--can-cancel", action="store_true", help="the token may also ask to cancel those jobs"
    )
    demo = sub.add_parser("demo", help="run simulated pipelines against a broker")
    demo.add_argument("--broker-url", default=os.environ.get("PROGRESS_BROKER_URL"))
    demo.add_argument("--speed", default=None, help="run this many times faster")
    demo.add_argument("--rounds", default=None, help="stop after N rounds (default: never)")
    demo.add_argument("--stop-with-stdin", action="store_true", help=argparse.SUPPRESS)
    watch.add_parser(sub)
    migrate.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "token":
        return token(args)
    if args.command == "demo":
        from progress_hub.demo import main as demo_main

        demo_args = ["--broker-url", args.broker_url] if args.broker_url else []
        for flag in ("speed", "rounds"):
            if getattr(args, flag) is not None:
                demo_args += [f"--{flag}", getattr(args, flag)]
        if args.stop_with_stdin:
            demo_args.append("--stop-with-stdin")
        return demo_main(demo_args)
    if args.command == "watch":
        # Its retries are debug lines: the screen (or the one-line reason) says enough.
        configure_logging(json=False, level=logging.WARNING)
        return watch.run(args)
    if args.command == "migrate":
        return migrate.run(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
