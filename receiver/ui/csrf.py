"""Cross-site request checks for every dashboard POST.

Two independent layers, either of which stops a forged form:

1. The token: every form carries ``csrf`` = HMAC(session key, session id) (the sign-in form:
   HMAC over the nonce of a pre-session cookie). A page on another site can neither read it
   nor compute it.
2. The origin: a browser sends ``Origin`` (and ``Sec-Fetch-Site``) on a POST; when present
   they must name this very host. Absent headers (old clients, curl) fall back on the token.
   The host is compared, not scheme and port: behind a TLS-terminating proxy the receiver
   sees ``http`` on its own port while the browser says ``https://host``.

The cookies are ``SameSite=Strict`` as well, so a cross-site POST does not even carry them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

# `none`: typed in or bookmarked, which a form POST is not, but harmless to allow.
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


def _host(origin: str) -> str | None:
    try:
        return urlsplit(origin).hostname
    except ValueError:
        return None


def cross_site(request: Request) -> str | None:
    """Why `request` looks cross-site, or None when nothing says it is."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in SAME_SITE_FETCHES:
        return f"the request came from another site (Sec-Fetch-Site: {fetch_site})"
    origin = request.headers.get("origin")
    if origin is not None and (_host(origin) is None or _host(origin) != request.url.hostname):
        return "the request came from another origin"
    return None
