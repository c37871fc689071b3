"""The ``ccxdp`` command: a thin click layer over the library modules.

Commands live one group per module. The group's context object builds the datapath and the
catalog only when a command asks for them, so ``--help`` and commands that never touch the
kernel never start clang.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import click

from ccxdp import sqlite
from ccxdp.cli.app import App
from ccxdp.datapath.libbpf import BpfError
from ccxdp.datapath.loader import DEFAULT_PIN_DIR, DEFAULT_STATE_DIR
from ccxdp.errors import CcxdpError
from ccxdp.inputs import shown


class CcxdpGroup(click.Group):
    """Turns domain errors into one clear line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (CcxdpError, BpfError) as e:
            # Messages quote files and servers: whatever a library call let through, no
            # control character reaches the terminal (line breaks separate listed lines).
            raise click.ClickException("\n".join(map(shown, str(e).split("\n")))) from e
        except BrokenPipeError:
            # The reader went away (| head): no more output, and no error of ours to show.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except PermissionError as e:
            raise click.ClickException(f"{e.strerror}: {e.filename} (run ccxdp as root)") from e
        except (sqlite3.Error, OSError) as e:  # what no library call turned into its own words
            where = getattr(e, "filename", None) or ctx.obj.state_dir
            raise click.ClickException(shown(sqlite.failure(where, e))) from e


@click.group(cls=CcxdpGroup, context_settings={"auto_envvar_prefix": "CCXDP"})
@click.option(
    "--pin-dir",
    # No existence or permission checks here: those are ccxdp's to explain ("needs root").
    type=click.Path(path_type=Path, readable=False),
    default=DEFAULT_PIN_DIR,
    show_default=True,
    help="bpffs folder holding the pinned program and maps.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, readable=False),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Folder of the catalog, the hash key and the attachment list.",
)
@click.version_option(package_name="ccxdp")
@click.pass_context
def cli(ctx: click.Context, pin_dir: Path, state_dir: Path) -> None:
    """Block DNS queries for malware C&C domains at the resolver's NIC, with XDP.

    \b
    Examples:
      ccxdp attach eth0                 # load and attach the filter
      ccxdp block add evil.example --subtree
      ccxdp allow add cdn.evil.example
      ccxdp stats
    """
    ctx.obj = App(pin_dir, state_dir)


def _register() -> None:
    from ccxdp.cli import (
        allow,
        attach,
        block,
        collect,
        config,
        debug,
        exempt,
        feed,
        lab,
        plan,
        records,
        run,
        stats,
        store,
        top,
    )

    for module in (attach, block, allow, feed, exempt, plan, config, stats, top, collect,
                   records, store, run, lab, debug):
        module.register(cli)


_register()


def main() -> None:
    cli(prog_name="ccxdp")
