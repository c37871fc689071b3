"""Attach the filter to an interface and make the kernel match the catalog.

The one home of this use case: `ccxdp attach`, the daemon (at start and on reload) and
`ccxdp lab up` all call `attach` here, so an interface gets the same checks, the same
settings and the same entries whichever way it was attached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ccxdp.datapath.loader import Attachment, Datapath, Limits, Mode
from ccxdp.policy import exempt, lists, plan
from ccxdp.policy.catalog import Catalog


def apply_settings(dp: Datapath, wanted: Mapping[str, Any]) -> bool:
    """Give the loaded program these settings (the others keep their values); returns whether
    anything changed, so that an unchanged setting is not rewritten."""
    current = dp.settings()
    new = replace(current, **wanted)
    if new == current:
        return False
    dp.set_settings(new)
    return True


def attach(
    dp: Datapath,
    catalog: Catalog,
    ifname: str,
    mode: Mode = Mode.AUTO,
    *,
    netns: str | None = None,
    limits: Limits | None = None,
    dns_ports: Iterable[int] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Attachment:
    """Load the program if needed, give it `settings`, fill its name list, exempt prefixes
    and address plan from the catalog, then attach it to `ifname`; returns what the kernel reports.

    The maps are filled before the program is attached, so its first query already sees all
    of the catalog; an interface where ccxdp already runs keeps its program (adopted). A
    failed attach changes nothing: what it loaded is unloaded, and the settings (the program's
    and the state folder's copy) are put back. The caller holds the datapath's lock."""
    settings = dict(settings or {})
    before = dp.settings() if settings else None

    def on_loaded(loaded: Datapath) -> None:
        if settings:
            apply_settings(loaded, settings)
        lists.reconcile(loaded, catalog)
        exempt.reconcile(loaded, catalog)
        plan.reconcile(loaded, catalog)

    try:
        return dp.attach(ifname, mode, netns=netns, limits=limits or Limits(), dns_ports=dns_ports,
                         on_loaded=on_loaded)  # fmt: skip
    except BaseException:
        if before is not None:
            dp.set_settings(before)
        raise
