"""The dashboard's ``/ui/expected`` page: overdue expectations first, then those waiting.

Built with the dashboard's toolkit (`receiver.ui.kit`): the page needs a key that reads
tasks; cancelling one (a form on the page) needs ``task.edit``.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from handlers.watchdog.store import Expectations
from receiver.ui.kit import Page, ui_route

TEMPLATES = Path(__file__).parent / "templates"
PATH = "/ui/expected"
SHOWN = 100  # per state; the API pages through the rest
TASK_PAGE = "/ui/tasks/{task_id}"  # the ledger's page of a task, when it is loaded


def build_pages(store: Expectations) -> list[Route]:
    async def expected(request: Request, page: Page) -> Response:
        """Expected callbacks: overdue, then waiting"""
        overdue, _, overdue_total = await store.page(state="overdue", source=None, limit=SHOWN)
        waiting, _, waiting_total = await store.page(state="waiting", source=None, limit=SHOWN)
        return page.render("expected.html", {
            "overdue": [e.view() for e in overdue], "overdue_total": overdue_total,
            "waiting": [e.view() for e in waiting], "waiting_total": waiting_total,
            "can_cancel": page.can("task.edit"), "cancelled": "cancelled" in request.query_params,
            "task_pages": any(getattr(r, "path", None) == TASK_PAGE
                              for r in page.app.registry.routes),
        })  # fmt: skip

    async def cancel(request: Request, page: Page) -> Response:
        """Cancel an expectation"""
        expectation_id = page.form.get("id", "")
        if await store.cancel(expectation_id) is None:
            return page.error(404, "Not found", f"No expectation {expectation_id!r}.")
        return RedirectResponse(PATH + "?cancelled", status_code=303)

    return [
        ui_route(PATH, expected, scope=("tasks.read", "task.read"), templates_dir=TEMPLATES),
        ui_route(PATH + "/cancel", cancel, scope="task.edit", methods=("POST",),
                 templates_dir=TEMPLATES),
    ]  # fmt: skip
