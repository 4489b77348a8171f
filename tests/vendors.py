"""Small fake vendor APIs (Refonte, Clarifai, TaskMonk) served on 127.0.0.1 for the pollers.

Each keeps its tasks in memory, checks the credentials its vendor uses, records the requests
it saw, and can be told to fail the next requests (`fail_next`) with a status and headers.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Fake:
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def fail_next(self, status: int, times: int = 1, **headers: str) -> None:
        self.failures.extend([(status, headers)] * times)

    def note(self, request: Request) -> Response | None:
        self.seen.append((request.method, request.url.path, dict(request.query_params)))
        if self.failures:
            status, headers = self.failures.pop(0)
            return JSONResponse({"error": "scripted failure"}, status, headers=headers)
        return None

    def paths(self, suffix: str = "") -> list[str]:
        return [path for _, path, _ in self.seen if path.endswith(suffix)]


def refonte_api(fake: Fake, api_key: str) -> Starlette:
    expected = "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()

    async def tasks(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "unauthorized"}, 401)
        q = request.query_params
        after = q.get("updated_after")
        docs = sorted(
            (t for t in fake.tasks.values() if not after or t["updated_at"] > after),
            key=lambda t: t["task_id"],
        )
        start = int(base64.b64decode(q["next_token"])) if q.get("next_token") else 0
        limit = int(q.get("limit", "100"))
        page = docs[start : start + limit]
        more = start + limit < len(docs)
        token = base64.b64encode(str(start + limit).encode()).decode() if more else None
        return JSONResponse({
            "docs": page, "total": len(docs), "limit": limit, "has_more": more,
            "next_token": token,
        })  # fmt: skip

    return Starlette(routes=[Route("/v1/tasks", tasks)])


def clarifai_api(fake: Fake, api_key: str) -> Starlette:
    async def tasks(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        if request.headers.get("authorization") != f"Key {api_key}":
            return JSONResponse({"status": {"code": 11102, "description": "Invalid key"}}, 401)
        page = int(request.query_params.get("page", "1"))
        per_page = int(request.query_params.get("per_page", "128"))
        ordered = [fake.tasks[k] for k in sorted(fake.tasks)]
        chosen = ordered[(page - 1) * per_page : page * per_page]
        return JSONResponse({"status": {"code": 10000, "description": "Ok"}, "tasks": chosen})

    return Starlette(routes=[
        Route("/v2/tasks", tasks),
        Route("/v2/users/{user}/apps/{app}/tasks", tasks),
    ])  # fmt: skip


def taskmonk_api(
    fake: Fake, client_id: str, client_secret: str, project: str, *, expires_in: int = 3600
) -> Starlette:
    """Batches hold tasks (`fake.tasks[id]["batch"]`); output jobs take two polls to finish."""
    tokens: set[str] = set()
    jobs: dict[str, dict[str, Any]] = {}

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in tokens

    async def token(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
            "client_credentials", client_id, client_secret,
        ):  # fmt: skip
            return JSONResponse({"error": "invalid_client"}, 401)
        fake.counts["tokens"] = fake.counts.get("tokens", 0) + 1
        issued = f"tok-{fake.counts['tokens']}"
        tokens.add(issued)
        return JSONResponse({"access_token": issued, "token_type": "bearer",
                             "expires_in": expires_in})  # fmt: skip

    def guard(request: Request) -> Response | None:
        if (failed := fake.note(request)) is not None:
            return failed
        if request.path_params.get("project") != project:
            return JSONResponse({"error": "unknown project"}, 404)
        if not authorized(request):
            return JSONResponse({"error": "invalid token"}, 401)
        return None

    def in_batch(batch: str) -> list[dict[str, Any]]:
        return [t for t in fake.tasks.values() if t["batch"] == batch]

    async def batches(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        names = sorted({t["batch"] for t in fake.tasks.values()})
        return JSONResponse([{"id": b, "batch_name": f"name of {b}"} for b in names])

    async def status(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        tasks = in_batch(request.path_params["batch"])
        by = [t["status"] for t in tasks]
        return JSONResponse({
            "new_count": by.count("New"), "in_progress": by.count("InProgress"),
            "completed": by.count("Completed"), "total": len(tasks),
        })  # fmt: skip

    async def output(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        ask = await request.json()
        job = f"job-{len(jobs) + 1}"
        jobs[job] = {"batch": request.path_params["batch"], "polls": 0, "ask": ask}
        return JSONResponse({"job_id": job})

    async def job_status(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        job = jobs[request.path_params["job"]]
        job["polls"] += 1
        if job["polls"] < 2:
            return JSONResponse({"status": "InProgress", "completed": 0, "total": 1})
        return JSONResponse({"status": "Completed", "completed": 1, "total": 1,
                             "file_url": f"/files/{request.path_params['job']}.json"})  # fmt: skip

    async def file(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        if not authorized(request):
            return JSONResponse({"error": "invalid token"}, 401)
        job = jobs[request.path_params["job"]]
        return JSONResponse([
            {k: v for k, v in t.items() if k != "batch"} for t in in_batch(job["batch"])
            if t["status"] != "New"
        ])  # fmt: skip

    root = "/api/project/{project}"
    return Starlette(routes=[
        Route("/api/oauth2/token", token, methods=["POST"]),
        Route(f"{root}/batch", batches),
        Route(f"{root}/batch/{{batch}}/status", status),
        Route(f"{root}/batch/{{batch}}/output", output, methods=["POST"]),
        Route(f"{root}/job/{{job}}/status", job_status),
        Route("/files/{job}.json", file),
    ])  # fmt: skip


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serve `app` on a free 127.0.0.1 port in a thread; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake vendor server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
