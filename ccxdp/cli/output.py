"""Shared output plumbing: one ``--json`` option for every reporting command, one console."""

from __future__ import annotations

import functools
import json
import sys

import click
from rich.console import Console


def json_option(f):
    """Adds ``--json``: machine-readable output with the stable keys docs/commands.md documents."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(
        f
    )


# emoji=False: rich would print ":1234:" in an IPv6 address or prefix as an emoji.
def console() -> Console:
    return Console(soft_wrap=False, emoji=False)


def emit(as_json: bool, data, renderable_factory) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        console().print(renderable_factory())


@functools.cache
def err_console() -> Console:
    return Console(stderr=True, emoji=False)
