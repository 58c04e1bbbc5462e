"""Notes a layout records about what it skipped or guessed: one line each, capped per kind."""

from __future__ import annotations

#: At most this many per-item notes of one kind; the rest are summarised in one more note.
MAX_NOTES = 20


def one_line(text: object) -> str:
    """Error messages are printed as one line: collapse whitespace and newlines."""
    return " ".join(str(text).split())


def add_capped(notes: list[str], lines: list[str], summary: str) -> None:
    """Append up to :data:`MAX_NOTES` of ``lines``; the rest become ``summary.format(n=...)``."""
    notes += lines[:MAX_NOTES]
    if len(lines) > MAX_NOTES:
        notes.append(summary.format(n=len(lines) - MAX_NOTES))
