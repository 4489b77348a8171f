"""The toolkit for dashboard pages: what the built-in pages and plugins' own pages use.

A page is an endpoint ``async def endpoint(request, page) -> Response`` wrapped by
`ui_route`, which does everything a dashboard page must before the endpoint runs:

- no valid session: a GET is redirected (303) to ``/ui/sign-in?next=<this page>``;
- the signed-in key lacks `scope` (checked against the configuration on every request, so a
  key removed or narrowed loses access at once): 403, a page saying which scope is missing;
- a POST must come from this site (``Origin`` / ``Sec-Fetch-Site``) and carry the form field
  ``csrf`` equal to `Page.csrf`: else 403, with a message saying so. Its fields are in
  `Page.form` (URL-encoded forms only);
- the answer gets the dashboard's security headers (a strict Content-Security-Policy: no
  inline script or style, so put JS and CSS in static files), and ``Cache-Control: no-store``.

`Page.render` renders a Jinja2 template (autoescaped) from the plugin's `templates_dir`, then
the dashboard's own, so a plugin's template can ``{% extends "base.html" %}`` for the layout,
the navigation (built-in pages and ``registry.add_nav`` links) and the CSS; ``csrf`` and
``page`` are in every template's context. Any configured secret in the output is replaced by
``[redacted]``. A plugin registers its pages like any route, and lists them in the nav::

    from pathlib import Path
    from receiver.ui.kit import Page, ui_route

    async def overdue(request, page: Page):
        rows = await page.app.storage.query(...)
        return page.render("overdue.html", {"rows": rows})

    async def forget(request, page: Page):
        ...  # page.form["task_id"], page.key_name
        return RedirectResponse("/ui/watchdog", status_code=303)

    def register(registry):
        here = Path(__file__).parent / "templates"
        registry.add_routes([
            ui_route("/ui/watchdog", overdue, scope="tasks.read", templates_dir=here),
            ui_route("/ui/watchdog/forget", forget, scope="tasks.read", methods=("POST",)),
        ])
        registry.add_nav("Watchdog", "/ui/watchdog")

with ``overdue.html`` being ``{% extends "base.html" %}{% block content %}...{% endblock %}``
and each form carrying ``<input type="hidden" name="csrf" value="{{ csrf }}">``.
With ``[ui] enabled = false`` these routes do not exist (404), like the built-in pages.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from receiver.errors import RegistryError, StorageUnavailable
from receiver.ui.csrf import cross_site
from receiver.ui.forms import FormError, read_form
from receiver.ui.headers import secure
from receiver.ui.session import Session, tokens_match

if TYPE_CHECKING:
    from receiver.app import TaskhookApp
    from receiver.ui.state import UiState

__all__ = ["Page", "PageEndpoint", "ui_route"]

log = structlog.get_logger("taskhook.ui")

PageEndpoint = Callable[[Request, "Page"], Awaitable[Response]]


class Page:
    """The signed-in operator of one dashboard request, and the means to answer it."""

    def __init__(
        self,
        request: Request,
        state: UiState,
        session: Session,
        scopes: frozenset[str],
        csrf: str,
        form: Mapping[str, str],
        templates_dir: Path | None,
    ) -> None:
        self.request = request
        self._state = state
        self._session = session
        self._templates_dir = templates_dir
        #: The API key's name (as configured), never the key itself.
        self.key_name = session.key_name
        self.scopes = scopes
        #: The CSRF token every form must carry as its ``csrf`` field.
        self.csrf = csrf
        #: A POST's URL-encoded fields (empty for a GET).
        self.form = form

    @property
    def app(self) -> TaskhookApp:
        return self._state.app

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def render(self, template: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
        base = {"page": self, "csrf": self.csrf, "nav": self._state.nav(self.scopes)}
        return self._state.render(
            self.request,
            template,
            {**base, **context},
            status=status,
            templates_dir=self._templates_dir,
        )

    def error(self, status: int, title: str, message: str) -> HTMLResponse:
        """A page saying what went wrong, in the dashboard's layout."""
        return self.render("error.html", {"title": title, "message": message}, status=status)


def _wanted(scope: str | Sequence[str]) -> tuple[str, ...]:
    return (scope,) if isinstance(scope, str) else tuple(scope)


class UiRoute(Route):
    """A dashboard route: matches nothing until `bind` gives it its app's dashboard."""

    def __init__(
        self,
        path: str,
        endpoint: PageEndpoint,
        *,
        scope: str | Sequence[str],
        methods: Iterable[str],
        templates_dir: Path | None,
        json: bool = False,
        summary: str | None = None,
    ) -> None:
        if not (path == "/ui/" or path.startswith("/ui/")):
            raise RegistryError(f"dashboard pages live under /ui/, not {path!r}")
        self.page_endpoint = endpoint
        self.scope_needed = _wanted(scope)
        if not self.scope_needed:
            raise RegistryError(f"{path}: a dashboard page needs a scope")
        self.templates_dir = templates_dir
        self.json = json
        self.ui: UiState | None = None
        super().__init__(path, self._handle, methods=list(methods), name=endpoint.__name__)
        self.openapi = describe(path, self.methods or set(), summary or _summary(endpoint), json)

    def bind(self, state: UiState) -> None:
        self.ui = state

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.ui is None:  # the dashboard is off (or this app never built it)
            return Match.NONE, {}
        return super().matches(scope)

    async def _handle(self, request: Request) -> Response:
        state = self.ui
        assert state is not None  # `matches` let nothing through before `bind`
        try:
            return secure(await self._checked(state, request))
        except StorageUnavailable as exc:
            log.warning("storage unavailable; dashboard answered 503", error=str(exc))
            page = state.error(
                request, 503, "Database unavailable", "The database cannot answer right now."
            )
            page.headers["retry-after"] = "5"
            return page

    async def _checked(self, state: UiState, request: Request) -> Response:
        session = await state.session(request)
        scopes = state.scopes_of(session.key_name) if session else None
        if session is None or scopes is None:
            if self.json:
                return JSONResponse({"error": "sign in at /ui/sign-in"}, status_code=401)
            return RedirectResponse(sign_in_url(request), status_code=303)
        csrf = (await state.signer()).csrf(session)
        # The error pages below keep the layout (nav, sign-out) of a signed-in operator.
        bare = Page(request, state, session, scopes, csrf, {}, None)
        if not any(s in scopes for s in self.scope_needed):
            needed = " or ".join(self.scope_needed)
            return bare.error(
                403,
                "Not allowed",
                f"The key {session.key_name!r} lacks the scope {needed} this needs.",
            )
        form: Mapping[str, str] = {}
        if request.method == "POST":
            refused = cross_site(request)
            if refused is not None:
                return bare.error(403, "Refused", f"{refused}; nothing was done.")
            try:
                form = await read_form(request)
            except FormError as exc:
                return bare.error(exc.status, "Refused", str(exc))
            if not tokens_match(csrf, form.get("csrf")):
                return bare.error(
                    403,
                    "Refused",
                    "The form's CSRF token is missing or wrong (an old or forged form); "
                    "nothing was done. Reload the page and try again.",
                )
        page = Page(request, state, session, scopes, csrf, form, self.templates_dir)
        return await self.page_endpoint(request, page)


def ui_route(
    path: str,
    endpoint: PageEndpoint,
    *,
    scope: str | Sequence[str],
    methods: Iterable[str] = ("GET",),
    templates_dir: Path | None = None,
) -> Route:
    """A dashboard page at `path` (under ``/ui/``) for keys with `scope` (a sequence of
    scopes: any one of them). See the module docstring."""
    return UiRoute(path, endpoint, scope=scope, methods=methods, templates_dir=templates_dir)


def sign_in_url(request: Request) -> str:
    if request.method not in ("GET", "HEAD"):
        return "/ui/sign-in?next=/ui/"  # a form's target is no page to come back to
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/ui/sign-in?next=" + quote(here, safe="/")


def bind_all(routes: Iterable[BaseRoute], state: UiState) -> int:
    """Bind every dashboard route among `routes` (in mounts too) to `state`; how many."""
    bound = 0
    for route in routes:
        if isinstance(route, UiRoute):
            route.bind(state)
            bound += 1
        elif isinstance(route, Mount):
            bound += bind_all(route.routes, state)
    return bound


def _summary(endpoint: Callable[..., Any]) -> str:
    doc = (endpoint.__doc__ or "").strip().splitlines()
    return doc[0] if doc else f"Dashboard: {endpoint.__name__.replace('_', ' ')}"


def describe(path: str, methods: set[str], summary: str, json: bool) -> dict[str, Any]:
    """The route's OpenAPI operations: dashboard pages answer HTML to a signed-in browser."""
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^}:]+)(?::[^}]+)?}", path)
    ]
    media = "application/json" if json else "text/html"
    ops: dict[str, Any] = {}
    for method in methods - {"HEAD"}:
        slug = re.sub(r"[^a-zA-Z0-9]+", "_", path).strip("_") + (
            "_index" if path[-1] == "/" else ""
        )
        op: dict[str, Any] = {
            "operationId": f"{method.lower()}_{slug}",
            "summary": summary,
            "tags": ["dashboard"],
            "description": "A dashboard page: needs the session cookie of /ui/sign-in; "
            "POSTs need its CSRF token.",
            "responses": {
                "200": {"description": "the page", "content": {media: {}}},
                "default": {"description": "a redirect to sign-in, or a page saying why not"},
            },
        }
        if params:
            op["parameters"] = params
        ops[method.lower()] = op
    return ops
