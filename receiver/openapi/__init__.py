"""The OpenAPI 3.1 description of what an app serves (``GET /openapi.json``) and ``GET /docs``.

`build_spec(app)` walks the app's own routes at request time (nothing is built at import), so
the document lists exactly what this configuration serves: the built-in routes, the plugins'
(the ledger's and the throughput report, when loaded) and the intake's callback paths, whose
answers are described here because the intake is plain ASGI. Answer bodies are these
pydantic models (`receiver.openapi.models`), kept to what the routes return.

A plugin describes its own routes by setting an ``openapi`` attribute on each `Route`: a
mapping of lower-case method to an OpenAPI operation object, e.g.
``route.openapi = {"get": {"summary": "...", "responses": {"200": {...}}}}``. A route with
neither that nor a built-in description is still listed, with its path parameters and a
``default`` answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from receiver.openapi.models import MODELS
from receiver.openapi.page import docs_page
from receiver.records import DeliveryStatus

if TYPE_CHECKING:
    from receiver.app import TaskhookApp

Op = dict[str, Any]
OPENAPI_ATTR = "openapi"
_REF = "#/components/schemas/{model}"
__all__ = ["OPENAPI_ATTR", "build_spec", "docs_page"]


def components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    retry = {"description": "seconds to wait", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    return {
        "schemas": schemas,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key of [api.keys]; roles name its scopes",
            },
            "basicAuth": {
                "type": "http",
                "scheme": "basic",
                "description": "the API key as user name, empty password (the "
                "vendor's own clients)",
            },
        },
        "headers": {"Retry-After": retry},
    }


def _json(model: str, description: str, *, retry: bool = False) -> Op:
    answer: Op = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
    }
    if retry:
        answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return answer


def _param(name: str, where: str, schema: Op, description: str = "", **more: Any) -> Op:
    found = {"name": name, "in": where, "schema": schema, **more}
    if where == "path":
        found["required"] = True
    if description:
        found["description"] = description
    return found


_S: Op = {"type": "string"}
_UNAVAILABLE = _json("ErrorAnswer", "storage unavailable", retry=True)


def _auth(scope: str, *, basic: bool = False) -> tuple[list[Op], Op]:
    """(security, the 401/403 answers) of a route needing `scope`."""
    security = [{"bearerAuth": [scope]}, *([{"basicAuth": [scope]}] if basic else [])]
    return security, {
        "401": _json("ErrorAnswer", "missing or unknown API key"),
        "403": _json("ErrorAnswer", f"the key lacks scope {scope}"),
        "503": _UNAVAILABLE,
    }


def _delivery_body() -> Op:
    """What the intake reads: JSON, as such, as text, or in form fields (old senders)."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {}},
            "text/plain": {"schema": {"type": "string"}},
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": _S}
            },
        },
    }


def _either(description: str, *models: str) -> Op:
    """An answer whose body is one of `models` (which step refused it decides)."""
    refs = [{"$ref": _REF.format(model=m)} for m in models]
    return {"description": description, "content": {"application/json": {"schema": {
        "anyOf": refs}}}}  # fmt: skip


def _callback(app: TaskhookApp) -> Op:
    # CloudFactory sources answer as the Throughput API does: described at their own paths.
    names = sorted(
        n for n, rt in app.sources.items() if not rt.settings.polled and n not in _cf(app)
    )
    source = {"type": "string", **({"enum": names} if names else {})}
    return {
        "summary": "Receive one vendor callback: verify, store durably, acknowledge",
        # Which source checks what is configuration, not published to anyone who asks.
        "description": "No API key: each source verifies its vendor's own credentials over "
        "the exact body (an HMAC signature in headers, or a header token). 200 leaves only "
        "after the commit; an authenticated delivery that cannot be read is quarantined.",
        "tags": ["callbacks"],
        "security": [{}],
        "parameters": [_param("source", "path", source, "a configured source")],
        "requestBody": _delivery_body(),
        "responses": {
            "200": _json("CallbackAnswer", "stored (accepted) or stored before (duplicate)"),
            "400": _json("CallbackRefusal", "authenticated but unparseable: quarantined"),
            "401": _json("VerificationFailed", "verification failed: nothing stored"),
            "404": _json("ErrorAnswer", "unknown source, or one that is polled"),
            "405": _json("ErrorAnswer", "not a POST"),
            "408": _json("ErrorAnswer", "the body did not arrive in time"),
            "413": _json("TooLarge", "body over the limit (refused while streaming)"),
            "415": _json("CallbackRefusal", "content type or encoding we cannot read"),
            "503": _json("ErrorAnswer", "storage unavailable or queue full", retry=True),
        },
    }


def _cf(app: TaskhookApp) -> dict[str, str]:
    """The CloudFactory sources called back: name -> workstream id."""
    return {
        n: rt.settings.workstream_id or n
        for n, rt in app.sources.items()
        if rt.settings.kind == "cloudfactory" and not rt.settings.polled
    }


def _workstream(ids: list[str]) -> Op:
    """A CloudFactory source's report (at /v1/workstreams/{id}/task_completed with `ids`,
    and at /callbacks/<name>)."""
    answer, error = "WorkstreamAnswer", "ErrorAnswer"
    param = _param("workstream_id", "path", {"type": "string", "enum": ids})
    return {
        "summary": "CloudFactory Throughput API: one completed-work report",
        "tags": ["callbacks"],
        "security": [{}],
        "parameters": [param] if ids else [],
        "requestBody": _delivery_body(),
        "responses": {
            "202": _json(answer, "stored (or stored before)"),
            "400": _either("unparseable: quarantined (unverified: refused)", answer, error),
            "401": _json("VerificationFailed", "verification failed"),
            "404": _either("workstream not found, or a source that is polled", answer, error),
            "405": _json(error, "not a POST"),
            "408": _json(error, "the body did not arrive in time"),
            "413": _json("TooLarge", "body over the limit"),
            "415": _either("content type or encoding we cannot read", answer, error),
            "422": _json(answer, "fields refused, each named"),
            "503": _json(error, "storage unavailable or queue full", retry=True),
        },
    }


def _task_params() -> list[Op]:
    from handlers.ledger.query import KNOWN, LISTS, TIMES

    times = {t[0] for t in TIMES}
    found: list[Op] = []
    for name in sorted(KNOWN):
        canonical = {"review_status": "customer_review_status", "tag": "tags"}.get(name, name)
        if name == "limit":
            found.append(_param(name, "query", {"type": "integer", "minimum": 1, "maximum": 100,
                                                "default": 100}))  # fmt: skip
        elif name in ("limited_response", "include_attachment_url"):
            found.append(_param(name, "query", {"type": "boolean"}))
        elif name in times:
            found.append(_param(name, "query", {"type": "string", "format": "date-time"},
                                "ISO 8601 date or datetime"))  # fmt: skip
        elif canonical in LISTS:
            found.append(_param(name, "query", {"type": "array", "items": _S},
                                "any of: repeated or comma-joined", explode=True))  # fmt: skip
        else:
            found.append(_param(name, "query", _S))
    return found


def _operations() -> dict[tuple[str, str], Op]:
    """Built-in descriptions by (method, path); only those the app serves are used."""
    read, read_errors = _auth("deliveries.read")
    write, write_errors = _auth("deliveries.write")
    tasks, task_errors = _auth("tasks.read", basic=True)
    edit, edit_errors = _auth("task.edit", basic=True)
    bad = _json("ErrorAnswer", "a parameter not valid, named")
    missing = _json("ErrorAnswer", "not found")
    delivery = [_param("delivery_id", "path", _S)]
    action = _param(
        "action", "path", {"type": "string", "enum": ["complete", "discard", "unlock", "report"]}
    )
    reason: Op = {"type": "object", "properties": {"reason": {"type": ["string", "null"]}}}
    batch = {
        "type": "object",
        "required": ["task_ids"],
        "properties": {
            "task_ids": {"type": "array", "items": _S, "minItems": 1},
            **reason["properties"],
        },
    }
    statuses = {"type": "string", "enum": [s.value for s in DeliveryStatus]}
    text = {"text/plain": {"schema": _S}}
    return {
        ("get", "/healthz"): {"summary": "Liveness", "tags": ["ops"], "security": [{}],
                              "responses": {"200": _json("Health", "alive")}},
        ("get", "/readyz"): {"summary": "Readiness: the database takes a write", "tags": ["ops"],
                             "security": [{}], "responses": {
                                 "200": _json("Health", "ready"),
                                 "503": _json("Health", "not ready", retry=True)}},
        ("get", "/metrics"): {"summary": "Prometheus metrics", "tags": ["ops"], "security": [{}],
                              "responses": {"200": {"description": "text format",
                                                    "content": text}}},
        ("get", "/openapi.json"): {"summary": "This document", "tags": ["ops"], "security": [{}],
                                   "responses": {"200": {"description": "OpenAPI 3.1",
                                       "content": {"application/json": {"schema": {
                                           "type": "object"}}}}}},
        ("get", "/docs"): {"summary": "This document as a page", "tags": ["ops"],
                           "security": [{}], "responses": {"200": {"description": "HTML",
                               "content": {"text/html": {"schema": _S}}}}},
        ("get", "/v1/deliveries"): {
            "summary": "The inbox, newest first (keyset pages)", "tags": ["deliveries"],
            "security": read, "parameters": [
                _param("status", "query", statuses), _param("source", "query", _S),
                _param("task_id", "query", _S),
                _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100,
                                          "default": 100}),
                _param("next_token", "query", _S, "from the previous page")],
            "responses": {"200": _json("DeliveryPage", "a page"), "400": bad, **read_errors}},
        ("get", "/v1/deliveries/{delivery_id}"): {
            "summary": "One delivery: redacted headers, exact body, attempts, last error",
            "tags": ["deliveries"], "security": read, "parameters": delivery,
            "responses": {"200": _json("DeliveryDetail", "the delivery"), "404": missing,
                          **read_errors}},
        ("post", "/v1/deliveries/{delivery_id}/retry"): {
            "summary": "Re-run a failed, dead or quarantined delivery", "tags": ["deliveries"],
            "security": write, "parameters": delivery,
            "responses": {"202": _json("RetryAnswer", "queued again"), "404": missing,
                          "409": _json("ErrorAnswer", "not in a state that can be retried"),
                          **write_errors}},
        ("get", "/v1/task/{task_id}"): {
            "summary": "One task with its history (the vendor's task API)", "tags": ["ledger"],
            "security": tasks, "parameters": [_param("task_id", "path", _S)],
            "responses": {"200": _json("Task", "the task"), "404": missing, **task_errors}},
        ("get", "/v1/tasks"): {
            "summary": "Tasks, newest created first (the vendor's filters)", "tags": ["ledger"],
            "security": tasks, "parameters": _task_params(),
            "responses": {"200": _json("TaskPage", "a page"),
                          "400": _json("ErrorAnswer", "an unknown or invalid parameter"),
                          **task_errors}},
        ("post", "/v1/task/{task_id}/{action}"): {
            "summary": "A document-review action on one task", "tags": ["ledger"],
            "security": edit, "parameters": [_param("task_id", "path", _S), action],
            "requestBody": {"content": {"application/json": {"schema": reason}}},
            "responses": {"200": _json("ReviewAnswer", "done"),
                          "201": _json("ReviewAnswer", "reported"),
                          "400": _json("ErrorAnswer", "refused: the reason given"),
                          "404": missing, **edit_errors}},
        ("post", "/v1/tasks/{action}"): {
            "summary": "A document-review action on several tasks", "tags": ["ledger"],
            "security": edit, "parameters": [action],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": batch}}},
            "responses": {"207": _json("ReviewResults", "a result per task"),
                          "400": bad, "404": missing, **edit_errors}},
        ("get", "/v1/throughput"): {
            "summary": "Completed work by worker, use case and day", "tags": ["throughput"],
            "security": _auth("tasks.read")[0], "parameters": [
                _param("worker_id", "query", _S), _param("use_case_id", "query", _S),
                _param("since", "query", {"type": "string", "format": "date"}),
                _param("until", "query", {"type": "string", "format": "date"})],
            "responses": {"200": _json("ThroughputReport", "the report"),
                          **_auth("tasks.read")[1]}},
    }  # fmt: skip


_CONVERTOR = re.compile(r"\{(\w+)(?::\w+)?\}")


def _generic(path: str) -> Op:
    names = _CONVERTOR.findall(path)
    return {
        "summary": "(not described)",
        "parameters": [_param(n, "path", _S) for n in names],
        "responses": {"default": {"description": "not described"}},
    }


def _routes(app: TaskhookApp) -> Iterable[tuple[str, str, Op | None]]:
    for route in app.http.routes:
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        extra = getattr(route, OPENAPI_ATTR, None) or {}
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                yield _CONVERTOR.sub(r"{\1}", path), method.lower(), extra.get(method.lower())


def build_spec(app: TaskhookApp) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route `app` serves."""
    known = _operations()
    paths: dict[str, dict[str, Op]] = {"/callbacks/{source}": {"post": _callback(app)}}
    if cf := _cf(app):
        ids = sorted(set(cf.values()))
        paths["/v1/workstreams/{workstream_id}/task_completed"] = {"post": _workstream(ids)}
        for name in sorted(cf):
            paths[f"/callbacks/{name}"] = {"post": _workstream([])}
    for path, method, own in _routes(app):
        paths.setdefault(path, {})[method] = dict(
            own or known.get((method, path)) or _generic(path)
        )
    for path, item in paths.items():
        for method, op in item.items():
            op.setdefault(
                "operationId", f"{method}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}"
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskhook",
            "version": _version(),
            "description": "A durable, verifying callback receiver.",
        },
        "paths": paths,
        "components": components(),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taskhook")
    except PackageNotFoundError:
        return "0"
