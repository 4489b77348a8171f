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
