"""What the dashboard keeps per app: its signer, templates, sign-in limiter, signed-out sessions.

Built by `receiver.ui.ui_routes` for one `TaskhookApp` and bound to every dashboard route
(the plugins' too), so nothing is module-global and two apps in one process never share
sessions or templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from receiver.redaction import Redactor
from receiver.ui.headers import secure
from receiver.ui.ratelimit import FailureLimiter
from receiver.ui.revoked import Revocations
from receiver.ui.session import COOKIE, Session, Signer, derive
from receiver.ui.templates import environment

if TYPE_CHECKING:
    from receiver.app import TaskhookApp

# Failed sign-ins one client address may make in a minute.
SIGN_IN_FAILURES_PER_MINUTE = 10


@dataclass(frozen=True, slots=True)
class NavItem:
    title: str
    path: str
    scope: str | None = None  # shown only to keys with it (None: to everyone)


BUILT_IN_NAV = (
    NavItem("Overview", "/ui/", "deliveries.read"),
    NavItem("Deliveries", "/ui/deliveries", "deliveries.read"),
)


class UiState:
    def __init__(self, app: TaskhookApp) -> None:
        self.app = app
        self.settings = app.settings.ui
        self.limiter = FailureLimiter(SIGN_IN_FAILURES_PER_MINUTE, 60.0, app.clock)
        self.redactor = Redactor(app.settings.secret_values())
        self._signer: Signer | None = None
        self._signer_lock = asyncio.Lock()
        self._envs: dict[Path | None, jinja2.Environment] = {}
        # Sessions signed out before they expired: in the database, so a copied cookie is
        # refused by every replica and after a restart too.
        self._revoked = Revocations(app.storage, app.clock)
        #: Is there a task page (the ledger's) to link task ids to?
        self.task_pages = False

    async def signer(self) -> Signer:
        # The installation key is read once storage is open (the first request), then kept.
        if self._signer is None:
            async with self._signer_lock:
                if self._signer is None:
                    self._signer = Signer(derive(await self.app.storage.installation_key()))
        return self._signer

    def env(self, templates_dir: Path | None) -> jinja2.Environment:
        env = self._envs.get(templates_dir)
        if env is None:
            dirs = [templates_dir] if templates_dir is not None else []
            env = self._envs[templates_dir] = environment(dirs, self.redactor)
        return env

    def scopes_of(self, key_name: str) -> frozenset[str] | None:
        """The scopes the configuration gives `key_name` now; None when it has no such key."""
        key = self.app.settings.api.keys.get(key_name)
        if key is None or key.key is None:
            return None
        return frozenset(key.scopes)

    async def session(self, request: Request) -> Session | None:
        signer = await self.signer()
        session = signer.read(request.cookies.get(COOKIE), now=self.app.clock())
        if session is None or await self._revoked.revoked(session.sid):
            return None
        return session

    async def revoke(self, session: Session) -> None:
        await self._revoked.revoke(session.sid, session.expires)

    def nav(self, scopes: frozenset[str]) -> list[NavItem]:
        items = [item for item in BUILT_IN_NAV if item.scope is None or item.scope in scopes]
        return items + [
            NavItem(link.title, link.path)
            for link in self.app.registry.nav
            if not link.scopes or scopes.intersection(link.scopes)
        ]

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        templates_dir: Path | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        base: dict[str, Any] = {
            "request": request,
            "path": request.url.path,
            "page": None,
            "csrf": "",
            "nav": [],
            "refresh_seconds": self.settings.refresh_seconds,
            "task_pages": self.task_pages,
        }
        html = self.env(templates_dir).get_template(template).render({**base, **context})
        return secure(HTMLResponse(html, status_code=status, headers=headers))

    def error(
        self, request: Request, status: int, title: str, message: str, **context: Any
    ) -> HTMLResponse:
        return self.render(
            request, "error.html", {"title": title, "message": message, **context}, status=status
        )
