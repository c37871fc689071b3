"""config show / set: the run-time settings of the data path."""

from __future__ import annotations

import click

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import render_settings
from ccxdp.cli.types import SETTING_KEY
from ccxdp.datapath import shared
from ccxdp.datapath.settings import SettingError, Settings


def _where(dp) -> dict:
    loaded = (dp.pin_dir / shared.MAP_CONFIG).exists()
    return {
        "loaded": loaded,
        "map": str(dp.pin_dir / shared.MAP_CONFIG),
        "file": str(dp.state_dir / "settings.json"),
    }


@click.group()
def config():
    """Run-time settings: the default action, sinkhole addresses, TTLs, EDNS size, and
    whether fragments and frames with headers deeper than parsed, to a DNS port, are dropped
    (the default) or passed unjudged.

    They live in a pinned BPF map the program reads for every answer, so a change applies at
    once without reloading anything; a copy in the state folder brings them back when the
    maps are made afresh.

    \b
    Examples:
      ccxdp config show
      ccxdp config set default_action nxdomain
    """


@config.command("show")
@json_option
@pass_app
def config_show(app, as_json):
    """Show every setting and where it lives.

    \b
    Example:
      ccxdp config show --json
    """
    dp = app.datapath_to_read()
    settings = dp.settings()
    where = _where(dp)
    emit(as_json, {"settings": settings.as_dict(), **where},
         lambda: render_settings(settings, where["loaded"], where["map"], where["file"]))


# ignore_unknown_options: a negative VALUE (answer_ttl -1) reaches the setting's own check
# instead of click's "No such option: -1".
@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key", type=SETTING_KEY)
@click.argument("value")
@json_option
@pass_app
def config_set(app, key, value, as_json):
    """Set KEY to VALUE, at once in the running program, and keep it.

    \b
    Examples:
      ccxdp config set default_action sinkhole
      ccxdp config set sinkhole_v4 198.18.0.53
      ccxdp config set negative_ttl 60
      ccxdp config set fragments pass
    """
    try:  # checked before anything is touched: a bad value is a usage mistake
        Settings().with_value(key, value)
    except SettingError as e:
        raise click.BadParameter(str(e), param_hint="'VALUE'") from e
    dp = app.datapath()
    before = dp.settings()
    after = before.with_value(key, value)
    dp.set_settings(after)
    where = _where(dp)
    data = {"key": key, "value": getattr(after, key), "previous": getattr(before, key),
            "applied": where["loaded"]}
    if where["loaded"]:
        note = "applied to the running program"
    else:
        note = "saved; ccxdp is not loaded, so it takes effect at the next attach"
    emit(as_json, data, lambda: f"{key} = {getattr(after, key)} ({note})")


def register(group: click.Group) -> None:
    group.add_command(config)
