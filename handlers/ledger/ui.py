"""The ledger's dashboard pages (`receiver.ui.kit`): recent tasks, and one task's page.

A task's page shows its ledger fields and its history as a timeline (applied and stale
snapshots, audits, recalls, unique_id bound / released / conflicting, operator actions),
each entry linking to the delivery it came from. A document-review task also offers its
lifecycle actions, to keys with ``task.edit``, through the very `operator` function
``POST /v1/task/{id}/{action}`` uses, so an action from here is the same stored delivery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from handlers.ledger import review
from handlers.ledger.api import list_page, sql_query
from handlers.ledger.counts import Totals
from handlers.ledger.query import BadQuery
from handlers.ledger.review_api import ACTIONS
from receiver.plugin_store import PluginStorage
from receiver.ui.kit import Page, ui_route

Act = Callable[[str, str, str | None, str], Awaitable[tuple[int, dict[str, Any]]]]
TEMPLATES = Path(__file__).resolve().parent / "templates"
READ = ("tasks.read", "task.read")  # the ledger API takes either
EDIT = "task.edit"
HISTORY_SHOWN = 1000  # the newest entries of a very long history
DONE = {"complete": "Completed.", "discard": "Discarded.", "unlock": "Unlocked: back to REVIEWING.",
        "report": "Reported."}  # fmt: skip
FIELDS = (
    "status", "type", "project", "batch", "unique_id", "claimed_unique_id",
    "customer_review_status", "created_at", "updated_at", "completed_at", "source",
)  # fmt: skip
_TASK = (
    f"SELECT {', '.join(FIELDS)}, last_delivery_id, task, response FROM ledger_tasks "
    "WHERE task_id = :task_id"
)
_HISTORY = (
    "SELECT seq, kind, name, event_id, delivery_id, detail, at FROM ledger_history "
    "WHERE task_id = :task_id ORDER BY seq DESC LIMIT :limit"
)
# What a timeline entry says at a glance, of all its detail (the rest is one click away).
SUMMARY_KEYS = (
    "status", "previous_status", "action", "by", "reason", "unique_id", "held_by",
    "audit_result", "audited_by", "error", "bound_after_release_by", "current",
)  # fmt: skip
LABELS = {"applied": "snapshot applied", "stale": "stale snapshot: ignored",
          "rejected": "refused by the lifecycle", "action": "operator action",
          "report": "reported by an operator", "unique_id": "unique_id bound"}  # fmt: skip


def _summary(detail: Any) -> dict[str, Any]:
    if not isinstance(detail, dict):
        return {}
    flat = dict(detail)
    if isinstance(detail.get("audit"), dict):  # task.audited: the audit's own fields
        flat |= detail["audit"]
    found = {k: flat[k] for k in SUMMARY_KEYS if k in flat}
    if isinstance(detail.get("changes"), dict):  # task.updated: what changed
        found["changed"] = ", ".join(sorted(detail["changes"]))
    return found


def timeline_entry(row: tuple[Any, ...]) -> dict[str, Any]:
    _, kind, name, event_id, delivery_id, detail_json, at = row
    detail = orjson.loads(detail_json)
    if kind == "event":
        # unique_id outcomes get a tone of their own: a conflict should stand out.
        tone = name.rsplit(".", 1)[-1] if name.startswith("unique_id.") else "event"
        label = name
    else:
        tone, label = kind, LABELS.get(kind, kind)
        if kind == "action" and isinstance(detail, dict) and detail.get("action"):
            label = f"operator action: {detail['action']}"
    return {
        "kind": kind, "label": label, "tone": tone, "event_id": event_id,
        "delivery_id": delivery_id, "at": at, "summary": _summary(detail), "detail": detail,
    }  # fmt: skip


def lifecycle(task: dict[str, Any]) -> list[str] | None:
    """The actions a document-review task allows now (None: not such a task)."""
    status = task["status"]
    if task["type"] != "document-review" or status not in review.EVENTS:
        return None
    exported = bool(task["snapshot"].get("exported"))
    allowed = [
        action
        for action in review.ACTION_TARGET
        if review.action_target(action, status, exported=exported)[1].allowed
    ]
    return [*allowed, "report"]


def build_ui_routes(storage: PluginStorage, act: Act) -> list[Route]:
    query = sql_query(storage)
    totals = Totals(storage)

    async def load(task_id: str) -> dict[str, Any] | None:
        rows = await query(_TASK, {"task_id": task_id})
        if not rows:
            return None
        values = tuple(rows[0])
        task = dict(zip(FIELDS, values, strict=False))
        task["task_id"] = task_id
        task["last_delivery_id"] = values[len(FIELDS)]
        task["snapshot"] = orjson.loads(values[len(FIELDS) + 1])
        response = values[len(FIELDS) + 2]
        task["response"] = orjson.loads(response) if response is not None else None
        return task

    async def task_page(
        request: Request, page: Page, *, error: str | None = None, status: int = 200
    ) -> Response:
        task_id = request.path_params["task_id"]
        task = await load(task_id)
        if task is None:
            return page.error(404, "No such task", f"The ledger has no task {task_id!r}.")
        rows = await query(_HISTORY, {"task_id": task_id, "limit": HISTORY_SHOWN + 1})
        done = request.query_params.get("done")
        return page.render(
            "task.html",
            {
                "title": f"Task {task_id}",
                "task": task,
                "fields": [(f, task[f]) for f in FIELDS if f != "status"],
                "timeline": [timeline_entry(tuple(r)) for r in reversed(rows[:HISTORY_SHOWN])],
                "cut": len(rows) > HISTORY_SHOWN,
                "actions": lifecycle(task),
                "done": DONE.get(done or ""),
                "error": error,
            },
            status=status,
        )

    async def show(request: Request, page: Page) -> Response:
        """Dashboard: one task's ledger fields and history"""
        return await task_page(request, page)

    async def action(request: Request, page: Page) -> Response:
        """Dashboard: a document-review lifecycle action"""
        task_id = request.path_params["task_id"]
        chosen = page.form.get("action", "")
        if chosen not in ACTIONS:
            return await task_page(request, page, error="Unknown action.", status=400)
        reason = page.form.get("reason", "").strip() or None
        status, answer = await act(task_id, chosen, reason, page.key_name)
        if status >= 300:
            message = str(answer.get("error") or f"the action was refused ({status})")
            return await task_page(request, page, error=message, status=status)
        return RedirectResponse(f"/ui/tasks/{quote(task_id)}?done={chosen}", status_code=303)

    async def tasks(request: Request, page: Page) -> Response:
        """Dashboard: recent tasks, and the task search"""
        q = request.query_params
        wanted = q.get("task_id", "").strip()
        if wanted and await load(wanted) is not None:
            return RedirectResponse(f"/ui/tasks/{quote(wanted)}", status_code=303)
        params = {"limit": "50"} | {k: q[k] for k in ("status", "next_token") if q.get(k)}
        problem = f"The ledger has no task {wanted!r}." if wanted else None
        try:
            listing = await list_page(query, totals, params)
        except BadQuery as exc:
            problem, listing = str(exc), await list_page(query, totals, {"limit": "50"})
        older = None
        if listing["next_token"]:
            kept = {k: v for k, v in params.items() if k == "status"}
            older = "/ui/tasks?" + urlencode(kept | {"next_token": listing["next_token"]})
        return page.render(
            "tasks.html",
            {
                "title": "Tasks",
                "tasks": listing["docs"],
                "total": listing["total"],
                "older": older,
                "status": params.get("status", ""),
                "problem": problem,
                "wanted": wanted,
            },
            status=404 if wanted else 200,
        )

    return [
        ui_route("/ui/tasks", tasks, scope=READ, templates_dir=TEMPLATES),
        ui_route("/ui/tasks/{task_id}", show, scope=READ, templates_dir=TEMPLATES),
        ui_route(
            "/ui/tasks/{task_id}/action",
            action,
            scope=EDIT,
            methods=("POST",),
            templates_dir=TEMPLATES,
        ),
    ]
