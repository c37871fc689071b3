"""The human output's two forms: rich tables on a terminal (each cut to TERMINAL_ROWS rows,
the rest counted), and TSV anywhere else, every cell whole."""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ccxdp.cli.output import fit_terminal, plain_text


def table(rows: int) -> Table:
    t = Table(title=f"lines ({rows:,})", title_justify="left")
    t.add_column("line")
    t.add_column("hits", justify="right")
    t.add_column("addresses")
    for n in range(rows):
        t.add_row(escape(f"L-[{n}]"), f"{n * 1000:,}", "198.18.0.2\n2001:db8:1:a::1")
    return t


def test_tsv_keeps_every_cell_whole_and_undoes_markup_escapes():
    wide = Table(title="cut at 80 columns by rich", title_justify="left")
    wide.add_column("line")
    wide.add_column("counted")
    wide.add_row("L-" + "3" * 100, Text("60,123,456 [not markup]"))
    out = plain_text(Group(table(2), "2 lines; 1 more with [bold]no[/bold] hits", wide))
    assert out == (
        "# lines (2)\n"
        "line\thits\taddresses\n"
        "L-[0]\t0\t198.18.0.2 2001:db8:1:a::1\n"
        "L-[1]\t1,000\t198.18.0.2 2001:db8:1:a::1\n"
        "\n"
        "2 lines; 1 more with no hits\n"
        "\n"
        "# cut at 80 columns by rich\n"
        "line\tcounted\n"
        f"L-{'3' * 100}\t60,123,456 [not markup]\n")


def test_a_terminal_shows_the_first_rows_of_a_long_table_and_counts_the_rest():
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None, force_terminal=True,
                      emoji=False)
    console.print(fit_terminal(Group(table(1003), "after"), rows=2))
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert lines[0] == "lines (1,003)"
    assert [line for line in lines if "L-[" in line] == [
        "│ L-[0] │     0 │ 198.18.0.2      │", "│ L-[1] │ 1,000 │ 198.18.0.2      │"]
    assert "│       │       │ 2001:db8:1:a::1 │" in lines  # no emoji for ':a:'
    assert lines[-2:] == [
        "… and 1,001 more rows: piped, the output is TSV with every row; --json for all",
        "after"]
    short = io.StringIO()
    Console(file=short, width=100, color_system=None, force_terminal=True).print(
        fit_terminal(table(2), rows=2))
    assert "more rows" not in short.getvalue()
