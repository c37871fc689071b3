"""lab up, down, status, sinkhole-log: a namespace lab with ccxdp attached, to try it out.

The lab itself is ccxdp.lab's (a resolver running unbound, two clients and a sinkhole on a
switch namespace). This module adds what makes it ccxdp's: `up` attaches ccxdp to the
resolver's interface exactly as `ccxdp attach IFACE --netns NS` does, with the lab's sinkhole
as the sinkhole answer, and records what it changed so that `down` undoes exactly that.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from ccxdp.datapath import libbpf
from ccxdp.datapath.loader import Datapath, Mode
from ccxdp.errors import DatapathError
from ccxdp.lab.core import Lab, LabError, LabSpec, check_lab_name, list_netns, read_contacts

from . import pass_app
from .output import emit, json_option
from .types import IPV4, IPV6

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


def _lab_dir(app, name: str) -> Path:
    return app.state_dir / "lab" / name


def _pinned_prog_id(dp: Datapath) -> int | None:
    if not dp.is_loaded():
        return None
    fd = libbpf.obj_get(dp.prog_pin, "program")
    try:
        return libbpf.prog_info(fd).id
    finally:
        libbpf.close(fd)


def _attach(app, lab: Lab, mode: str) -> dict:
    """`ccxdp attach RES_IF --netns RES_NS --mode MODE --sinkhole-v4 … --sinkhole-v6 …`, run
    as that very command (same checks, same catalog reconciliation), its JSON read back."""
    from .attach import attach

    app.catalog()  # opened here, so that it outlives the attach command's own context
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        click.get_current_context().invoke(
            attach, iface=lab.res_if, netns=lab.res_ns, mode=mode,
            sinkhole_v4=lab.sinkhole_v4, sinkhole_v6=lab.sinkhole_v6, as_json=True,
        )  # fmt: skip
    return json.loads(out.getvalue())


def _teardown(app, lab: Lab) -> dict:
    """Undo what `up` did, as its record says: detach ccxdp from the lab's interface, put the
    sinkhole settings back if nobody changed them since, purge the pins if `up` made them and
    ccxdp runs nowhere else, then remove the lab's processes, namespaces and files."""
    dp = app.datapath()
    info = lab.extra.get("ccxdp", {})
    out: dict = {"detached": False, "settings_restored": False, "purged": [],
                 "removed": list(lab.made_namespaces)}  # fmt: skip
    if lab.res_ns in list_netns():
        try:
            dp.detach(lab.res_if, lab.res_ns)
            out["detached"] = True
        except DatapathError:
            pass  # nothing (or something foreign) attached there: it goes with the namespace
    before, made = info.get("sinkhole_before"), info.get("sinkhole_set")
    if before and made and before != made:
        current = dp.settings()
        if [current.sinkhole_v4, current.sinkhole_v6] == made:
            dp.set_settings(replace(current, sinkhole_v4=before[0], sinkhole_v6=before[1]))
            out["settings_restored"] = True
    pinned = _pinned_prog_id(dp)
    if info.get("pins_made") and pinned is not None and info.get("prog_id") in (None, pinned):
        if not any(a.prog_id for a in dp.attachments()):
            out["purged"] = dp.purge()
    lab.close()
    _remove_lab_folder(app)
    return out


def _remove_lab_folder(app) -> None:
    """The folder of the labs' records, once it holds none."""
    with contextlib.suppress(OSError):
        (app.state_dir / "lab").rmdir()


def _status(app, name: str) -> dict:
    lab = Lab.from_record(_lab_dir(app, name))
    if lab is None:
        return {"name": name, "state": "absent", "problems": [], "hosts": [], "services": [],
                "ccxdp": None, "sinkhole": None, "workdir": None}  # fmt: skip
    problems = lab.problems()
    present = set(list_netns())
    attachment = None
    for a in app.datapath().attachments():
        if (a.ifname, a.netns) == (lab.res_if, lab.res_ns):
            attachment = {"interface": a.ifname, "netns": a.netns,
                          "mode": str(a.mode) if a.mode else None, "prog_id": a.prog_id,
                          "attached": a.prog_id is not None}  # fmt: skip
    if lab.complete and (attachment is None or not attachment["attached"]):
        problems.append(f"ccxdp is not attached to {lab.res_if}")
    hosts = [{"role": h.role, "title": h.title, "namespace": h.ns, "interface": h.ifname,
              "addresses": h.addresses(), "exists": h.ns in present} for h in lab.hosts]
    hosts.append({"role": "sw", "title": "switch", "namespace": lab.sw_ns,
                  "interface": lab.bridge, "addresses": [], "exists": lab.sw_ns in present})
    services = [{"name": key, "pid": lab.service_pid(key), "running": lab.service_running(key)}
                for key in ("unbound", "sinkhole") if lab.service_pid(key) is not None]  # fmt: skip
    return {
        "name": name,
        "state": "up" if not problems else "broken",
        "problems": problems,
        "workdir": str(lab.tmpdir),
        "hosts": hosts,
        "services": services,
        "ccxdp": attachment,
        "sinkhole": {"v4": lab.sinkhole_v4, "v6": lab.sinkhole_v6,
                     "log": str(lab.sinkhole_log),
                     "contacts": len(read_contacts(lab.sinkhole_log))},  # fmt: skip
    }


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
    dp = app.datapath()  # root, and the state folder's lock until the command ends
    workdir = _lab_dir(app, name)
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
    notes = []
    existing = Lab.from_record(workdir)
    if existing is not None:
        if not existing.problems() and existing.spec == spec:
            attached = _attach(app, existing, mode)
            existing.extra.setdefault("ccxdp", {})["prog_id"] = attached["prog_id"]
            existing.save()
            status = _status(app, name) | {"created": False}
            already = f"lab {name} is already up"
            emit(as_json, status, lambda: Group(already, _render_status(status)))
            return
        if not existing.problems():
            raise LabError(
                f"lab {name} is up with other options: 'ccxdp lab down --name {name}' first"
            )
        notes.append(f"removed a half-built lab {name} first ({'; '.join(existing.problems())})")
        _teardown(app, existing)
    before = dp.settings()
    new = Lab(spec, name=name, workdir=workdir)
    new.extra["ccxdp"] = {
        "pins_made": not dp.is_loaded(),
        "sinkhole_before": [before.sinkhole_v4, before.sinkhole_v6],
        "sinkhole_set": [new.sinkhole_v4, new.sinkhole_v6],
    }
    try:
        new.build()  # a failure removes whatever it made...
    except BaseException:
        _remove_lab_folder(app)  # ...and this folder, if no other lab is in it
        raise
    try:
        new.native_tx_peer()
        attached = _attach(app, new, mode)
        new.extra["ccxdp"]["prog_id"] = attached["prog_id"]
        new.save()
    except BaseException as exc:
        try:
            _teardown(app, new)
        except Exception as cleanup_exc:
            exc.add_note(f"and removing the lab failed too: {cleanup_exc!r}")
        raise
    status = _status(app, name) | {"created": True}
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
    app.datapath()  # root, and the lock
    existing = Lab.from_record(_lab_dir(app, name))
    if existing is None:
        out = {"name": name, "removed": [], "detached": False, "settings_restored": False,
               "purged": []}  # fmt: skip
        emit(as_json, out, lambda: f"no lab named {name}: nothing to remove")
        return
    out = {"name": name, **_teardown(app, existing)}

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
    s = _status(app, name)
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
    existing = Lab.from_record(_lab_dir(app, name))
    if existing is None:
        raise LabError(f"no lab named {name} (start one with 'ccxdp lab up --name {name}')")
    contacts = read_contacts(existing.sinkhole_log)

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
