"""Progress of long commands: live phases on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from receiver.progress import board


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_phase_says_where_it_is_and_how_it_ended() -> None:
    out = io.StringIO()
    with board(out, every=0.0) as shown:
        stored = shown.phase("stored", 3)
        for _ in range(3):
            stored.advance()
        shown.finish(stored)
        applied = shown.phase("applied")
        applied.update(2, total=2)
        shown.finish(applied)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("stored: 1 of 3 (")
    assert "stored: 3 of 3" in lines[-3] or "stored: 3 of 3" in "\n".join(lines)
    assert lines[-1].startswith("applied: 2 of 2 (") and lines[-1].endswith("/s)")


def test_plain_lines_are_spaced_out() -> None:
    out = io.StringIO()
    with board(out, every=3600.0) as shown:
        phase = shown.phase("read")
        for _ in range(1000):
            phase.advance()
        shown.finish(phase)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().startswith("read: 1,000 (")


def test_on_a_terminal_the_phases_render_live(monkeypatch: object) -> None:
    out = Terminal()
    with board(out) as shown:
        phase = shown.phase("stored", 10)
        phase.update(10)
        shown.finish(phase)
    text = out.getvalue()
    assert "stored" in text and "10/10" in text


def test_the_board_keeps_how_far_each_phase_got() -> None:
    with board(io.StringIO(), every=3600.0) as shown:
        shown.phase("stored", 5).update(3)
    assert shown.done("stored") == 3 and shown.done("applied") == 0


async def test_a_drain_is_shown_as_what_is_no_longer_waiting() -> None:
    import asyncio

    from receiver.progress import drain_showing

    left = [4]

    async def backlog() -> int:
        return left[0]

    async def drain() -> None:
        while left[0]:
            await asyncio.sleep(0.2)
            left[0] -= 1

    out = io.StringIO()
    with board(out, every=0.0) as shown:
        applied = await drain_showing(shown, backlog, drain)
    assert (applied.done, applied.total) == (4, 4)
    assert out.getvalue().splitlines()[-1].startswith("applied: 4 of 4 (")


async def test_an_interrupted_drain_ends_with_its_caller() -> None:
    import asyncio

    from receiver.progress import drain_showing

    ended: list[str] = []

    async def backlog() -> int:
        return 10

    async def drain() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    with board(io.StringIO(), every=3600.0) as shown:
        showing = asyncio.ensure_future(drain_showing(shown, backlog, drain))
        await asyncio.sleep(0.1)
        showing.cancel()
        await asyncio.gather(showing, return_exceptions=True)
    assert ended == ["cancelled"] and shown.done("applied") == 0
