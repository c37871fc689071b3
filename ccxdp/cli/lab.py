"""lab up, down, status, sinkhole-log: a namespace lab with ccxdp attached, to try it out.

The lab and what `up` and `down` do to ccxdp are the library's (ccxdp.lab); each command here
reads its options, makes one call, and renders.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import click
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.types import IPV4, IPV6
from ccxdp.datapath.loader import Mode
from ccxdp.errors import LabError
from ccxdp.lab import control
from ccxdp.lab.topology import LabSpec, check_lab_name

DEFAULT_LAB = "cxlab"
_DEFAULTS = LabSpec()


class LabNameType(click.ParamType):
    name = "name"

    def convert(self, value, param, ctx):
        try:
            return check_lab_name(value)
        except LabError as e:
            self.fail(str(e), param, ctx)


LAB_NAME = LabNameType()


def _name_option(f):
    return click.option(
        "--name",
        type=LAB_NAME,
        default=DEFAULT_LAB,
        show_default=True,
        help="The lab's name: its namespaces and interfaces are NAME-res, NAME-cli, ...",
    )(f)


def _render_status(s: dict):
    if s["state"] == "absent":
        return f"no lab named {s['name']} (start one with 'ccxdp lab up --name {s['name']}')"
    head = f"lab {s['name']}: {s['state']}" + "".join(f"\n  - {p}" for p in s["problems"])
    hosts = Table(title="hosts", title_justify="left")
    for col in ("host", "namespace", "interface", "addresses"):
        hosts.add_column(col)
    for h in s["hosts"]:
        ns = h["namespace"] if h["exists"] else f"{h['namespace']} (missing)"
        hosts.add_row(h["title"], ns, h["interface"], " ".join(h["addresses"]) or "-")
    parts: list = [head, hosts]
    running = [f"{x['name']} (pid {x['pid']}{'' if x['running'] else ', not running'})"
               for x in s["services"]]  # fmt: skip
    if running:
        parts.append("processes: " + ", ".join(running))
    a = s["ccxdp"]
    if a and a["attached"]:
        parts.append(f"ccxdp: attached to {a['interface']} in {a['netns']}, {a['mode']} mode, "
                     f"program id {a['prog_id']}")  # fmt: skip
    sink = s["sinkhole"]
    parts.append(f"sinkhole: {sink['v4']} and {sink['v6']}, {sink['contacts']} contacts "
                 f"recorded ('ccxdp lab sinkhole-log --name {s['name']}')")  # fmt: skip
    if s["state"] == "up":
        cli = next(h for h in s["hosts"] if h["role"] == "cli")
        res = next(h for h in s["hosts"] if h["role"] == "res")
        parts.append(f"try: ip netns exec {cli['namespace']} dig @{res['addresses'][0]} "
                     f"www.lab.example")  # fmt: skip
    return Group(*parts)


@click.group()
def lab():
    """A lab in network namespaces: a resolver running unbound with ccxdp attached, two
    clients and a sinkhole host, on one switch. Addresses in 198.18.0.0/24 and fd00:cc::/64.

    \b
    Examples:
      ccxdp lab up
      ip netns exec cxlab-cli dig @198.18.0.1 www.lab.example
      ccxdp lab status
      ccxdp lab sinkhole-log
      ccxdp lab down
    """


@lab.command()
@_name_option
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default="auto",
    show_default=True,
    help="XDP mode of ccxdp on the resolver's interface, as for 'ccxdp attach'.",
)
@click.option(
    "--sinkhole-v4",
    type=IPV4,
    default=_DEFAULTS.sinkhole_v4.split("/")[0],
    show_default=True,
    help="The sinkhole host's IPv4 address, and ccxdp's sinkhole answer to A queries.",
)
@click.option(
    "--sinkhole-v6",
    type=IPV6,
    default=_DEFAULTS.sinkhole_v6.split("/")[0],
    show_default=True,
    help="The sinkhole host's IPv6 address, and ccxdp's sinkhole answer to AAAA queries.",
)
@click.option(
    "--unbound-option",
    "unbound_options",
    multiple=True,
    help="A line for unbound's server: clause, e.g. 'verbosity: 2'; repeat for several.",
)
@json_option
@pass_app
def up(app, name, mode, sinkhole_v4, sinkhole_v6, unbound_options, as_json):
    """Build the lab and attach ccxdp to the resolver's interface.

    The resolver (NAME-res, 198.18.0.1, fd00:cc::1) runs unbound with the local zone
    lab.example and refuses every other name; client 1 (NAME-cli) and client 2 (NAME-cl2)
    query it; the sinkhole host (NAME-snk) records every connection attempt, datagram and ping
    sent to the sinkhole addresses, which ccxdp gives in sinkhole answers while the lab is up.
    Running it again on a lab that is up changes nothing; a half-built lab (say, an earlier
    'up' was killed) is removed first and built again. A failed 'up' leaves nothing behind.

    \b
    Examples:
      ccxdp lab up
      ccxdp lab up --name demo --mode generic
      ccxdp lab up --sinkhole-v4 198.18.0.99 --sinkhole-v6 fd00:cc::99
    """
    d = _DEFAULTS
    try:
        spec = replace(
            d,
            sinkhole_v4=str(ipaddress.ip_interface(f"{sinkhole_v4}/{_prefixlen(d.res_v4)}")),
            sinkhole_v6=str(ipaddress.ip_interface(f"{sinkhole_v6}/{_prefixlen(d.res_v6)}")),
            unbound_extra=tuple(unbound_options),
        )
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--sinkhole-v4' / '--sinkhole-v6'") from e
    # root, and the state folder's lock until the command ends
    status, notes = control.up(app.datapath(), app.catalog(), app.state_dir, name, spec,
                               Mode(mode))
    if not status["created"]:
        notes = [f"lab {name} is already up", *notes]
    emit(as_json, status, lambda: Group(*notes, _render_status(status)))


def _prefixlen(interface: str) -> int:
    return ipaddress.ip_interface(interface).network.prefixlen


@lab.command()
@_name_option
@json_option
@pass_app
def down(app, name, as_json):
    """Remove the lab and everything 'ccxdp lab up' made for it, and only that.

    Its processes, namespaces (with their interfaces) and files go; ccxdp is detached from
    the lab's interface, its sinkhole settings are put back (unless changed since), and its
    pinned maps are removed if 'up' loaded them and ccxdp runs nowhere else. The catalog
    stays. Works after a crash too (an 'up' killed midway), and does nothing when there is no
    such lab.

    \b
    Examples:
      ccxdp lab down
      ccxdp lab down --name demo --json
    """
    out = control.down(app.datapath(), app.state_dir, name)  # root, and the lock
    if out is None:
        out = {"name": name, "removed": [], "detached": False, "settings_restored": False,
               "purged": []}  # fmt: skip
        emit(as_json, out, lambda: f"no lab named {name}: nothing to remove")
        return

    def text() -> str:
        lines = [f"lab {name} removed: {', '.join(out['removed']) or 'no namespaces'}"]
        if out["settings_restored"]:
            lines.append("the sinkhole settings are back as they were before 'lab up'")
        if out["purged"]:
            lines.append(f"removed {len(out['purged'])} pins (the lab had loaded ccxdp)")
        return "\n".join(lines)

    emit(as_json, out, text)


@lab.command()
@_name_option
@json_option
@pass_app
def status(app, name, as_json):
    """Show the lab: its hosts, processes, ccxdp's attachment, and what is missing.

    \b
    Examples:
      ccxdp lab status
      ccxdp lab status --name demo --json
    """
    s = control.status(app.datapath_to_read(), app.state_dir, name)
    emit(as_json, s, lambda: _render_status(s))


@lab.command("sinkhole-log")
@_name_option
@json_option
@pass_app
def sinkhole_log(app, name, as_json):
    """Show every contact the lab's sinkhole recorded: TCP connection attempts (on any port),
    UDP datagrams and pings to the sinkhole addresses, with time (UTC) and source.

    \b
    Examples:
      ccxdp lab sinkhole-log
      ccxdp lab sinkhole-log --name demo --json
    """
    app.datapath()  # root, and the lock
    contacts = control.sinkhole_contacts(app.state_dir, name)

    def table() -> Table:
        t = Table(title=f"contacts with the sinkhole of lab {name}", title_justify="left")
        for col in ("time (UTC)", "source", "protocol", "destination"):
            t.add_column(col)
        for c in contacts:
            port = c["destination_port"]
            dst = c["destination"] if port is None else _hostport(c["destination"], port)
            t.add_row(c["time"], c["source"], c["proto"], escape(dst))
        return t

    emit(as_json, contacts, table)


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def register(group: click.Group) -> None:
    group.add_command(lab)
