"""run: the daemon, from a config file."""

from __future__ import annotations

from pathlib import Path

import click

from ccxdp.cli.app import pass_app


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("/etc/ccxdp/ccxdp.toml"),
    show_default=True,
    help="The TOML config file (examples/ccxdp.toml shows every key).",
)
@click.option("--check", is_flag=True, help="Only check the config file, then exit.")
@pass_app
def run(app, config_path, check):
    """Run the daemon: attach, keep feeds fresh, collect, serve metrics.

    Attaches the configured interfaces (adopting what is pinned: no gap, no reset), syncs
    each feed when its file changes or its refresh interval passes, collects the per-source
    hits on an interval and serves Prometheus metrics if the config gives an address. One
    structured line per event goes to stderr. SIGHUP reloads the file and applies the
    difference; SIGTERM stops, leaving the filter attached unless on_stop = "detach". A bad
    config file is refused whole, naming the key, before anything is attached.

    \b
    Examples:
      ccxdp run --config /etc/ccxdp/ccxdp.toml
      ccxdp run --config examples/ccxdp.toml --check
    """
    from ccxdp.ops.daemon import Daemon, check_interfaces, check_listen_addresses
    from ccxdp.ops.daemon_config import load_config

    if check:
        config = load_config(config_path)
        check_interfaces(config)
        check_listen_addresses(config)
        click.echo(f"{config_path}: ok ({len(config.interfaces)} interfaces, "
                   f"{len(config.feeds)} feeds)")
        return
    Daemon(config_path, app.pin_dir, app.state_dir).run()


def register(group: click.Group) -> None:
    group.add_command(run)
