"""`progress-hub`: serve the hub, run the demo, issue tokens, watch a job."""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, NoReturn

import structlog
import uvicorn
from sse_starlette.sse import AppStatus

from progress_hub import watch
from progress_hub.embedded import EmbeddedServer, NoServerBinary
from progress_hub.logs import configure_logging
from progress_hub.main import create_app
from progress_hub.settings import Settings, comma_list
from progress_hub.shutdown import HubServer, ShutdownNotice

log = structlog.get_logger(__name__)

EXIT_BAD_CONFIG = 2
# How long streams that cannot take the goodbye (stuck clients) may hold up the exit.
SHUTDOWN_GRACE_SECONDS = 5
GC_YOUNG_THRESHOLD = 50_000


class _OneLineErrors(argparse.ArgumentParser):
    """Bad flags exit 2 with one line, like bad PROGRESS_* variables, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: {message} (see --help)\n")


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="serve the hub (flags beat PROGRESS_* variables)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        parse: Any = int if kind.startswith("int") else float if kind.startswith("float") else str
        serve.add_argument(flag, dest=f.name, type=parse, default=None, metavar=f.name.upper())
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
                embedded = EmbeddedServer(data_dir=settings.data_dir)
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
        _tune_gc()
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


def _tune_gc() -> None:
    """Collect garbage less often than CPython's default, for a process that holds many
    long-lived objects (every open stream) and allocates briskly (every connect).

    With the default threshold (700 allocations), a hub opening 5,000 streams ran 880
    young collections, each walking objects that live as long as their stream: 360 µs
    of CPU per connect, against 212 µs with this setting (issue 6, /proc CPU over 5,000
    connects). Garbage cycles wait a little longer, a few MB at most. `gc.freeze()` moves
    what start-up built (modules, the app) out of every later collection's way.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def token(args: argparse.Namespace) -> int:
    """Print a subscriber token for `--job` ids (or '*'), signed with the configured secret."""
    from pubsub.tokens import issue_token

    secret = args.secret or os.environ.get("PROGRESS_SUBSCRIBER_SECRET")
    if not secret:
        print("progress-hub: set PROGRESS_SUBSCRIBER_SECRET or --secret", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(issue_token(secret, args.job or ["*"], args.ttl, can_cancel=args.can_cancel))
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
        return watch.run(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
