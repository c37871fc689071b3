"""The 13 real feed files of ../shared/feeds/real, read by ccxdp, against what each format's
own rules say they list. The expected figures are derived here, from the files, by a reading
of each format written for this test alone (a few lines per format, no ccxdp code), so a
regression in ccxdp's reader and a wrong expectation cannot agree by construction.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from urllib.parse import urlsplit

import pytest

from ccxdp.policy import formats


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True


def _lines(path):
    return path.read_text(encoding="utf-8-sig", errors="replace").splitlines()  # BOM dropped


def _nonzero(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if v}


# -- each format's rules, as their projects write them --------------------------------------
_HOSTS_BOILERPLATE = {"localhost", "localhost.localdomain", "local", "broadcasthost",
                      "ip6-localhost", "ip6-loopback", "ip6-localnet", "ip6-mcastprefix",
                      "ip6-allnodes", "ip6-allrouters", "ip6-allhosts"}


def hosts_expected(path) -> dict:
    """'address name [alias…]', '#' comments; every name is listed, exactly."""
    names, ip_hosts, bad = set(), 0, 0
    for line in _lines(path):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2 or not _ip(fields[0]):
            bad += 1  # not a hosts line (dandelion's '!#if' preprocessor lines)
            continue
        for name in fields[1:]:
            name = name.lower().rstrip(".")
            if name in _HOSTS_BOILERPLATE:
                continue
            if _ip(name):
                ip_hosts += 1
                continue
            names.add(name)
    return _nonzero({("block", "exact"): len(names), "bad": bad, "ip": ip_hosts})


def plain_expected(path) -> dict:
    """One name a line, '#' comments; addresses are not names."""
    names, ips = set(), 0
    for line in _lines(path):
        value = line.split("#", 1)[0].strip().lower()
        if not value:
            continue
        if _ip(value):
            ips += 1
        else:
            names.add(value)
    return _nonzero({("block", "exact"): len(names), "ip": ips})


_AG_HOST = r"[A-Za-z0-9_.-]+"
_AG_RULE = re.compile(rf"^(@@)?(\|\|?)({_AG_HOST})(\^\||\^|\|)(\$(?:important|all))?$")


def adblock_expected(path) -> dict:
    """AdGuard Home's domain rules: '||name^' or '||name|' the name and below, '|name^' or
    '|name|' the name alone, '@@' an exception; '$important'/'$all' change nothing."""
    found: dict[tuple, set] = {}
    ips = 0
    for line in _lines(path):
        m = _AG_RULE.match(line.strip())
        if not m:
            continue
        kind = "allow" if m.group(1) else "block"
        match = "subtree" if m.group(2) == "||" else "exact"
        host = m.group(3).lower()
        if _ip(host):
            ips += 1
            continue
        found.setdefault((kind, match), set()).add(host)
    out = {k: len(v) for k, v in found.items()}
    out["ip"] = ips
    return _nonzero(out)


_RPZ_LINE = re.compile(r"^(\S+)\s+(?:\d+\s+)?(?:IN\s+)?CNAME\s+(\S+)\s*$")


def rpz_expected(path) -> dict:
    """'name CNAME .': NXDOMAIN for the name; '*.name CNAME .' for the names below; both
    together, the subtree. Triggers under rpz-ip are addresses, not names."""
    exact, below, ip_triggers = set(), set(), 0
    for line in _lines(path):
        m = _RPZ_LINE.match(line.split(";", 1)[0].strip())
        if not m or m.group(2) != ".":
            continue
        owner = m.group(1).lower().rstrip(".")
        if owner.endswith(".rpz-ip") or ".rpz-ip." in owner:
            ip_triggers += 1
        elif owner.startswith("*."):
            below.add(owner[2:])
        else:
            exact.add(owner)
    out = {("block", "subtree"): len(exact & below), ("block", "exact"): len(exact - below),
           ("block", "below"): len(below - exact), "rpz-ip": ip_triggers}
    return _nonzero(out)


def url_csv_expected(path) -> dict:
    """The 'url' column's hosts."""
    hosts, ips = set(), 0
    for line in _lines(path)[1:]:
        url = line.split(",", 1)[0]
        host = (urlsplit(url).hostname or "").lower()
        if _ip(host):
            ips += 1
        elif host:
            hosts.add(host)
    return _nonzero({("block", "exact"): len(hosts), "ip": ips})


def c2intel_expected(path) -> dict:
    """'#domain,ioc,IPs,C2Domains': the first column, quoted."""
    rows = [line for line in _lines(path) if line and not line.startswith("#")]
    return {("block", "exact"): len({r.split(",", 1)[0].strip('"').lower() for r in rows})}


EXPECTED = {
    "1hosts-lite.hosts": hosts_expected,
    "dandelion-antimalware.hosts": hosts_expected,
    "blocklistproject-phishing.plain": plain_expected,
    "urlhaus-filter-domains.plain": plain_expected,
    "dandelion-antimalware-agh.adblock": adblock_expected,
    "hagezi-tif.mini.adblock": adblock_expected,
    "urlhaus-filter-ag.adblock": adblock_expected,
    "hagezi-spam-tlds.rpz": rpz_expected,
    "hagezi-tif-ips.rpz": rpz_expected,
    "hagezi-tif.normal.rpz": rpz_expected,
    "urlhaus-filter.rpz": rpz_expected,
    "scamdetector-urlhaus.csv": url_csv_expected,
    "c2intelfeeds-dnsc2domains.csv": c2intel_expected,
}


def read_by_ccxdp(path) -> dict:
    parsed = formats.parse_feed(path, "auto", None)
    out: dict = Counter((e.kind, e.match) for e in parsed.entries)
    ips = parsed.skipped.get("IP address host", 0)
    if ips:
        out["ip"] = ips
    if parsed.skipped.get("rpz-ip trigger"):
        out["rpz-ip"] = parsed.skipped["rpz-ip trigger"]
    if parsed.bad:
        out["bad"] = len(parsed.bad)
    return dict(out)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_real_feed_lists_what_its_format_says(real_feeds, name):
    path = real_feeds / name
    assert read_by_ccxdp(path) == EXPECTED[name](path)


def test_the_figures_are_those_of_the_files(real_feeds):
    """The derivations above, pinned: a change in ../shared would show here first."""
    figures = {n: EXPECTED[n](real_feeds / n) for n in ("blocklistproject-phishing.plain",
                                                        "urlhaus-filter-domains.plain",
                                                        "hagezi-tif.mini.adblock",
                                                        "dandelion-antimalware-agh.adblock",
                                                        "hagezi-tif-ips.rpz",
                                                        "c2intelfeeds-dnsc2domains.csv")}
    assert figures == {
        "blocklistproject-phishing.plain": {("block", "exact"): 190_215},
        "urlhaus-filter-domains.plain": {("block", "exact"): 2_689, "ip": 23_079},
        "hagezi-tif.mini.adblock": {("block", "subtree"): 167_478},
        "dandelion-antimalware-agh.adblock": {
            ("block", "subtree"): 11_516, ("block", "exact"): 4, ("allow", "subtree"): 1,
            ("allow", "exact"): 1},
        "hagezi-tif-ips.rpz": {"rpz-ip": 59_510},
        "c2intelfeeds-dnsc2domains.csv": {("block", "exact"): 31},
    }


def test_the_exception_of_the_agh_list_is_an_exact_allow(real_feeds):
    """dandelion's list excepts www.auslogics.com (@@|www.auslogics.com|) below its block of
    ||auslogics.com^: an exact allow, which the kernel lets through."""
    parsed = formats.parse_feed(real_feeds / "dandelion-antimalware-agh.adblock", "auto")
    got = {(e.kind, e.match) for e in parsed.entries if e.name in ("auslogics.com",
                                                                   "www.auslogics.com")}
    assert got == {("block", "subtree"), ("allow", "exact")}


def _skipped_line_numbers(path, is_skipped) -> list[int]:
    return [n for n, line in enumerate(_lines(path), 1) if is_skipped(line)]


@pytest.mark.parametrize(("name", "reason", "is_skipped"), [
    # 23,079 address lines among the names: the first 1,000 of them are listed, by line.
    ("urlhaus-filter-domains.plain", "IP address host",
     lambda line: _ip(line.split("#", 1)[0].strip())),
    # 59,510 rpz-ip triggers, the same.
    ("hagezi-tif-ips.rpz", "rpz-ip trigger",
     lambda line: ".rpz-ip" in line.split(";", 1)[0].split(" ", 1)[0].lower()),
])
def test_skipped_lines_are_listed_by_line_and_capped(real_feeds, name, reason, is_skipped):
    path = real_feeds / name
    parsed = formats.parse_feed(path, "auto", None)
    numbers = _skipped_line_numbers(path, is_skipped)
    assert parsed.skipped[reason] == len(numbers) > formats.SKIPPED_LINES_KEPT == 1000
    assert [b.line for b in parsed.skipped_lines] == numbers[:1000]
    assert {b.reason for b in parsed.skipped_lines} == {reason}
    lines = _lines(path)
    assert all(b.value.split()[0].lower().rstrip(".") in lines[b.line - 1].lower()
               for b in parsed.skipped_lines)
