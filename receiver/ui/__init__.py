"""The dashboard at ``/ui/``: server-rendered pages for operators, signed in with an API key.

`ui_routes(app)` builds the dashboard of one app — its `UiState` (session signer, templates,
sign-in limiter) — binds it to every dashboard route, the plugins' ones (made with
`receiver.ui.kit.ui_route`) included, and returns the routes the app serves. Routes are
listed one by one rather than mounted under ``/ui``, so plugins' pages under ``/ui/`` are
reached too. Plugins build their pages with `receiver.ui.kit`; the rest is private.

Modules: `kit` (pages: the session, scope and CSRF checks), `state` (what one app's
dashboard keeps), `session` (the signed cookie), `csrf` (origin checks), `forms`, `headers`
(CSP and friends), `signin` and `ratelimit`, `pages_overview`, `pages_deliveries`, `runs`
and `display` (what a delivery page shows), `templates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from receiver.ui.headers import SecuredStatic, secure
from receiver.ui.kit import bind_all, describe
from receiver.ui.pages_deliveries import delivery_routes
from receiver.ui.pages_overview import overview_routes
from receiver.ui.signin import sign_in_routes
from receiver.ui.state import UiState

if TYPE_CHECKING:
    from receiver.app import TaskhookApp

__all__ = ["ui_routes"]

STATIC = Path(__file__).resolve().parent / "static"
TASK_PAGE = "/ui/tasks/{task_id}"


async def _to_dashboard(request: Request) -> Response:
    """Dashboard: redirect to /ui/"""
    return secure(RedirectResponse("/ui/", status_code=308))


def ui_routes(app: TaskhookApp) -> list[BaseRoute]:
    state = UiState(app)
    own = [*sign_in_routes(state), *overview_routes(), *delivery_routes()]
    bind_all(own, state)
    bind_all(app.registry.routes, state)
    state.task_pages = any(getattr(r, "path", None) == TASK_PAGE for r in app.registry.routes)
    slash = Route("/ui", _to_dashboard, methods=["GET"])
    static = Mount("/ui/static", app=SecuredStatic(StaticFiles(directory=STATIC)))
    slash.openapi = describe(slash.path, {"GET"}, "Dashboard: redirect to /ui/", False)  # type: ignore[attr-defined]
    static.openapi = describe(static.path, {"GET"}, "Dashboard: static files", False)  # type: ignore[attr-defined]
    return [slash, static, *own]
