"""The security headers every ``/ui`` answer carries.

The policy allows no inline script, style or event handler at all: every byte of JS and CSS
is a file under ``/ui/static``, so an injected ``<script>`` or ``style=`` attribute is inert
even if escaping ever failed somewhere. Pages are never cached (they show live state and
carry CSRF tokens); static files are revalidated (ETag) rather than cached blindly.
"""

from __future__ import annotations

from typing import TypeVar

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COMMON = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    # For browsers that predate frame-ancestors.
    "x-frame-options": "DENY",
}


R = TypeVar("R", bound=Response)


def secure(response: R, *, cache: str = "no-store") -> R:
    """`response` with the dashboard's security headers (and `cache` as Cache-Control)."""
    response.headers.update(COMMON)
    response.headers["cache-control"] = cache
    return response


class SecuredStatic:
    """Wraps an ASGI app (StaticFiles) so its answers carry the same headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(COMMON)
                headers["cache-control"] = "no-cache"
            await send(message)

        await self.app(scope, receive, sending)
