"""The subscriber address plan: the prefixes subscribers' queries come from, in the catalog
and the kernel's LPM trie (ccxdp_plan, bpf/maps.h) together.

A query from outside the plan is still judged and blocked, but its hit is counted only
globally (the ``outside_plan`` event), never per source: with the border's anti-spoofing
filters (BCP 38/84) nobody outside can then fill the per-source map with spoofed sources or
get a subscriber's line notified. No plan declared: every source is counted, as before.

The trie holds the plan's prefixes with value 1 and, while there is at least one, ::/0 with
value 0, so that a source outside them finds 0 and, with no plan at all, the program finds
nothing. A change never counts a source that is in the plan before and after it as outside
(reconcile says in which order the trie is written).
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
    one); returns (written, deleted). Run at every attach and after every change.

    The order keeps every source that is in the plan before and after the change counted
    throughout: ::/0 goes first when no plan is left, new prefixes go in before old ones go
    out, and ::/0 comes last when a plan begins. If the kernel refuses a prefix (trie full),
    the prefixes this call wrote are taken out again before anything was deleted, and the
    caller's catalog transaction is rolled back by the error."""
    prefixes = [lpm_key(ipaddress.ip_network(e.prefix)) for e in catalog.plan()]
    wanted = {_key_tuple(k): k for k in prefixes}
    catch_all = _key_tuple(CATCH_ALL)
    with dp.open_map(shared.MAP_PLAN) as m:
        present = {_key_tuple(k): (k, m.lookup(k).value) for k in list(m.keys())}
        deleted = 0
        if not prefixes and catch_all in present:
            m.delete(CATCH_ALL)
            deleted += 1
        missing = [t for t in wanted if present.get(t, (None, None))[1] != INSIDE]
        written = []
        try:
            for t in missing:
                m.update(wanted[t], ct.c_uint8(INSIDE))
                written.append(t)
        except OSError as e:
            for t in written:
                if t in present:
                    m.update(present[t][0], ct.c_uint8(present[t][1]))
                else:
                    m.delete(wanted[t])
            if not prefixes and catch_all in present:
                m.update(CATCH_ALL, ct.c_uint8(OUTSIDE))
            raise CcxdpError(
                f"cannot write {len(prefixes)} prefixes to the kernel map {shared.MAP_PLAN}: "
                f"{e.strerror or e} (full? it holds at most {m.info.max_entries}); "
                "nothing was changed"
            ) from e
        for t, (key, _value) in present.items():
            if t != catch_all and t not in wanted:
                m.delete(key)
                deleted += 1
        if prefixes and present.get(catch_all, (None, None))[1] != OUTSIDE:
            m.update(CATCH_ALL, ct.c_uint8(OUTSIDE))
            written.append(catch_all)
    return len(written), deleted
