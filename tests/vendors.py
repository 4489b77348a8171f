"""Small fake vendor APIs (Refonte, Clarifai, TaskMonk) served on 127.0.0.1 for the pollers.

Each keeps its tasks in memory, checks the credentials its vendor uses, records the requests
it saw, and can be told to fail the next requests (`fail_next`) with a status and headers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import csv
import io
import json
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
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


# The fake's own reading of Clarifai's protos (clarifai/api/resources.proto, status_code.proto),
# kept apart from the poller's tables so that a test does not check them against themselves.
CLARIFAI_ENUMS: dict[tuple[str, ...], dict[str, int]] = {
    ("type",): {"CONCEPTS_CLASSIFICATION": 1, "BOUNDING_BOX_DETECTION": 2,
                "POLYGON_DETECTION": 3},
    ("worker", "strategy"): {"PARTITIONED": 2, "FULL": 3, "DYNAMIC": 4},
    ("worker", "partitioned_strategy_info", "type"): {"EVENLY": 1, "WEIGHTED": 2},
    ("review", "strategy"): {"NONE": 1, "MANUAL": 2, "CONSENSUS": 3},
    ("input_source", "type"): {"ALL_INPUTS": 1, "SAVED_SEARCH": 2, "DATASET": 3},
}  # fmt: skip
CLARIFAI_CODES = {10000: "SUCCESS", 54001: "TASK_IN_PROGRESS", 54002: "TASK_DONE",
                  54003: "TASK_WONT_DO", 54005: "TASK_FAILED", 54006: "TASK_IDLE"}  # fmt: skip


@dataclass
class ClarifaiWire:
    """How the fake Clarifai prints protobuf JSON; a test may change it between passes.

    `fake.tasks` are written as the docs write them (enum names, status codes as numbers).
    """

    integers: bool = False  # enums as numbers, as `use_integers_for_enums` prints them
    codes: str = "number"  # status.code as a "number" (54002), "text" ("54002") or "name"
    camel: bool = False  # lowerCamelCase field names, protobuf JSON's default printing

    def code(self, code: Any) -> Any:
        if self.codes == "text":
            return str(code)
        return CLARIFAI_CODES.get(code, code) if self.codes == "name" else code

    def status(self, status: dict[str, Any]) -> dict[str, Any]:
        return {**status, "code": self.code(status["code"])} if "code" in status else status

    def render(self, task: Any) -> Any:
        if not isinstance(task, dict):
            return task
        out = copy.deepcopy(task)
        for path, numbers in CLARIFAI_ENUMS.items() if self.integers else ():
            *parents, leaf = path
            holder: Any = out
            for name in parents:
                holder = holder.get(name) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and isinstance(holder.get(leaf), str):
                holder[leaf] = numbers.get(holder[leaf], holder[leaf])
        if isinstance(out.get("status"), dict):
            out["status"] = self.status(out["status"])
        return camel_keys(out) if self.camel else out


def camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {re.sub(r"_([a-z])", lambda m: m[1].upper(), k): camel_keys(v)
                for k, v in value.items()}  # fmt: skip
    return [camel_keys(v) for v in value] if isinstance(value, list) else value


def clarifai_api(fake: Fake, api_key: str, wire: ClarifaiWire | None = None) -> Starlette:
    printing = wire or ClarifaiWire()

    async def tasks(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        if request.headers.get("authorization") != f"Key {api_key}":
            return JSONResponse({"status": {"code": 11102, "description": "Invalid key"}}, 401)
        page = int(request.query_params.get("page", "1"))
        per_page = int(request.query_params.get("per_page", "128"))
        ordered = [fake.tasks[k] for k in sorted(fake.tasks)]
        chosen = [printing.render(t) for t in ordered[(page - 1) * per_page : page * per_page]]
        ok = printing.status({"code": 10000, "description": "Ok"})
        return JSONResponse({"status": ok, "tasks": chosen})

    return Starlette(routes=[
        Route("/v2/tasks", tasks),
        Route("/v2/users/{user}/apps/{app}/tasks", tasks),
    ])  # fmt: skip


@dataclass
class TaskMonkJobs:
    """What a fake TaskMonk does with output jobs, and what it saw of them.

    `finish_after`: progress polls until a job reaches 100 % (None: never). `not_started_key`:
    the batch-status name of the not-started count (`new_count` in the Java SDK). `layout` of
    JSON files: "array" or "lines". The file is streamed in `chunk_rows` rows a write; with a
    `gate`, it stops after `gate_after` rows until the gate is set (a reader that waits for
    the whole file never sees a row).
    """

    finish_after: int | None = 2
    not_started_key: str = "not_started"
    layout: str = "array"
    chunk_rows: int = 50
    gate: threading.Event | None = None
    gate_after: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows_sent: int = 0
    files_finished: int = 0
    file_auth: list[str | None] = field(default_factory=list)
    token_via: list[str] = field(default_factory=list)
    file_fail: list[int] = field(default_factory=list)  # statuses for the next file GETs


def taskmonk_rows(
    tasks: list[dict[str, Any]], fmt: str, fields: list[str], layout: str
) -> list[str]:
    """The output file's lines: CSV (a header row, output fields flattened) or JSON."""
    if fmt == "JSON":
        docs = [json.dumps({**{k: v for k, v in t.items() if k != "batch"},
                            "batch_id": t["batch"]}) for t in tasks]  # fmt: skip
        if layout == "lines":
            return [doc + "\n" for doc in docs]
        last = len(docs) - 1
        return ["[\n", *(doc + (",\n" if n < last else "\n") for n, doc in enumerate(docs)), "]\n"]
    names = fields or sorted({k for t in tasks for k in t.get("output") or {}})
    columns = ["task_id", "external_id", "status", "completed_at", *names]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    lines = [out.getvalue()]
    for t in tasks:
        out.seek(0)
        out.truncate()
        flat = {**t, **(t.get("output") or {})}
        writer.writerow([flat.get(c) if flat.get(c) is not None else "" for c in columns])
        lines.append(out.getvalue())
    return lines


def taskmonk_api(
    fake: Fake, client_id: str, client_secret: str, project: str, *, expires_in: int = 3600,
    jobs: TaskMonkJobs | None = None,
) -> Starlette:  # fmt: skip
    """TaskMonk as its Python SDK (taskmonk/taskmonk-sdk-python, TaskMonkClient.py) calls it.

    Batches hold tasks (`fake.tasks[id]["batch"]`). The token endpoint takes the credentials
    as query parameters (the SDK's `_refresh_token`) or as an RFC 6749 form. Output:
    `POST /api/project/v2/{p}/batch/{b}/output?output_format=` with `{"field_names": [...]}`
    answers `{job_id, file_url}`; the job's progress is `{percentage, completed, total}`; the
    file is a storage-style URL fetched without a token.
    """
    tokens: set[str] = set()
    state = jobs if jobs is not None else TaskMonkJobs()

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in tokens

    async def token(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        form = dict(request.query_params)
        state.token_via.append("query" if form else "form")
        if not form:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
            "client_credentials", client_id, client_secret,
        ):  # fmt: skip
            return JSONResponse({"error": "invalid_client"}, 401)
        fake.counts["tokens"] = fake.counts.get("tokens", 0) + 1
        issued = f"tok-{fake.counts['tokens']}"
        tokens.add(issued)
        return JSONResponse({"access_token": issued, "token_type": "bearer",
                             "refresh_token": f"r-{issued}", "expires_in": expires_in})  # fmt: skip

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
            state.not_started_key: by.count("New"), "in_progress": by.count("InProgress"),
            "completed": by.count("Completed"), "total": len(tasks),
        })  # fmt: skip

    async def output(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        fmt = request.query_params.get("output_format")
        ask = await request.json()
        if fmt not in ("CSV", "JSON"):
            return JSONResponse({"error": f"unknown output_format {fmt!r}"}, 400)
        if not isinstance(ask, dict) or not isinstance(ask.get("field_names"), list):
            return JSONResponse({"error": "field_names (a list) is required"}, 400)
        exported = [t for t in in_batch(request.path_params["batch"]) if t["status"] != "New"]
        job = f"job-{len(state.jobs) + 1}"
        name = f"{secrets.token_hex(8)}.{fmt.lower()}"  # unguessable, like a signed URL
        state.jobs[job] = {"polls": 0, "total": len(exported), "ask": ask, "format": fmt,
                           "file": name}  # fmt: skip
        state.files[name] = {"lines": taskmonk_rows(exported, fmt, ask["field_names"],
                                                    state.layout)}  # fmt: skip
        return JSONResponse({"job_id": job, "file_url": f"{request.base_url}files/{name}"})

    async def job_status(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        job = state.jobs[request.path_params["job"]]
        job["polls"] += 1
        finish = state.finish_after
        percentage = 0 if finish is None else min(100, job["polls"] * 100 // finish)
        total = job["total"]
        return JSONResponse({"percentage": percentage, "completed": total * percentage // 100,
                             "total": total})  # fmt: skip

    async def file(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        state.file_auth.append(request.headers.get("authorization"))
        if state.file_fail:
            return JSONResponse({"error": "scripted failure"}, state.file_fail.pop(0))
        lines: list[str] = state.files[request.path_params["name"]]["lines"]
        header = 0 if request.path_params["name"].endswith(".json") else 1

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(lines), state.chunk_rows):
                chunk = lines[start : start + state.chunk_rows]
                state.rows_sent = max(0, start + len(chunk) - header)
                yield "".join(chunk).encode()
                if state.gate is not None and state.rows_sent >= state.gate_after:
                    for _ in range(3000):  # at most 30 s: a failed test must not hang
                        if state.gate.is_set():
                            break
                        await asyncio.sleep(0.01)
            state.files_finished += 1

        return StreamingResponse(body(), media_type="text/csv" if header else "application/json")

    return Starlette(routes=[
        Route("/api/oauth2/token", token, methods=["POST"]),
        Route("/api/project/{project}/batch", batches),
        Route("/api/project/{project}/batch/{batch}/status", status),
        Route("/api/project/v2/{project}/batch/{batch}/output", output, methods=["POST"]),
        Route("/api/project/{project}/job/{job}/status", job_status),
        Route("/files/{name}", file),
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
