"""Model cards: the Markdown page written beside every checkpoint hwfault trains (zoo and hardened).

A card is a title, a sentence, a ``field | value`` table, optional further tables and notes, and how
to reproduce and load the model; :func:`card` renders one and :func:`write_card` writes it atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .files import write_text


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    """A Markdown table as lines (``align``: one of "l", "r" per column)."""
    rule = ["--:" if a == "r" else "---" for a in (align or ["l"] * len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"] + \
           ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def card(title: str, intro: str, fields: Sequence[tuple[str, str]], *, sections: Sequence[Sequence[str]] = (),
         footer: Sequence[str] = ()) -> str:
    """The card's Markdown: ``# title``, ``intro``, the fields table, each section (lines), the footer."""
    lines = [f"# {title}", "", intro, "", *table(("field", "value"), fields), ""]
    for sec in sections:
        lines += [*sec, ""]
    lines += list(footer)
    return "\n".join(lines).rstrip() + "\n"


def write_card(path: str | Path, text: str) -> Path:
    return write_text(path, text, what="model card")
