"""The deliveries inbox, one delivery's page, and retrying (one, or every dead one).

Retrying here is `TaskhookApp.retry`, the very function ``POST /v1/deliveries/{id}/retry``
and ``taskhook deliveries retry`` use. After a POST the browser is redirected (303) to a
page that says what happened, so reloading it never repeats the action.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from receiver.paging import decode_token
from receiver.records import DeliveryStatus
from receiver.ui.display import age, body_view, retryable, verified_by
from receiver.ui.kit import Page, PageEndpoint, UiRoute
from receiver.ui.runs import delivered_events

READ, WRITE = "deliveries.read", "deliveries.write"
PAGE_SIZE = 50
# Dead deliveries one bulk retry requeues at most (the rest wait for the next press).
BULK_LIMIT = 10_000


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) < 10 else None


async def inbox(request: Request, page: Page) -> Response:
    """Dashboard: the deliveries inbox"""
    q = request.query_params
    filters = {name: q.get(name, "").strip() for name in ("status", "source", "task")}
    problems: list[str] = []
    status: DeliveryStatus | None = None
    if filters["status"]:
        try:
            status = DeliveryStatus(filters["status"])
        except ValueError:
            problems.append(f"there is no status {filters['status']!r}")
    before: int | None = None
    if token := q.get("next_token"):
        try:
            before = decode_token(token)
        except ValueError:
            problems.append("that page link is not valid; showing the newest")
    listing = await page.app.storage.list_deliveries(
        status=status,
        source=filters["source"] or None,
        task_id=filters["task"] or None,
        limit=PAGE_SIZE,
        before_seq=before,
    )
    kept = {k: v for k, v in filters.items() if v}
    older = (
        "/ui/deliveries?" + urlencode({**kept, "next_token": listing.next_token})
        if listing.next_token
        else None
    )
    newest = "/ui/deliveries" + ("?" + urlencode(kept) if kept else "") if before else None
    return page.render(
        "deliveries.html",
        {
            "title": "Deliveries",
            "rows": [(d, verified_by(d)) for d in listing.items],
            "total": listing.total,
            "filters": filters,
            "statuses": [s.value for s in DeliveryStatus],
            "sources": sorted(page.app.settings.sources),
            "older": older,
            "newest": newest,
            "problems": problems,
            "requeued": _number(q.get("requeued")),
            "dead_count": None,
        },
        status=400 if problems else 200,
    )


async def show(request: Request, page: Page) -> Response:
    """Dashboard: one delivery"""
    delivery_id = request.path_params["delivery_id"]
    found = await page.app.storage.get_delivery(delivery_id)
    if found is None:
        return page.error(404, "No such delivery", f"There is no delivery {delivery_id!r}.")
    events = await delivered_events(page.app.storage, delivery_id)
    return page.render(
        "delivery.html",
        {
            "title": f"Delivery {found.id}",
            "d": found,
            "verifier": verified_by(found),
            "body": body_view(found.body),
            "headers": sorted(found.headers.items()),
            "events": events,
            "retryable": retryable(found),
            "retried": request.query_params.get("retried") == "1",
            "waiting": age(page.app.clock() - found.received_at),
            "DeliveryStatus": DeliveryStatus,
        },
    )


async def retry(request: Request, page: Page) -> Response:
    """Dashboard: retry one delivery"""
    delivery_id = request.path_params["delivery_id"]
    done = await page.app.retry(delivery_id)
    if done is None:
        return page.error(404, "No such delivery", f"There is no delivery {delivery_id!r}.")
    if not done:
        return page.error(
            409,
            "Not retried",
            "Only failed, dead or quarantined deliveries whose body is still kept can be "
            "retried; this one is not (any more).",
        )
    return RedirectResponse(f"/ui/deliveries/{quote(delivery_id)}?retried=1", status_code=303)


async def confirm_retry_dead(request: Request, page: Page) -> Response:
    """Dashboard: confirm retrying every dead delivery"""
    dead = await page.app.storage.dead_ids()
    return page.render(
        "retry_dead.html",
        {"title": "Retry dead deliveries", "count": len(dead), "first": dead[:20]},
    )


async def retry_dead(request: Request, page: Page) -> Response:
    """Dashboard: retry every dead delivery"""
    if page.form.get("confirm") != "yes":
        return RedirectResponse("/ui/deliveries/retry-dead", status_code=303)
    requeued = 0
    for delivery_id in (await page.app.storage.dead_ids())[:BULK_LIMIT]:
        if await page.app.retry(delivery_id):
            requeued += 1
    return RedirectResponse(f"/ui/deliveries?requeued={requeued}", status_code=303)


def delivery_routes() -> list[BaseRoute]:
    def route(path: str, endpoint: PageEndpoint, scope: str, method: str = "GET") -> UiRoute:
        return UiRoute(path, endpoint, scope=scope, methods=(method,), templates_dir=None)

    return [
        route("/ui/deliveries", inbox, READ),
        # Before "/ui/deliveries/{delivery_id}", which would take "retry-dead" for an id.
        route("/ui/deliveries/retry-dead", confirm_retry_dead, WRITE),
        route("/ui/deliveries/retry-dead", retry_dead, WRITE, "POST"),
        route("/ui/deliveries/{delivery_id}", show, READ),
        route("/ui/deliveries/{delivery_id}/retry", retry, WRITE, "POST"),
    ]
