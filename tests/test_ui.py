"""The dashboard's access rules, in process: sign-in, the session cookie, scopes, CSRF, the
security headers, no secret on any page, and no dashboard at all when it is disabled."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from tests.conftest import (
    BACKENDS,
    OPS_KEY,
    READ_KEY,
    SECRET,
    AppFactory,
    client_for,
    sample,
    signed,
)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TOKEN = re.compile(r'name="csrf" value="([^"]+)"')
ALL_SCOPES = ["tasks.read", "deliveries.read", "deliveries.write", "task.read", "task.edit"]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def csrf_in(html: str) -> str:
    found = TOKEN.search(html)
    assert found, "no form with a CSRF token on the page"
    return found.group(1)


async def sign_in(
    client: httpx.AsyncClient, key: str = OPS_KEY, next_page: str = "/ui/"
) -> httpx.Response:
    form = await client.get("/ui/sign-in", params={"next": next_page})
    assert form.status_code == 200
    return await client.post(
        "/ui/sign-in", data={"csrf": csrf_in(form.text), "key": key, "next": next_page}
    )


async def signed_in_token(client: httpx.AsyncClient, key: str = OPS_KEY) -> str:
    """Sign in and return the session's CSRF token (as every page's forms carry it)."""
    assert (await sign_in(client, key)).status_code == 303
    return csrf_in((await client.get("/ui/deliveries")).text)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ui_app(build_app: AppFactory, clock: Clock) -> AsyncIterator[TaskhookApp]:
    app = build_app(clock=clock, handlers=["handlers.ledger"])
    async with app.started():
        yield app


@pytest.fixture
async def ui(ui_app: TaskhookApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(ui_app) as c:
        yield c


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sign_in_sets_a_signed_strict_httponly_cookie_that_holds_no_key(
    ui: httpx.AsyncClient,
) -> None:
    answer = await sign_in(ui, next_page="/ui/deliveries?status=dead")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/deliveries?status=dead"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if "taskhook_session=" in c)
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui", "max-age=43200"} <= flags
    assert "secure" not in flags  # plain http here: "auto" leaves it off
    assert OPS_KEY not in cookie
    assert (await ui.get("/ui/deliveries")).status_code == 200


@pytest.mark.parametrize(("mode", "scheme", "secure"), [
    ("auto", "https", True), ("always", "https", True), ("never", "https", False),
])  # fmt: skip
async def test_the_cookie_is_secure_as_configured(
    build_app: AppFactory, mode: str, scheme: str, secure: bool
) -> None:
    app = build_app(ui={"secure_cookie": mode})
    transport = httpx.ASGITransport(app=app)
    async with (
        app.started(),
        httpx.AsyncClient(transport=transport, base_url=f"{scheme}://taskhook") as client,
    ):
        answer = await sign_in(client)
    cookie = next(c for c in answer.headers.get_list("set-cookie") if "taskhook_session=" in c)
    assert ("; secure" in cookie.lower()) is secure


async def test_a_wrong_key_is_refused_without_being_echoed(ui: httpx.AsyncClient) -> None:
    answer = await sign_in(ui, key="guess-0123456789")
    assert answer.status_code == 401
    assert "Sign-in failed" in answer.text
    assert "guess-0123456789" not in answer.text
    assert "taskhook_session=" not in answer.headers.get("set-cookie", "")
    assert (await ui.get("/ui/")).status_code == 303  # still signed out


async def test_failed_sign_ins_are_rate_limited_per_client(
    ui: httpx.AsyncClient, clock: Clock
) -> None:
    for _ in range(10):
        assert (await sign_in(ui, key="wrong")).status_code == 401
    limited = await sign_in(ui)  # even the right key waits now
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in limited.text
    clock.now += 61
    assert (await sign_in(ui)).status_code == 303


async def test_the_sign_in_form_needs_its_own_token_and_this_origin(
    ui: httpx.AsyncClient,
) -> None:
    form = await ui.get("/ui/sign-in")
    token = csrf_in(form.text)
    forged = await ui.post("/ui/sign-in", data={"csrf": "forged", "key": OPS_KEY})
    assert forged.status_code == 403
    assert "did not come from this site" in forged.text
    ui.cookies.delete("taskhook_sign_in")
    no_cookie = await ui.post("/ui/sign-in", data={"csrf": token, "key": OPS_KEY})
    assert no_cookie.status_code == 403
    form = await ui.get("/ui/sign-in")
    elsewhere = await ui.post(
        "/ui/sign-in",
        data={"csrf": csrf_in(form.text), "key": OPS_KEY},
        headers={"origin": "https://evil.example"},
    )
    assert elsewhere.status_code == 403
    assert "another origin" in elsewhere.text
    assert (await ui.get("/ui/")).status_code == 303


async def test_after_sign_in_only_dashboard_paths_of_this_site(ui: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/v1/deliveries", "/ui/\\x"):
        ui.cookies.clear()
        answer = await sign_in(ui, next_page=target)
        assert answer.headers["location"] == "/ui/", target


async def test_without_a_session_pages_redirect_to_sign_in(ui: httpx.AsyncClient) -> None:
    for path in ("/ui/", "/ui/deliveries?status=dead", "/ui/deliveries/dlv_x", "/ui/tasks/t1"):
        answer = await ui.get(path)
        assert answer.status_code == 303, path
        location = answer.headers["location"]
        assert location.startswith("/ui/sign-in?next="), path
    assert (await ui.get("/ui/deliveries?status=dead")).headers["location"] == (
        "/ui/sign-in?next=/ui/deliveries%3Fstatus%3Ddead"
    )
    assert (await ui.get("/ui")).headers["location"] == "/ui/"
    live = await ui.get("/ui/overview.json")
    assert live.status_code == 401  # the script's fetch: an answer, not a redirect
    post = await ui.post("/ui/deliveries/dlv_x/retry", data={"csrf": "x"})
    assert post.status_code == 303


async def test_a_tampered_or_expired_cookie_is_no_session(
    ui: httpx.AsyncClient, clock: Clock
) -> None:
    await sign_in(ui)
    good = ui.cookies["taskhook_session"]
    ui.cookies.set(
        "taskhook_session", good[:-2] + ("AA" if good[-2:] != "AA" else "BB"), path="/ui"
    )
    assert (await ui.get("/ui/")).status_code == 303
    ui.cookies.set("taskhook_session", good, path="/ui")
    assert (await ui.get("/ui/")).status_code == 200
    clock.now += 12 * 3600 + 1
    assert (await ui.get("/ui/")).status_code == 303


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_key_removed_from_the_configuration_ends_its_sessions(
    build_app: AppFactory,
) -> None:
    first = build_app()
    async with first.started(), client_for(first) as client:
        await sign_in(client)
        cookie = client.cookies["taskhook_session"]
    # The same database (same installation key), the "ops" key gone from the configuration.
    later = build_app(api={"keys": {"reader": {"key": READ_KEY, "scopes": ["tasks.read"]}}})
    async with later.started(), client_for(later) as client:
        client.cookies.set("taskhook_session", cookie, path="/ui")
        assert (await client.get("/ui/")).status_code == 303
    again = build_app()  # back: the signature is still this installation's
    async with again.started(), client_for(again) as client:
        client.cookies.set("taskhook_session", cookie, path="/ui")
        assert (await client.get("/ui/")).status_code == 200


async def test_sign_out_ends_the_session(ui: httpx.AsyncClient) -> None:
    token = await signed_in_token(ui)
    cookie = ui.cookies["taskhook_session"]
    answer = await ui.post("/ui/sign-out", data={"csrf": token})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/sign-in"
    assert "taskhook_session=" in answer.headers["set-cookie"]
    ui.cookies.set("taskhook_session", cookie, path="/ui")  # replayed: revoked here
    assert (await ui.get("/ui/")).status_code == 303


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sign_out_holds_on_every_replica_and_after_a_restart(
    build_app: AppFactory,
) -> None:
    one, two = build_app(), build_app()  # two replicas of one database
    async with (
        one.started(),
        two.started(),
        client_for(one) as first,
        client_for(two) as second,
    ):
        token = await signed_in_token(first)
        cookie = first.cookies["taskhook_session"]
        second.cookies.set("taskhook_session", cookie, path="/ui")
        assert (await second.get("/ui/")).status_code == 200  # each accepts the other's
        assert (await first.post("/ui/sign-out", data={"csrf": token})).status_code == 303
        assert (await second.get("/ui/")).status_code == 303  # a copied cookie: refused
    restarted = build_app()
    async with restarted.started(), client_for(restarted) as client:
        client.cookies.set("taskhook_session", cookie, path="/ui")
        assert (await client.get("/ui/")).status_code == 303


async def test_a_key_without_the_scope_gets_403_and_no_buttons(
    ui: httpx.AsyncClient, ui_app: TaskhookApp
) -> None:
    answer = await sign_in(ui, key=READ_KEY)  # "reader": tasks.read only
    assert answer.status_code == 303
    page = await ui.get("/ui/deliveries")
    assert page.status_code == 403
    assert "lacks the scope deliveries.read" in page.text
    assert (await ui.get("/ui/tasks")).status_code == 200
    assert (await ui.get("/ui/deliveries/retry-dead")).status_code == 403
    token = csrf_in((await ui.get("/ui/tasks")).text)
    refused = await ui.post("/ui/deliveries/retry-dead", data={"csrf": token, "confirm": "yes"})
    assert refused.status_code == 403


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_post_needs_the_csrf_token_and_this_origin(
    ui: httpx.AsyncClient,
) -> None:
    token = await signed_in_token(ui)
    data = {"confirm": "yes"}
    missing = await ui.post("/ui/deliveries/retry-dead", data=data)
    assert missing.status_code == 403
    assert "CSRF token is missing or wrong" in missing.text
    wrong = await ui.post("/ui/deliveries/retry-dead", data=data | {"csrf": token[:-1] + "x"})
    assert wrong.status_code == 403
    good = data | {"csrf": token}
    elsewhere = await ui.post(
        "/ui/deliveries/retry-dead", data=good, headers={"origin": "http://evil.example"}
    )
    assert elsewhere.status_code == 403
    for origin in ("null", "http://taskhook.evil.example", "http://evil.example/taskhook"):
        refused = await ui.post("/ui/deliveries/retry-dead", data=good, headers={"origin": origin})
        assert refused.status_code == 403, origin
    cross = await ui.post(
        "/ui/deliveries/retry-dead", data=good, headers={"sec-fetch-site": "cross-site"}
    )
    assert cross.status_code == 403
    json_body = await ui.post("/ui/deliveries/retry-dead", json=good)
    assert json_body.status_code == 415
    same = await ui.post(
        "/ui/deliveries/retry-dead",
        data=good,
        headers={"origin": "http://taskhook", "sec-fetch-site": "same-origin"},
    )
    assert same.status_code == 303
    # Behind a TLS proxy the browser says https and the default port: the same host.
    proxied = await ui.post("/ui/deliveries/retry-dead", data=good,
                            headers={"origin": "https://taskhook"})  # fmt: skip
    assert proxied.status_code == 303


async def test_every_dashboard_answer_carries_the_security_headers(
    ui: httpx.AsyncClient, ui_app: TaskhookApp
) -> None:
    stored = await ui.post("/callbacks/refonte", content=sample("01-completed.json"),
                           headers=signed())  # fmt: skip
    delivery_id = stored.json()["delivery_id"]
    signed_out = [await ui.get("/ui/sign-in"), await ui.get("/ui/"), await ui.get("/ui")]
    token = await signed_in_token(ui)
    pages = [
        "/ui/", "/ui/overview.json", "/ui/deliveries", f"/ui/deliveries/{delivery_id}",
        "/ui/deliveries/retry-dead", "/ui/deliveries/nope", "/ui/tasks",
        "/ui/tasks/576c41bf13e36b0600b02b34", "/ui/tasks/nope", "/ui/static/ui.css",
        "/ui/static/ui.js",
    ]  # fmt: skip
    answers = signed_out + [await ui.get(p) for p in pages]
    answers.append(await ui.post("/ui/deliveries/retry-dead", data={"csrf": token}))
    for answer in answers:
        where = f"{answer.request.method} {answer.request.url.path} {answer.status_code}"
        assert answer.headers["content-security-policy"] == CSP, where
        assert answer.headers["x-content-type-options"] == "nosniff", where
        assert answer.headers["referrer-policy"] == "same-origin", where
        static = "/static/" in answer.request.url.path
        assert answer.headers["cache-control"] == ("no-cache" if static else "no-store"), where
    for answer in answers:
        if answer.headers.get("content-type", "").startswith("text/html"):
            # No inline script, style or handler: the CSP would block them anyway.
            assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text)
            assert not re.search(r"\sstyle=|\son[a-z]+=", answer.text)


async def test_no_secret_on_any_page(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.ledger"])
    secrets = [SECRET, "older-secret", OPS_KEY, READ_KEY]
    async with app.started(), client_for(app) as client:
        # A source secret in an odd header, an API key in the body, as careless senders do.
        body = sample("01-completed.json").replace(
            b"red or blue", OPS_KEY.encode() + b" red or blue"
        )
        stored = await client.post("/callbacks/refonte", content=body,
                                   headers=signed() | {"x-debug": f"token={SECRET}"})  # fmt: skip
        delivery_id = stored.json()["delivery_id"]
        await app.dispatcher.drain()
        pages = [(await sign_in(client, key="wrong-" + OPS_KEY)).text]
        await signed_in_token(client)
        for path in ("/ui/", "/ui/deliveries", f"/ui/deliveries/{delivery_id}",
                     "/ui/tasks", "/ui/tasks/576c41bf13e36b0600b02b34", "/ui/overview.json",
                     "/ui/deliveries/retry-dead"):  # fmt: skip
            answer = await client.get(path)
            assert answer.status_code == 200, path
            pages.append(answer.text)
    assert "[redacted]" in pages[3]  # the delivery page: the headers and body scrubbed
    for html in pages:
        for secret in secrets:
            assert secret not in html


async def test_a_disabled_dashboard_serves_nothing(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.ledger"], ui={"enabled": False})
    async with app.started(), client_for(app) as client:
        for path in ("/ui", "/ui/", "/ui/sign-in", "/ui/deliveries", "/ui/tasks/t1",
                     "/ui/static/ui.css", "/ui/overview.json"):  # fmt: skip
            assert (await client.get(path)).status_code == 404, path
        assert (await client.post("/ui/sign-in", data={"key": OPS_KEY})).status_code == 404
        assert (await client.get("/v1/deliveries", headers={"authorization": f"Bearer {OPS_KEY}"})
                ).status_code == 200  # fmt: skip


def plugin(seen: list[str], here: Path) -> Callable[[Any], None]:
    """A plugin with a dashboard page of its own, built with the kit."""
    from starlette.responses import RedirectResponse

    from receiver.ui.kit import Page, ui_route

    async def hello(request: Any, page: Page) -> Any:
        return page.render("hello.html", {"title": "Hello", "who": page.key_name})

    async def poke(request: Any, page: Page) -> Any:
        seen.append(page.form.get("what", ""))
        return RedirectResponse("/ui/hello", status_code=303)

    def register(registry: Any) -> None:
        registry.add_routes([
            ui_route("/ui/hello", hello, scope="tasks.read", templates_dir=here),
            ui_route("/ui/hello/poke", poke, scope="task.edit", methods=("POST",)),
        ])  # fmt: skip
        registry.add_nav("Hello", "/ui/hello")

    return register


async def test_a_plugin_page_gets_the_layout_the_checks_and_a_nav_link(
    build_app: AppFactory, tmp_path: Path
) -> None:
    seen: list[str] = []
    (tmp_path / "hello.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>Hello, {{ who }}.</p>'
        '<form method="post" action="/ui/hello/poke"><input type="hidden" name="csrf" '
        'value="{{ csrf }}"></form>{% endblock %}'
    )
    keys = {"all": {"key": OPS_KEY, "scopes": ALL_SCOPES},
            "reader": {"key": READ_KEY, "scopes": ["tasks.read"]}}  # fmt: skip
    app = build_app(setup=plugin(seen, tmp_path), api={"keys": keys})
    async with app.started(), client_for(app) as client:
        assert (await client.get("/ui/hello")).status_code == 303
        token = await signed_in_token(client)
        page = await client.get("/ui/hello")
        assert page.status_code == 200
        assert "Hello, all." in page.text
        assert '<a href="/ui/hello" aria-current="page">Hello</a>' in page.text  # nav
        assert "/ui/static/ui.css" in page.text  # base.html's layout
        assert page.headers["content-security-policy"] == CSP
        assert (await client.post("/ui/hello/poke", data={"what": "x"})).status_code == 403
        done = await client.post("/ui/hello/poke", data={"what": "y", "csrf": token})
        assert done.status_code == 303
        assert seen == ["y"]
    quiet = build_app(setup=plugin(seen, tmp_path), api={"keys": keys}, ui={"enabled": False})
    async with quiet.started(), client_for(quiet) as client:
        assert (await client.get("/ui/hello")).status_code == 404


def test_the_plugin_toolkit_exports_stay_put() -> None:
    import receiver.ui
    import receiver.ui.kit

    assert receiver.ui.kit.__all__ == ["Page", "PageEndpoint", "ui_route"]
    assert receiver.ui.__all__ == ["ui_routes"]


async def test_plugin_nav_links_show_only_to_keys_that_may_open_them(
    build_app: AppFactory,
) -> None:
    keys = {
        "ops": {"key": OPS_KEY, "scopes": ["deliveries.read", "tasks.read"]},
        "inbox": {"key": "inbox-only", "scopes": ["deliveries.read"]},
    }
    app = build_app(handlers=["handlers.ledger"], api={"keys": keys})
    async with app.started():
        for key, shown in ((OPS_KEY, True), ("inbox-only", False)):
            async with client_for(app) as client:
                assert (await sign_in(client, key=key)).status_code == 303
                page = (await client.get("/ui/deliveries")).text
                assert ('href="/ui/tasks"' in page) is shown, key
