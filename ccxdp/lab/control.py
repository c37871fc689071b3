"""Lab up, down and status: a lab with ccxdp attached, and undone exactly.

`up` attaches ccxdp to the resolver's interface through the one attach use case
(ccxdp.ops.attach), with the lab's sinkhole as the sinkhole answer, and records in the lab's
record what it changed so that `down` undoes exactly that and nothing more. Every function
here expects the caller to hold the datapath's lock.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ccxdp.datapath.loader import Datapath, Mode
from ccxdp.errors import DatapathError, LabError
from ccxdp.lab.netns import list_netns
from ccxdp.lab.sinkhole import read_contacts
from ccxdp.lab.topology import Lab, LabSpec
from ccxdp.ops.attach import attach
from ccxdp.policy.catalog import Catalog


def lab_dir(state_dir: Path, name: str) -> Path:
    """A lab's work folder: its record, its processes' files."""
    return state_dir / "lab" / name


def up(dp: Datapath, catalog: Catalog, state_dir: Path, name: str, spec: LabSpec,
       mode: Mode) -> tuple[dict[str, Any], list[str]]:
    """Build the lab (unless it is up already, as asked) and attach ccxdp to its resolver;
    returns its status (with `created`) and notes for the operator. A lab that is up with
    another spec is refused; a half-built one is removed first. A failed `up` leaves nothing
    behind."""
    workdir = lab_dir(state_dir, name)
    notes: list[str] = []
    existing = Lab.from_record(workdir)
    if existing is not None:
        if not existing.problems() and existing.spec == spec:
            _attach(dp, catalog, existing, mode)
            existing.save()
            return status(dp, state_dir, name) | {"created": False}, notes
        if not existing.problems():
            raise LabError(
                f"lab {name} is up with other options: 'ccxdp lab down --name {name}' first"
            )
        notes.append(f"removed a half-built lab {name} first ({'; '.join(existing.problems())})")
        _teardown(dp, state_dir, existing)
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
        _remove_labs_folder(state_dir)  # ...and this folder, if no other lab is in it
        raise
    try:
        new.native_tx_peer()
        _attach(dp, catalog, new, mode)
        new.save()
    except BaseException as exc:
        try:
            _teardown(dp, state_dir, new)
        except Exception as cleanup_exc:
            exc.add_note(f"and removing the lab failed too: {cleanup_exc!r}")
        raise
    return status(dp, state_dir, name) | {"created": True}, notes


def down(dp: Datapath, state_dir: Path, name: str) -> dict[str, Any] | None:
    """Remove the lab and what `up` made for it; returns what was undone, or None when there
    is no such lab (nothing to do)."""
    existing = Lab.from_record(lab_dir(state_dir, name))
    if existing is None:
        return None
    return {"name": name, **_teardown(dp, state_dir, existing)}


def status(dp: Datapath, state_dir: Path, name: str) -> dict[str, Any]:
    """The lab's hosts, processes, ccxdp's attachment and what is missing (`problems`)."""
    lab = Lab.from_record(lab_dir(state_dir, name))
    if lab is None:
        return {"name": name, "state": "absent", "problems": [], "hosts": [], "services": [],
                "ccxdp": None, "sinkhole": None, "workdir": None}  # fmt: skip
    problems = lab.problems()
    present = set(list_netns())
    attachment = None
    for a in dp.attachments():
        if (a.ifname, a.netns) == (lab.res_if, lab.res_ns):
            attachment = a.as_dict()
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


def sinkhole_contacts(state_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every contact the lab's sinkhole recorded, oldest first."""
    existing = Lab.from_record(lab_dir(state_dir, name))
    if existing is None:
        raise LabError(f"no lab named {name} (start one with 'ccxdp lab up --name {name}')")
    return read_contacts(existing.sinkhole_log)


def _attach(dp: Datapath, catalog: Catalog, lab: Lab, mode: Mode) -> None:
    """As `ccxdp attach RES_IF --netns RES_NS --mode MODE --sinkhole-v4 … --sinkhole-v6 …`."""
    a = attach(dp, catalog, lab.res_if, mode, netns=lab.res_ns,
               settings={"sinkhole_v4": lab.sinkhole_v4, "sinkhole_v6": lab.sinkhole_v6})
    lab.extra.setdefault("ccxdp", {})["prog_id"] = a.prog_id


def _teardown(dp: Datapath, state_dir: Path, lab: Lab) -> dict[str, Any]:
    """Undo what `up` did, as its record says: detach ccxdp from the lab's interface, put the
    sinkhole settings back if nobody changed them since, purge the pins if `up` made them and
    ccxdp runs nowhere else, then remove the lab's processes, namespaces and files."""
    info = lab.extra.get("ccxdp", {})
    out: dict[str, Any] = {"detached": False, "settings_restored": False, "purged": [],
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
    pinned = dp.pinned_prog_id()
    if info.get("pins_made") and pinned is not None and info.get("prog_id") in (None, pinned):
        if not any(a.prog_id for a in dp.attachments()):
            out["purged"] = dp.purge()
    lab.close()
    _remove_labs_folder(state_dir)
    return out


def _remove_labs_folder(state_dir: Path) -> None:
    """The folder of the labs' records, once it holds none."""
    with contextlib.suppress(OSError):
        (state_dir / "lab").rmdir()
