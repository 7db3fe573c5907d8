"""The numbered log ring behind `desk logs -f`: a reader passing back each reply's cursor sees every
line once, is told how many the ring no longer held, and gets replies cut to fit one message."""

from __future__ import annotations

from services.orchestrator.runtimes.base import LogRing


def test_a_reader_that_passes_back_the_cursor_sees_every_line_once() -> None:
    ring = LogRing(100)
    seen: list[str] = []
    cursor = 0
    for batch in range(5):
        ring.extend(f"line {batch}-{n}" for n in range(7))
        part = ring.after(cursor)
        seen += part.lines
        cursor = part.next
        assert part.skipped == 0 and not part.more
    assert seen == [f"line {b}-{n}" for b in range(5) for n in range(7)]
    assert ring.after(cursor).lines == [] and ring.after(cursor).next == cursor == 35


def test_lines_gone_from_the_ring_are_counted_not_silently_left_out() -> None:
    ring = LogRing(10)
    ring.extend(f"l{n}" for n in range(25))  # l15..l24 held
    part = ring.after(3)
    assert part.lines == [f"l{n}" for n in range(15, 25)]
    assert part.skipped == 12 and part.next == 25


def test_a_reply_is_cut_to_fit_and_the_rest_follows() -> None:
    ring = LogRing(1000)
    ring.extend("x" * 1000 for _ in range(200))  # ~200 KB: more than one reply holds
    cursor, replies, total = 0, 0, 0
    while True:
        part = ring.after(cursor, max_bytes=48 * 1024)
        assert sum(len(line) + 4 for line in part.lines) <= 48 * 1024
        total += len(part.lines)
        cursor = part.next
        replies += 1
        if not part.more:
            break
    assert total == 200 and replies > 1 and cursor == 200


def test_a_cursor_of_another_count_starts_from_the_oldest_line_held() -> None:
    ring = LogRing(5)
    ring.extend(["a", "b"])
    part = ring.after(40)  # a cursor from before a restart of the orchestrator
    assert part.lines == ["a", "b"] and part.next == 2
    assert ring.tail(1) == ["b"] and ring.tail(0) == []
