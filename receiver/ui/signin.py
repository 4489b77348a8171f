"""Signing in with an API key, and out again.

The sign-in form is protected before any session exists by a pre-session cookie: GET sets a
random nonce (``SameSite=Strict``, ``HttpOnly``) and the form carries HMAC(nonce); a POST
must bring both, so a form on another site (which can neither read the token nor make the
browser send the cookie) cannot sign a victim in under the attacker's key. The Origin checks
of every POST apply here too. Failed sign-ins are counted per client address and refused for
a while past `SIGN_IN_FAILURES_PER_MINUTE`; the key typed is never echoed back.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.auth import SCOPES, Denied
from receiver.ui.csrf import cross_site
from receiver.ui.forms import FormError, read_form
from receiver.ui.headers import secure
from receiver.ui.kit import Page, UiRoute, describe
from receiver.ui.session import COOKIE, PATH, SIGN_IN_COOKIE, new_nonce, tokens_match
from receiver.ui.state import UiState

SIGN_IN = "/ui/sign-in"
SIGN_IN_FORM_SECONDS = 3600


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of this site, never elsewhere."""
    if (
        value
        and value.startswith("/ui/")
        and "\\" not in value
        and "//" not in value
        and value.isprintable()
    ):
        return value
    return "/ui/"


def secure_cookie(state: UiState, request: Request) -> bool:
    mode = state.settings.secure_cookie
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def identify(state: UiState, presented: str) -> str | None:
    """The name of the configured key `presented` is, compared in constant time."""
    presented = presented.strip()
    if not presented or any(c.isspace() for c in presented):
        return None
    for scope in sorted(SCOPES):
        who = state.app.keys.authorize(f"Bearer {presented}", scope)
        if not isinstance(who, Denied):
            return who
        if who.status == 401:
            return None  # unknown: no need to try the other scopes
    return None  # a key with none of the scopes the dashboard uses


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def sign_in_routes(state: UiState) -> list[BaseRoute]:
    async def form(
        request: Request, target: str, *, status: int = 200, error: str = ""
    ) -> Response:
        nonce = new_nonce()
        token = (await state.signer()).sign_in_token(nonce)
        page = state.render(
            request,
            "sign_in.html",
            {"token": token, "next": target, "error": error, "title": "Sign in"},
            status=status,
        )
        page.set_cookie(
            SIGN_IN_COOKIE,
            nonce,
            max_age=SIGN_IN_FORM_SECONDS,
            path=SIGN_IN,
            secure=secure_cookie(state, request),
            httponly=True,
            samesite="strict",
        )
        return page

    async def show(request: Request) -> Response:
        """Dashboard: the sign-in form"""
        target = safe_next(request.query_params.get("next"))
        session = await state.session(request)
        if session is not None and state.scopes_of(session.key_name) is not None:
            return secure(RedirectResponse(target, status_code=303))
        return await form(request, target)

    async def submit(request: Request) -> Response:
        """Dashboard: sign in with an API key"""
        refused = cross_site(request)
        if refused is not None:
            return state.error(request, 403, "Refused", f"{refused}; not signed in.")
        client = client_of(request)
        wait = state.limiter.retry_after(client)
        if wait is not None:
            page = await form(
                request,
                "/ui/",
                status=429,
                error=f"Too many failed sign-ins from here; try again in {wait:.0f} seconds.",
            )
            page.headers["retry-after"] = f"{wait:.0f}"
            return page
        try:
            fields = await read_form(request)
        except FormError as exc:
            return state.error(request, exc.status, "Refused", str(exc))
        target = safe_next(fields.get("next"))
        signer = await state.signer()
        nonce = request.cookies.get(SIGN_IN_COOKIE)
        if nonce is None or not tokens_match(signer.sign_in_token(nonce), fields.get("csrf")):
            return await form(
                request,
                target,
                status=403,
                error="This sign-in form expired or did not come from this site; "
                "it has been renewed, please try again.",
            )
        name = identify(state, fields.get("key", ""))
        if name is None:
            state.limiter.failed(client)
            return await form(
                request,
                target,
                status=401,
                error="Sign-in failed: that is not an API key of this receiver "
                "(or it has none of the scopes the dashboard uses).",
            )
        _, cookie = signer.issue(name, now=state.app.clock(), hours=state.settings.session_hours)
        answer = secure(RedirectResponse(target, status_code=303))
        answer.set_cookie(
            COOKIE,
            cookie,
            max_age=int(state.settings.session_hours * 3600),
            path=PATH,
            secure=secure_cookie(state, request),
            httponly=True,
            samesite="strict",
        )
        answer.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN, httponly=True, samesite="strict")
        return answer

    async def sign_out(request: Request, page: Page) -> Response:
        """Dashboard: sign out"""
        session = await state.session(request)
        if session is not None:
            await state.revoke(session)
        answer = RedirectResponse(SIGN_IN, status_code=303)
        answer.delete_cookie(
            COOKIE,
            path=PATH,
            secure=secure_cookie(state, request),
            httponly=True,
            samesite="strict",
        )
        return answer

    sign_in = Route(SIGN_IN, show, methods=["GET"])
    sign_in_post = Route(SIGN_IN, submit, methods=["POST"])
    for route in (sign_in, sign_in_post):
        route.openapi = describe(  # type: ignore[attr-defined]
            route.path, route.methods or set(), (route.endpoint.__doc__ or "").strip(), False
        )
    return [
        sign_in,
        sign_in_post,
        UiRoute(
            "/ui/sign-out", sign_out, scope=sorted(SCOPES), methods=("POST",), templates_dir=None
        ),
    ]
