"""Start one benchmark server: ``python bench/serve.py {bare,intake} --port P [--config F]``.

Both servers go through `run` below, so their uvicorn settings are identical by construction:
one worker, uvloop + httptools (what ``uvicorn[standard]`` installs), no access log, log level
warning, and the keep-alive / proxy-header / graceful-shutdown values `taskhook serve` uses
(receiver/cli.py: ``cmd_serve``). The intake app is built exactly as ``cmd_serve`` builds it:
`load_settings`, `configure_logging`, `create_app`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import uvicorn


def run(app: Any, *, host: str, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


def build_intake(config_path: str) -> Any:
    from receiver.app import create_app
    from receiver.config import load_settings
    from receiver.logs import configure_logging

    settings = load_settings(config_path)
    configure_logging(format=settings.log.format, level=settings.log.level)
    return create_app(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", choices=["bare", "intake"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", help="taskhook TOML (intake only)")
    args = parser.parse_args()
    if args.app == "bare":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bare_app import app
    else:
        if not args.config:
            parser.error("intake needs --config")
        app = build_intake(args.config)
    # uvicorn re-raises the SIGINT it stopped on, after its graceful shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
