"""attach, detach, status: where the filter runs."""

from __future__ import annotations

import click

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import plan_line, render_attachments
from ccxdp.cli.types import ACTION, INTERFACE, IPV4, IPV6
from ccxdp.datapath.loader import Limits, Mode
from ccxdp.datapath.nametable import count_names
from ccxdp.ops.attach import attach as attach_interface
from ccxdp.policy import plan as plan_lib


@click.command()
@click.argument("iface", type=INTERFACE)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default="auto",
    show_default=True,
    help="native (driver), generic (skb), or auto: native, else generic.",
)
@click.option("--netns", help="Network namespace of IFACE (as in 'ip netns list').")
@click.option(
    "--dns-port",
    "dns_ports",
    type=click.IntRange(1, 65535),
    multiple=True,
    help="Port whose queries are judged (UDP and TCP); repeat for several. Default: keep, or 53.",
)
@click.option(
    "--max-names",
    type=click.IntRange(1, 1 << 28),
    default=Limits.max_names,
    show_default=True,
    help="Size of the name map (used when the maps are first made).",
)
@click.option(
    "--max-sources",
    type=click.IntRange(1, 1 << 28),
    default=Limits.max_sources,
    show_default=True,
    help="Size of the per-source map (used when the maps are first made).",
)
@click.option(
    "--action",
    type=ACTION,
    help="Default action (of block entries without their own); default: keep, or drop.",
)
@click.option("--sinkhole-v4", type=IPV4, help="Address in sinkhole answers to A queries.")
@click.option("--sinkhole-v6", type=IPV6, help="Address in sinkhole answers to AAAA queries.")
@json_option
@pass_app
def attach(app, iface, mode, netns, dns_ports, max_names, max_sources, action, sinkhole_v4,
           sinkhole_v6, as_json):
    """Load the filter (if needed) and attach it to IFACE.

    The maps are pinned, so the filter keeps working after this command exits and a second
    interface shares them. Attaching where ccxdp already runs changes nothing, except the
    settings given here (the same as 'ccxdp config set'). Every attach makes the kernel's
    entries and exempt prefixes match the catalog again.

    \b
    Examples:
      ccxdp attach eth0
      ccxdp attach veth1 --netns resolver --mode generic
      ccxdp attach eth0 --dns-port 53 --dns-port 5353
      ccxdp attach eth0 --action sinkhole --sinkhole-v4 198.18.0.53 --sinkhole-v6 fd00::53
    """
    given = {"default_action": action, "sinkhole_v4": sinkhole_v4, "sinkhole_v6": sinkhole_v6}
    a = attach_interface(
        app.datapath(), app.catalog(), iface, Mode(mode), netns=netns,
        limits=Limits(max_names, max_sources), dns_ports=dns_ports or None,
        settings={k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    emit(
        as_json,
        a.as_dict(),
        lambda: f"attached to {iface}{' in ' + netns if netns else ''}: "
        f"{a.mode} mode, program id {a.prog_id}",
    )


@click.command()
@click.argument("iface", type=INTERFACE, required=False)
@click.option("--netns", help="Network namespace of IFACE.")
@click.option(
    "--purge", is_flag=True, help="Also remove the pinned program and maps (all counters)."
)
@json_option
@pass_app
def detach(app, iface, netns, purge, as_json):
    """Detach the filter from IFACE; with --purge, also remove its pinned state.

    \b
    Examples:
      ccxdp detach eth0
      ccxdp detach veth1 --netns resolver --purge
      ccxdp detach --purge            # only the pins, once detached everywhere
    """
    if iface is None and not purge:
        raise click.UsageError("give an interface, or --purge to remove the pinned state")
    dp = app.datapath()
    out = {"detached": None, "purged": []}
    if iface is not None:
        out["detached"] = dp.detach(iface, netns).as_dict()
    if purge:
        out["purged"] = dp.purge()
    lines = []
    if iface is not None:
        lines.append(f"detached from {iface}{' in ' + netns if netns else ''}")
    if purge:
        lines.append(f"removed {len(out['purged'])} pins from {dp.pin_dir}")
    emit(as_json, out, lambda: "\n".join(lines))


@click.command()
@json_option
@pass_app
def status(app, as_json):
    """Show whether the filter is loaded, where it is attached, and the address plan (whose
    sources are counted per source: all of them when no plan is declared).

    \b
    Example:
      ccxdp status --json
    """
    dp = app.datapath_to_read()
    loaded = dp.is_loaded()
    attachments = dp.attachments()
    names = 0
    ports: list[int] = []
    if loaded:
        names = count_names(dp)
        ports = sorted(dp.dns_ports())
    plan = plan_lib.state(dp, app.catalog_to_read())
    prefix_v6 = dp.settings().source_prefix_v6
    data = {
        "loaded": loaded,
        "pin_dir": str(dp.pin_dir),
        "names": names,
        "dns_ports": ports,
        "attachments": [a.as_dict() for a in attachments],
        "plan": {**plan.to_json(), "source_prefix_v6": prefix_v6},
    }
    emit(as_json, data, lambda: render_attachments(attachments, loaded, names,
                                                   plan_line(plan, prefix_v6)))


def register(group: click.Group) -> None:
    for cmd in (attach, detach, status):
        group.add_command(cmd)


