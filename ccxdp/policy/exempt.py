"""Exempt (opted-out) source prefixes: catalog and kernel LPM trie changed together.

Two sets share the trie: static prefixes (``exempt add``, fixed ranges) and the prefixes
opted-out lines hold now (line_exempt.py derives them from the sessions sources). The kernel
holds their union; a prefix in both stays until it has left both.

A query from an exempt source is neither judged nor counted per source; only the global
"exempt" counter moves. The kernel keeps IPv4 prefixes IPv4-mapped (::ffff:a.b.c.d, the
prefix length plus 96), the form it gives every source address.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ccxdp.datapath import shared
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.policy.catalog import Catalog, ExemptEntry, LineExemptEntry

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class PrefixError(CcxdpError):
    """A source prefix that cannot be exempted."""

    def __init__(self, value: str, message: str):
        super().__init__(message)
        self.value = value


@dataclass(frozen=True)
class PrefixChange:
    prefix: str
    status: str  # "added", "unchanged", "removed", "not listed"


@dataclass(frozen=True)
class LinePrefixChange:
    prefix: str
    line: str
    status: str  # "added" (the line holds it now), "removed" (it does not any more)


def parse_prefix(text: str, verb: str = "exempt") -> Network:
    """An IPv4 or IPv6 prefix; a bare address is a /32 or /128. Host bits must be clear.
    ``verb`` says what the prefix does to its sources, for the one message that needs it."""
    value = text.strip()
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise PrefixError(text, f"{text!r} is not an IPv4 or IPv6 prefix") from None
        raise PrefixError(
            text, f"{value} has host bits set; did you mean {loose}?"
        ) from None
    if net.version == 6:
        if net.network_address.scope_id:
            raise PrefixError(text, f"{value}: a zone index (%...) has no place in a prefix")
        if net.subnet_of(_MAPPED):
            v4 = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
            raise PrefixError(
                text, f"{value} is an IPv4-mapped prefix: give it as IPv4 ({v4})"
            )
        if net.overlaps(_MAPPED):
            raise PrefixError(
                text,
                f"{value} would also {verb} every IPv4 source (the kernel keeps IPv4 "
                f"sources as {_MAPPED}): give IPv6 prefixes that leave {_MAPPED} out, and "
                f"IPv4 prefixes as IPv4",
            )
    return net


def lpm_key(net: Network) -> shared.LpmKey:
    if net.version == 4:
        addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + net.network_address.packed)
        prefixlen = net.prefixlen + 96
    else:
        addr, prefixlen = net.network_address, net.prefixlen
    return shared.LpmKey(prefixlen, (ct.c_uint8 * 16).from_buffer_copy(addr.packed))


def _key_tuple(key: shared.LpmKey) -> tuple[int, bytes]:
    return key.prefixlen, bytes(key.addr)


def sorted_entries(catalog: Catalog) -> list[ExemptEntry]:
    """The catalog's prefixes, IPv4 first, each family in address order."""
    def order(e: ExemptEntry):
        net = ipaddress.ip_network(e.prefix)
        return net.version, net.network_address, net.prefixlen

    return sorted(catalog.exempt(), key=order)


def sorted_line_entries(catalog: Catalog) -> list[LineExemptEntry]:
    """The line-derived prefixes, in the order of sorted_entries."""
    def order(e: LineExemptEntry):
        net = ipaddress.ip_network(e.prefix)
        return net.version, net.network_address, net.prefixlen

    return sorted(catalog.line_exempt(), key=order)


# Shorter prefixes are exempted only with force: an IPv4 /8 is the most an ISP's own ranges
# hold (IANA's blocks to the registries); no registry's allocation to one ISP is near an
# IPv6 /16 (the largest are /19 to /20). A shorter one is a typo, or the whole Internet.
SHORTEST_PREFIX = {4: 8, 6: 16}


def check_width(nets: Sequence[Network]) -> None:
    """Refuse prefixes shorter than SHORTEST_PREFIX: they would stop filtering and counting
    for a share of the Internet (0.0.0.0/0: all of IPv4)."""
    for n in nets:
        if n.prefixlen < SHORTEST_PREFIX[n.version]:
            share = f"1/{1 << n.prefixlen:,}" if n.prefixlen else "all"
            count = f" ({n.num_addresses:,} addresses)" if n.version == 4 else ""
            raise PrefixError(
                str(n), f"{n} would exempt {share} of the IPv{n.version} Internet from "
                f"filtering and counting{count}: prefixes shorter "
                f"than /{SHORTEST_PREFIX[4]} (IPv4) or /{SHORTEST_PREFIX[6]} (IPv6) need "
                f"--force; nothing was changed")


def add(dp: Datapath, catalog: Catalog, prefixes: Sequence[str],
        force: bool = False) -> list[PrefixChange]:
    """Exempt static prefixes; ``force``: also those shorter than SHORTEST_PREFIX."""
    nets = list(dict.fromkeys(parse_prefix(p) for p in prefixes))
    if not force:
        check_width(nets)
    listed = {e.prefix for e in catalog.exempt()}
    changes = [PrefixChange(str(n), "unchanged" if str(n) in listed else "added") for n in nets]
    with catalog.transaction():
        catalog.add_exempt(str(n) for n in nets)
        if dp.is_loaded():
            _write(dp, [lpm_key(n) for n in nets])
    return changes


def remove(dp: Datapath, catalog: Catalog, prefixes: Sequence[str]) -> list[PrefixChange]:
    nets = list(dict.fromkeys(parse_prefix(p) for p in prefixes))
    listed = {e.prefix for e in catalog.exempt()}
    changes = [PrefixChange(str(n), "removed" if str(n) in listed else "not listed")
               for n in nets]
    gone = [n for n in nets if str(n) in listed]
    held = {e.prefix for e in catalog.line_exempt()}  # an opted-out line's: stays in the trie
    with catalog.transaction():
        catalog.remove_exempt(str(n) for n in gone)
        if dp.is_loaded() and gone:
            with dp.open_map(shared.MAP_EXEMPT) as m:
                for n in gone:
                    if str(n) not in held:
                        m.delete(lpm_key(n))
            _set_gate(dp)
    return changes


def set_line_prefixes(dp: Datapath, catalog: Catalog,
                      wanted: dict[str, str]) -> list[LinePrefixChange]:
    """Make {prefix: line} the line-derived prefixes, in the catalog and (where the program
    is loaded) the kernel, together or not at all. Static prefixes are never touched. A
    prefix that moves from one line to another is removed for the one, added for the
    other. Prefixes must be normalized (parse_prefix)."""
    have = {e.prefix: e.line for e in catalog.line_exempt()}
    changes = [LinePrefixChange(p, line, "removed") for p, line in have.items()
               if wanted.get(p) != line]
    changes += [LinePrefixChange(p, line, "added") for p, line in wanted.items()
                if have.get(p) != line]
    if changes:
        with catalog.transaction():
            catalog.set_line_exempt(wanted)
            if dp.is_loaded():
                reconcile(dp, catalog)
    return changes


def gate_indexes(key: shared.LpmKey) -> range:
    """The exempt gate's indexes (ccxdp_shared.h) of every address an LPM key covers: 16 bits
    of the address, the low half of an IPv4 one, bits 32-47 of an IPv6 one. A prefix that
    leaves some of those bits free covers every value of them."""
    addr, plen = bytes(key.addr), key.prefixlen
    if addr[:12] == _MAPPED.network_address.packed[:12] and plen >= 96:
        at = 12 + shared.EXEMPT_GATE_V4_BYTE
        fixed = plen - 8 * at  # of the index's bits, how many the prefix fixes
    else:
        at, fixed = shared.EXEMPT_GATE_V6_BYTE, plen - 8 * shared.EXEMPT_GATE_V6_BYTE
    bits = shared.EXEMPT_GATE_BITS
    fixed = max(0, min(bits, fixed))
    free = bits - fixed
    first = (int.from_bytes(addr[at:at + 2], "big") >> free) << free
    return range(first, first + (1 << free))


def _set_gate(dp: Datapath, adding: Sequence[shared.LpmKey] = ()) -> None:
    """Make the gate open exactly where the trie's prefixes, and those about to be inserted
    (adding), may hold a source; indexes are opened before their prefixes go in and closed
    only after they left, so the program never skips the trie for an exempt source."""
    with dp.open_map(shared.MAP_EXEMPT) as m:
        keys = [*m.keys(), *adding]
    wanted = bytearray(1 << shared.EXEMPT_GATE_BITS)
    for k in keys:
        r = gate_indexes(k)
        wanted[r.start:r.stop] = b"\1" * len(r)
    with dp.open_map(shared.MAP_EXEMPT_GATE) as gate:
        present = bytearray(len(wanted))
        for idx, values, count in gate.lookup_batch_arrays(chunk=len(wanted)):
            for j in range(count):
                present[idx[j]] = values[j]
        changed = [i for i in range(len(wanted)) if wanted[i] != present[i]]
        if changed:
            gate.update_batch((ct.c_uint32 * len(changed))(*changed),
                              (ct.c_uint8 * len(changed))(*(wanted[i] for i in changed)))


def _write(dp: Datapath, keys: list[shared.LpmKey]) -> None:
    """Insert LPM keys; if the kernel refuses one (trie full), the ones this call inserted
    are taken out again, so the trie is never left half-changed."""
    if keys:
        _set_gate(dp, adding=keys)
    with dp.open_map(shared.MAP_EXEMPT) as m:
        present = {_key_tuple(k) for k in m.keys()}
        inserted = []
        try:
            for k in keys:
                if _key_tuple(k) in present:
                    continue
                m.update(k, ct.c_uint8(1))
                inserted.append(k)
        except OSError as e:
            for k in inserted:
                m.delete(k)
            _set_gate(dp)
            raise CcxdpError(
                f"cannot write {len(keys)} prefixes to the kernel map {shared.MAP_EXEMPT}: "
                f"{e.strerror or e} (full? it holds at most {m.info.max_entries}); "
                "nothing was changed"
            ) from e
    _set_gate(dp)


def reconcile(dp: Datapath, catalog: Catalog) -> tuple[int, int]:
    """Make the kernel's exempt trie hold exactly the catalog's prefixes, static and
    line-derived; returns (written, deleted). Run at every attach, beside
    blocklist.reconcile, and after every change of the line-derived set."""
    prefixes = [e.prefix for e in catalog.exempt()] + [e.prefix for e in catalog.line_exempt()]
    wanted = {_key_tuple(k): k for k in (lpm_key(ipaddress.ip_network(p)) for p in prefixes)}
    with dp.open_map(shared.MAP_EXEMPT) as m:
        present = {_key_tuple(k): k for k in m.keys()}
        stale = [k for t, k in present.items() if t not in wanted]
        for k in stale:
            m.delete(k)
    missing = [k for t, k in wanted.items() if t not in present]
    _write(dp, missing)
    _set_gate(dp)
    return len(missing), len(stale)
