"""Writing a bench/results/*.md file again without losing what people wrote into it.

A results file is the table a script measured, followed by readings written by hand under "## " headings
(what the figures mean, under what load, what was tried). A rerun replaces only the measured part; the one
rule for where the hand-written part starts lives here, so every script keeps it the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def hand_written_sections(path: Path, ends_before: Optional[str] = None) -> str:
    """The text of `path` from its first line starting with "## " to the end (or to `ends_before`, a marker
    the script writes itself below the readings, e.g. its raw rows), stripped; "" where there is none."""
    path = Path(path)
    if not path.is_file():
        return ""
    text = "\n" + path.read_text()
    if ends_before is not None:
        text = text.split(ends_before, 1)[0]
    start = text.find("\n## ")
    return text[start + 1:].strip() if start >= 0 else ""


def write_keeping_readings(path: Path, measured: str, tail: str = "", tail_starts: Optional[str] = None) -> Path:
    """Write `measured` (the script's table), then the hand-written sections of the file as it was, then
    `tail` (text the script owns below the readings, whose first line begins with `tail_starts`, e.g. its
    raw rows); the parent folder is made if needed."""
    path = Path(path)
    kept = hand_written_sections(path, ends_before=tail_starts)
    parts = [measured.rstrip("\n")] + ([kept] if kept else []) + ([tail.rstrip("\n")] if tail else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    return path
