"""The watchdog's dashboard page ``/ui/expected``: overdue first, then waiting, in the
dashboard's layout and nav; cancelling from it needs ``task.edit`` and the CSRF token."""

from __future__ import annotations

import re

from tests.conftest import READ_KEY, AppFactory, client_for
from tests.test_alerts import Clock, job
from tests.test_ui import csrf_in, sign_in
from tests.test_watchdog import EDIT, EDIT_KEY, watching


async def test_the_page_lists_overdue_then_waiting_and_cancels(build_app: AppFactory) -> None:
    clock = Clock()
    app = watching(build_app, clock)
    async with app.started(), client_for(app) as api, client_for(app) as ui:
        made = await api.post(
            "/v1/tasks/expected",
            headers=EDIT,
            json={
                "source": "refonte",
                "task_id": "late-1",
                "within_seconds": 60,
                "note": "batch <7>",
            },
        )
        assert made.status_code == 201
        clock.now += 61
        await job(app, "watchdog.sweep")()
        await api.post("/v1/tasks/expected", headers=EDIT, json={
            "source": "refonte", "tasks": [{"task_id": "soon-2"}, {"unique_id": "u-3"}],
            "within_seconds": 600})  # fmt: skip

        assert (await ui.get("/ui/expected")).status_code == 303  # signed out: to sign-in
        assert (await sign_in(ui, EDIT_KEY, "/ui/expected")).status_code == 303
        page = await ui.get("/ui/expected")
        assert page.status_code == 200
        html = page.text
        assert '<a href="/ui/expected" aria-current="page">Expected</a>' in html
        overdue, waiting = html.split('id="overdue"')[1].split('id="waiting"')
        assert "late-1" in overdue and "soon-2" not in overdue
        assert "soon-2" in waiting and "u-3" in waiting and "late-1" not in waiting
        assert "batch &lt;7&gt;" in overdue  # autoescaped
        assert "skipped: the source has no [reconcile] section" in overdue
        assert "/ui/tasks/late-1" in overdue  # the ledger's task page

        row = re.search(r'<tr id="(exp_[0-9a-f]+)">\s*<td>refonte</td>\s*<td><a[^>]*>late-1', html)
        assert row is not None
        done = await ui.post("/ui/expected/cancel", data={"csrf": csrf_in(html),
                                                          "id": row.group(1)})  # fmt: skip
        assert done.status_code == 303 and done.headers["location"] == "/ui/expected?cancelled"
        forged = await ui.post("/ui/expected/cancel", data={"csrf": "nope", "id": row.group(1)})
        assert forged.status_code == 403
        after = (await ui.get("/ui/expected?cancelled")).text
        assert "Cancelled." in after and "late-1" not in after.split('id="overdue"')[1]

    reader = watching(build_app, clock)
    async with reader.started(), client_for(reader) as ui:
        assert (await sign_in(ui, READ_KEY, "/ui/expected")).status_code == 303
        html = (await ui.get("/ui/expected")).text
        assert "soon-2" in html and ">Cancel</button>" not in html
        refused = await ui.post("/ui/expected/cancel", data={"csrf": csrf_in(html), "id": "x"})
        assert refused.status_code == 403
