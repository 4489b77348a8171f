"""Baseline (a) for bench/intake_bench.py: a bare Starlette app with one POST route.

It reads the whole body and answers a small JSON 200, which is the least any webhook
receiver built on Starlette must do. Everything the real intake costs beyond this is what
the benchmark's ratio b/a shows.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def receive(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"status": "accepted", "bytes": len(body)})


app = Starlette(routes=[Route("/callbacks/{source}", receive, methods=["POST"])])
