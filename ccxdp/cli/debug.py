"""Hidden debugging aids."""

from __future__ import annotations

import click

from ccxdp.cli.app import pass_app
from ccxdp.datapath.loader import Limits
from ccxdp.datapath.shared import bpf_dir


@click.group(hidden=True)
def debug():
    """Debugging aids for ccxdp developers."""


@debug.command("bpf-source")
@pass_app
def bpf_source(app):
    """Print the effective cflags and the C source the loader compiles.

    \b
    Example:
      ccxdp debug bpf-source | less
    """
    from ccxdp.datapath.loader import Datapath

    dp = Datapath(app.pin_dir, app.state_dir)
    click.echo("// cflags: " + " ".join(dp.build_cflags(Limits())))
    for path in sorted(bpf_dir().glob("*.h")) + [bpf_dir() / "ccxdp.bpf.c"]:
        click.echo(f"// ---- {path.name}")
        click.echo(path.read_text())


def register(group: click.Group) -> None:
    group.add_command(debug)
