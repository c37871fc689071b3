"""Shared output plumbing: one ``--json`` option for every reporting command, one console,
and one rule for what the human output is when stdout is not a terminal.

On a terminal, tables are rich's, fitted to its width. Anywhere else (a pipe, a file, cron's
mail) there is no width to fit, and rich would cut cells to 80 columns (``L-30…``,
``60,1…``): an identifier or a count that is cut is a wrong one. So there every table is
plain TSV: a ``# title`` line, the header, one line a row, every cell whole. Cells never
hold a tab or a newline (a cell of several lines is joined with spaces), so ``cut -f`` and
``awk -F'\\t'`` read them. Text between tables is printed as it is.
"""

from __future__ import annotations

import functools
import json
import sys

import click
from rich import markup
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


def json_option(f):
    """Adds ``--json``: machine-readable output with the stable keys docs/commands.md documents."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(
        f
    )


# No emoji codes: rich would turn the ":a:" of 2001:db8:1:a::1 into a picture.
def console() -> Console:
    return Console(soft_wrap=False, emoji=False)


def emit(as_json: bool, data, renderable_factory) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif sys.stdout.isatty():
        console().print(fit_terminal(renderable_factory()))
    else:
        sys.stdout.write(plain_text(renderable_factory()))


# rich lays out every cell of a table to fit the screen: 20,000 rows of records took 100 s of
# CPU. A terminal shows this many rows of a table and counts the rest; piped, TSV has all.
TERMINAL_ROWS = 1000


def fit_terminal(renderable: RenderableType, rows: int = TERMINAL_ROWS) -> RenderableType:
    """The renderable with each table cut to ``rows`` rows, and a line saying how many more
    there are and where to get them."""
    if isinstance(renderable, Group):
        return Group(*(fit_terminal(r, rows) for r in renderable.renderables))
    if isinstance(renderable, Table) and renderable.row_count > rows:
        more = renderable.row_count - rows
        renderable.rows = renderable.rows[:rows]
        for column in renderable.columns:
            column._cells = column._cells[:rows]
        return Group(renderable, Text(f"… and {more:,} more rows: piped, the output is TSV "
                                      f"with every row; --json for all"))
    return renderable


def plain_text(renderable: RenderableType) -> str:
    """What ``emit`` prints when stdout is not a terminal: tables as TSV, the rest as text,
    a blank line between a table and what follows it."""
    out = Console(soft_wrap=True, color_system=None, emoji=False)
    parts: list[str] = []
    _plain(renderable, out, parts)
    text = "".join(parts)
    return text[:-1] if text.endswith("\n\n") else text


def _plain(r: RenderableType, out: Console, parts: list[str]) -> None:
    if isinstance(r, Group):
        for item in r.renderables:
            _plain(item, out, parts)
    elif isinstance(r, Table):
        if parts and not "".join(parts[-2:]).endswith("\n\n"):
            parts.append("\n")
        parts.append(tsv(r, out))
        parts.append("\n")
    elif isinstance(r, str | Text):
        text = _cell_text(r, out, keep_lines=True)
        parts.append(text + "\n")
    else:  # a renderable without cells: as rich prints it, never cut
        with out.capture() as captured:
            out.print(r, soft_wrap=True)
        parts.append(captured.get())


def tsv(table: Table, out: Console | None = None) -> str:
    """A table as TSV: ``# title``, the header (when shown), then the rows."""
    out = out or Console(soft_wrap=True, color_system=None, emoji=False)
    lines = []
    if table.title:
        lines.append("# " + _cell_text(table.title, out))
    columns = table.columns
    if table.show_header:
        lines.append("\t".join(_cell_text(c.header, out) for c in columns))
    for i in range(table.row_count):
        lines.append("\t".join(_cell_text(c._cells[i], out) for c in columns))
    return "".join(line + "\n" for line in lines)


def _cell_text(cell, out: Console, keep_lines: bool = False) -> str:
    # A str cell is rich markup (as the table would render it, escapes undone); Text is
    # taken as it is.
    if isinstance(cell, str):
        # Without a "[" there is no markup to undo; rich's highlighter is colour only, and
        # was most of the time of a 20,000-row table.
        text = markup.render(cell).plain if "[" in cell else cell
    elif isinstance(cell, Text):
        text = cell.plain
    else:
        with out.capture() as captured:
            out.print(cell, soft_wrap=True, end="")
        text = captured.get()
    if keep_lines:
        return text
    return " ".join(text.replace("\t", " ").splitlines())


@functools.cache
def err_console() -> Console:
    return Console(stderr=True, emoji=False)
