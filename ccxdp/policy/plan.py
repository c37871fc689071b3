"""The subscriber address plan: the prefixes subscribers' queries come from, in the catalog
and the kernel's LPM trie (ccxdp_plan, bpf/maps.h) together.

A query from outside the plan is still judged and blocked, but its hit is counted only
globally (the ``outside_plan`` event), never per source: with the border's anti-spoofing
filters (BCP 38/84) nobody outside can then fill the per-source map with spoofed sources or
get a subscriber's line notified. No plan declared: every source is counted, as before.

The trie holds the plan's prefixes with value 1 and, while there is at least one, ::/0 with
value 0, so that a source outside them finds 0 and, with no plan at all, the program finds
nothing. Prefixes go in before ::/0, and ::/0 goes out before the last prefix does: a change
never leaves a source of the plan counted as outside it.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ccxdp.datapath import shared
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.policy.catalog import Catalog, PlanEntry
from ccxdp.policy.exempt import Network, PrefixChange, PrefixError, lpm_key, parse_prefix

# Every source: what a source outside all plan prefixes finds in the trie.
CATCH_ALL = shared.LpmKey(0, (ct.c_uint8 * 16)())
INSIDE, OUTSIDE = 1, 0


@dataclass(frozen=True)
class PlanState:
    """The plan as the kernel applies it, for ``status`` and ``plan list``."""

    prefixes: tuple[str, ...]  # IPv4 first, each family in address order
    loaded: bool  # the program is loaded (its trie then holds exactly the prefixes)

    @property
    def declared(self) -> bool:
        return bool(self.prefixes)

    def to_json(self) -> dict:
        return {"declared": self.declared, "prefixes": list(self.prefixes)}


def parse_plan_prefix(text: str) -> Network:
    """A plan prefix: parse_prefix's rules, and not a /0, which would be no plan at all."""
    net = parse_prefix(text, verb="cover")
    if net.prefixlen == 0:
        raise PrefixError(text, f"{net} covers every source: that is no plan (remove the plan "
                                "instead, and every source is counted)")
    return net


def sorted_entries(catalog: Catalog) -> list[PlanEntry]:
    def order(e: PlanEntry):
        net = ipaddress.ip_network(e.prefix)
        return net.version, net.network_address, net.prefixlen

    return sorted(catalog.plan(), key=order)


def state(dp: Datapath, catalog: Catalog) -> PlanState:
    return PlanState(tuple(e.prefix for e in sorted_entries(catalog)), dp.is_loaded())


def add(dp: Datapath, catalog: Catalog, prefixes: Sequence[str]) -> list[PrefixChange]:
    nets = list(dict.fromkeys(parse_plan_prefix(p) for p in prefixes))
    listed = {e.prefix for e in catalog.plan()}
    changes = [PrefixChange(str(n), "unchanged" if str(n) in listed else "added") for n in nets]
    with catalog.transaction():
        catalog.add_plan(str(n) for n in nets)
        if dp.is_loaded():
            reconcile(dp, catalog)
    return changes


def remove(dp: Datapath, catalog: Catalog, prefixes: Sequence[str]) -> list[PrefixChange]:
    nets = list(dict.fromkeys(parse_plan_prefix(p) for p in prefixes))
    listed = {e.prefix for e in catalog.plan()}
    changes = [PrefixChange(str(n), "removed" if str(n) in listed else "not listed")
               for n in nets]
    gone = [str(n) for n in nets if str(n) in listed]
    if gone:
        with catalog.transaction():
            catalog.remove_plan(gone)
            if dp.is_loaded():
                reconcile(dp, catalog)
    return changes


def set_prefixes(dp: Datapath, catalog: Catalog, prefixes: Sequence[str]) -> list[PrefixChange]:
    """Make exactly these the plan (the daemon's [plan] table): what is not given leaves."""
    nets = list(dict.fromkeys(parse_plan_prefix(p) for p in prefixes))
    wanted = [str(n) for n in nets]
    listed = {e.prefix for e in catalog.plan()}
    changes = [PrefixChange(p, "unchanged" if p in listed else "added") for p in wanted]
    changes += [PrefixChange(p, "removed") for p in sorted(listed - set(wanted))]
    if any(c.status != "unchanged" for c in changes):
        with catalog.transaction():
            catalog.remove_plan(listed - set(wanted))
            catalog.add_plan(wanted)
            if dp.is_loaded():
                reconcile(dp, catalog)
    return changes


def _key_tuple(key: shared.LpmKey) -> tuple[int, bytes]:
    return key.prefixlen, bytes(key.addr)


def reconcile(dp: Datapath, catalog: Catalog) -> tuple[int, int]:
    """Make the kernel's plan trie hold exactly the catalog's plan (and ::/0 while there is
    one), in the order the module docstring gives; returns (written, deleted). Run at every
    attach and after every change. If the kernel refuses a prefix (trie full), what this
    call wrote is taken out again and the catalog's transaction is rolled back by the
    caller's error."""
    prefixes = [lpm_key(ipaddress.ip_network(e.prefix)) for e in catalog.plan()]
    wanted = {_key_tuple(k): (k, INSIDE) for k in prefixes}
    if prefixes:
        wanted[_key_tuple(CATCH_ALL)] = (CATCH_ALL, OUTSIDE)
    catch_all = _key_tuple(CATCH_ALL)
    with dp.open_map(shared.MAP_PLAN) as m:
        present = {_key_tuple(k): (k, m.lookup(k).value) for k in list(m.keys())}
        stale = [t for t in present if t not in wanted]
        # ::/0 first: until the last prefix is gone, no source of the plan is ever outside.
        stale.sort(key=lambda t: t != catch_all)
        for t in stale:
            m.delete(present[t][0])
        missing = [t for t, (_k, v) in wanted.items()
                   if t not in present or present[t][1] != v]
        missing.sort(key=lambda t: t == catch_all)  # ::/0 last
        written = []
        try:
            for t in missing:
                key, value = wanted[t]
                m.update(key, ct.c_uint8(value))
                written.append(t)
        except OSError as e:
            for t in reversed(written):
                if t in present:
                    m.update(present[t][0], ct.c_uint8(present[t][1]))
                else:
                    m.delete(wanted[t][0])
            for t in stale:
                m.update(present[t][0], ct.c_uint8(present[t][1]))
            raise CcxdpError(
                f"cannot write {len(prefixes)} prefixes to the kernel map {shared.MAP_PLAN}: "
                f"{e.strerror or e} (full? it holds at most {m.info.max_entries}); "
                "nothing was changed"
            ) from e
    return len(missing), len(stale)
