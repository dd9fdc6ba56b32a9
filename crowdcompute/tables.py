"""The command line's tables: text from the network shown as plain text, names never cut.

Worker names, labels, job names and notes come from peers: a volunteer's
``--name "[blink red]EVIL[/]"`` must show as those characters, not as rich
markup (nor crash the table with a MarkupError), and an escape sequence must
not reach the operator's terminal. Every cell is therefore a :class:`rich.text.Text`
(never parsed as markup) of printable characters only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["PIPED_WIDTH", "Column", "counted", "console", "plain_markup", "printable", "table_of"]

#: Columns a table may take when printed to a pipe or a file (rich assumes 80 there, and wrapped
#: dates and headers into two lines), unless $COLUMNS says otherwise.
PIPED_WIDTH = 240


def console() -> Console:
    """A console for tables: the terminal's width, or PIPED_WIDTH where there is no terminal."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=PIPED_WIDTH if wide else None)


@dataclass(frozen=True)
class Column:
    """A column of :func:`table_of`."""

    header: str
    numeric: bool = False  # right-justified
    # Never cut, folded or wrapped: a name the operator types back (``crowdcompute revoke NAME``)
    # or a number. Other columns wrap between words, and fold a word too long for their width.
    whole: bool = False


def printable(text: object) -> str:
    """``text`` with every unprintable character (escape sequences, line breaks) shown as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def counted(n: int, noun: str) -> str:
    """``1 worker``, ``2 workers``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def plain_markup(text: object) -> str:
    """``text`` to put inside rich markup (a progress bar's template): printable, its ``[`` escaped."""
    return escape(printable(text))


def table_of(title: str, columns: Sequence[Column], rows: Iterable[Sequence[object]]) -> Table:
    """A rich table of plain-text cells.

    A whole column is as wide as its widest cell, so that a narrow terminal never
    turns ``maria-laptop`` into ``maria…``; the other columns give way, folding
    their words (and headers) rather than cutting them.
    """
    cells = [[Text(printable(cell)) for cell in row] for row in rows]
    table = Table(title=Text(printable(title)), title_justify="left")
    for i, column in enumerate(columns):
        widths = [cell_len(row[i].plain) for row in cells]
        if column.whole and not column.numeric:
            widths.append(_longest_word(column.header))  # the header of a name column whole too
        table.add_column(
            column.header,
            justify="right" if column.numeric else "left",
            no_wrap=column.whole and not column.numeric,  # rich would not narrow a number's header either
            overflow="fold",
            min_width=max(widths) if column.whole and widths else None,
        )
    for row in cells:
        table.add_row(*row)
    return table


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)
