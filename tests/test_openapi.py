"""``GET /openapi.json`` and ``GET /docs``: the description validates as OpenAPI 3.1, lists every
route the app serves, and a bounded schemathesis run against a live `taskhook serve` finds no
5xx and no answer that does not conform to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from handlers.ledger.query import KNOWN
from receiver.app import TaskhookApp
from tests.conftest import OPS_KEY, AppFactory, client_for
from tests.test_cli import free_port
from tests.test_crash import start, stop
from tests.test_scale_sdk import snapshot

KEY = "openapi-key-0123456789"
CLOUDFACTORY = (
    Path(__file__).resolve().parents[1] / "samples" / "cloudfactory" / "task_completed.json"
)
SCOPES = ["tasks.read", "deliveries.read", "deliveries.write", "task.read", "task.edit"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 20
TIME_BUDGET = 120.0  # seconds for the whole run; operations past it are not exercised


def ledger_app(build_app: AppFactory) -> TaskhookApp:
    return build_app(handlers=["handlers.ledger", "handlers.throughput"])


async def test_the_document_is_valid_openapi_3_1_and_lists_every_route(
    build_app: AppFactory,
) -> None:
    app = ledger_app(build_app)
    async with app.started(), client_for(app) as client:
        answer = await client.get("/openapi.json")
        page = await client.get("/docs")
    assert answer.status_code == 200
    spec = answer.json()
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on anything OpenAPI 3.1 does not allow
    served = {
        (method.lower(), route.path)
        for route in app.http.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert served <= described
    assert ("post", "/callbacks/{source}") in described
    for method, path in described:
        assert spec["paths"][path][method]["summary"] != "(not described)", (method, path)
    callback = spec["paths"]["/callbacks/{source}"]["post"]["responses"]
    assert {"200", "400", "401", "404", "405", "413", "415", "503"} <= set(callback)
    listing = spec["paths"]["/v1/tasks"]["get"]
    assert {p["name"] for p in listing["parameters"]} == KNOWN
    assert {"bearerAuth", "basicAuth"} == set(spec["components"]["securitySchemes"])
    assert {"basicAuth": ["tasks.read"]} in listing["security"]
    assert spec["paths"]["/v1/deliveries"]["get"]["security"] == [
        {"bearerAuth": ["deliveries.read"]}
    ]
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v1/deliveries/{delivery_id}/retry" in page.text
    assert "<script" not in page.text


async def test_a_plugin_describes_its_own_route(build_app: AppFactory) -> None:
    from starlette.responses import PlainTextResponse

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    described = Route("/v1/hello", hello, methods=["GET"])
    described.openapi = {  # type: ignore[attr-defined]
        "get": {"summary": "Say hi", "responses": {"200": {"description": "hi"}}}
    }
    bare = Route("/v1/bare/{thing}", hello, methods=["GET"])
    app = build_app(setup=lambda registry: registry.add_routes([described, bare]))
    async with app.started(), client_for(app) as client:
        spec = (await client.get("/openapi.json")).json()
    validate(spec)
    assert spec["paths"]["/v1/hello"]["get"]["summary"] == "Say hi"
    generic = spec["paths"]["/v1/bare/{thing}"]["get"]
    assert generic["parameters"][0]["name"] == "thing"
    assert "/v1/task/{task_id}" not in spec["paths"]  # the ledger is not loaded here
    assert OPS_KEY  # the conftest keys are not in the document
    assert OPS_KEY not in str(spec)


def fuzz(operation: Any, server: str, headers: dict[str, str], failures: list[str]) -> None:
    """At most MAX_EXAMPLES generated requests to one operation, each answer checked."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        try:
            case.call_and_validate(base_url=server, headers=headers, checks=CHECKS, timeout=10)
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.label}: {exc}")

    run()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger", "handlers.throughput"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "openapi.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        '[sources.cloudfactory]\nkind = "cloudfactory"\nverify = "none"\nworkstream_id = "ws1"\n'
        f'[api.keys.all]\nkey = "{KEY}"\nscopes = {SCOPES!r}\n'.replace("'", '"')
        + "[dispatch]\npoll_interval_seconds = 0.05\n"
    )
    port = free_port()
    proc = start(config, port, tmp_path / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_nonconforming_answer(server: str) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server, headers=bearer) as client:
        for n in range(3):  # something to list, show and page through
            assert client.post("/callbacks/refonte", content=snapshot(n)).status_code == 200
        spec = client.get("/openapi.json").json()
        first = client.get("/v1/deliveries", params={"limit": 1}).json()
    validate(spec)
    schema = schemathesis.openapi.from_dict(spec)
    # What generated values rarely reach: real ids, a real page token, a valid callback.
    delivery_id, task_id = first["docs"][0]["delivery_id"], first["docs"][0]["task_id"]
    known = [
        schema["/v1/deliveries/{delivery_id}"]["GET"].Case(
            path_parameters={"delivery_id": delivery_id}
        ),
        schema["/v1/deliveries"]["GET"].Case(query={"limit": 1, "next_token": first["next_token"]}),
        schema["/v1/task/{task_id}"]["GET"].Case(path_parameters={"task_id": task_id}),
        schema["/v1/tasks"]["GET"].Case(query={"limit": 1, "limited_response": "true"}),
        schema["/callbacks/{source}"]["POST"].Case(
            path_parameters={"source": "refonte"},
            body=orjson.loads(snapshot(0)),
            media_type="application/json",
        ),
        schema["/v1/workstreams/{workstream_id}/task_completed"]["POST"].Case(
            path_parameters={"workstream_id": "ws1"},
            body=orjson.loads(CLOUDFACTORY.read_bytes()),
            media_type="application/json",
        ),
    ]
    for case in known:
        answer = case.call_and_validate(base_url=server, headers=bearer, checks=CHECKS)
        assert answer.status_code in (200, 202), (case.path, answer.text)
    exercised: list[str] = []
    failures: list[str] = []
    deadline = time.monotonic() + TIME_BUDGET
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document loads
        operation = result.ok()
        callback = operation.path.startswith(("/callbacks/", "/v1/workstreams/"))
        if operation.method.upper() != "GET" and not callback:
            continue  # the admin writes are described, not fuzzed
        if time.monotonic() > deadline:
            failures.append(f"time budget spent before {operation.label}")
            break
        exercised.append(operation.label)

        fuzz(operation, server, bearer, failures)
    assert "GET /v1/tasks" in exercised
    assert "POST /callbacks/{source}" in exercised
    assert "POST /v1/workstreams/{workstream_id}/task_completed" in exercised
    assert "POST /callbacks/cloudfactory" in exercised
    assert not failures, "\n\n".join(failures[:10])
