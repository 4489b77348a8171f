"""Start one benchmark server: ``python bench/serve.py {bare,intake} --port P [--config F]``.

Both servers are configured by `receiver.server.build_config`, the function ``taskhook serve``
uses (receiver/cli/serve.py: ``cmd_serve``), so their uvicorn settings are those of ``serve`` and
identical to each other by construction: the front door's protocol with the ``[http]`` limits
(the bare app gets the defaults), one worker, uvloop + httptools (what ``uvicorn[standard]``
installs), keep-alive from ``[http]``; on top, the benchmark's own choices: no access log, log
level warning, no proxy headers. The intake app is built exactly as ``cmd_serve`` builds it:
`load_settings`, `configure_logging`, `create_app`.

``--http stock`` is the baseline for what the limits cost: uvicorn's own httptools protocol,
with ``limit_concurrency = [http] max_concurrency``, which is what ``serve`` ran before the
front door had its own protocol; every other setting is the same. intake_bench.py passes no
such flag, so two environment variables choose for it: ``TASKHOOK_BENCH_HTTP=stock`` is the
default of ``--http``, and ``TASKHOOK_BENCH_A=intake-stock`` (or ``intake-taskhook``) makes
``bare`` (its server a) serve the intake instead of the bare app, on that protocol, from a
config written as intake_bench.py writes (b)'s (default signing, dispatch off) with its own
database. So one intake_bench.py run measures stock (a) against the front door (b), and the
swapped run (``TASKHOOK_BENCH_A=intake-taskhook TASKHOOK_BENCH_HTTP=stock``) checks that
the order within a round does not make the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn

BENCH = Path(__file__).resolve().parent
HTTP = ("taskhook", "stock")


def run(app: Any, settings: Any, *, host: str, port: int, stock: bool = False) -> None:
    from receiver.server import build_config
    from receiver.server import run as serve

    config: uvicorn.Config = build_config(
        app,
        settings,
        host=host,
        port=port,
        proxy_headers=False,
        access_log=False,
        log_level="warning",
        graceful_timeout=10,
    )
    if stock:
        config.http = "httptools"
        config.limit_concurrency = settings.http.max_concurrency
    serve(config)


def build_intake(config_path: str) -> tuple[Any, Any]:
    from receiver.app import create_app
    from receiver.config import load_settings
    from receiver.logs import configure_logging

    settings = load_settings(config_path)
    configure_logging(format=settings.log.format, level=settings.log.level)
    return create_app(settings), settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", choices=["bare", "intake"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", help="taskhook TOML (intake only)")
    default_http = os.environ.get("TASKHOOK_BENCH_HTTP", "taskhook")
    parser.add_argument("--http", choices=HTTP, default=default_http,
                        help="stock: uvicorn's own protocol, the baseline")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    server_a = os.environ.get("TASKHOOK_BENCH_A", "bare")
    if args.app == "bare" and server_a != "bare":
        from intake_bench import write_config

        if server_a.removeprefix("intake-") not in HTTP:
            parser.error(f"TASKHOOK_BENCH_A={server_a}: bare, intake-stock or intake-taskhook")
        here = Path.cwd()  # intake_bench.py runs each server in its own directory
        config = write_config(here, here / "bench.db", sign="header-token", dispatch=False)
        args.app, args.config, args.http = "intake", str(config), server_a.removeprefix("intake-")
    print(f"serving {args.app} on the {args.http} protocol", file=sys.stderr)
    stock = args.http == "stock"
    if args.app == "bare":
        from bare_app import app

        from receiver.config import Settings

        settings = Settings()
    else:
        if not args.config:
            parser.error("intake needs --config")
        app, settings = build_intake(args.config)
    # uvicorn re-raises the SIGINT it stopped on, after its graceful shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        run(app, settings, host=args.host, port=args.port, stock=stock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
