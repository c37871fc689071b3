"""Feed files as ISPs get them: each format's quirks, exact entries, exact bad lines."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccxdp.policy import formats as ff
from ccxdp.policy.formats import (
    BadLine,
    ExportEntry,
    FeedEntry,
    FeedFormatError,
    adblock,
    common,
    csv,
    detect,
    detect_format,
    export_feed,
    hosts,
    parse_feed,
    plain,
    rpz,
)

FORMAT_MODULES = [ff, common, plain, hosts, adblock, csv, rpz, detect]
LONG_LABEL = "a" * 64


def write(tmp_path: Path, name: str, text: str, *, crlf: bool = False, bom: bool = False,
          raw: bytes = b"") -> Path:
    path = tmp_path / name
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8") + raw)
    return path


def E(name: str, line: int, match: str = "exact", action: str | None = None,
      kind: str = "block", category: str | None = None) -> FeedEntry:
    return FeedEntry(name, kind, match, action, line, category)


def bad(parsed) -> list[str]:
    return [str(b) for b in parsed.bad]


# -- plain -----------------------------------------------------------------------------------
PLAIN = f"""\
# C&C names, one a line
Evil.Example.
   c2.example   # trailing comment

*.wild.example
.sub.example
bücher.example
XN--BCHER-KVA.example
evil.example
1.2.3.4
bad_-.example
http://url.example/path
{LONG_LABEL}.example
two names.example
xn--zz.example
pair.example
*.pair.example
pair.example
dup.example
.dup.example
bad!char.example
*.
"""


def test_plain_quirks(tmp_path):
    path = write(tmp_path, "plain.txt", PLAIN, crlf=True, bom=True)
    parsed = parse_feed(path, "plain")
    assert parsed.format == "plain"
    assert parsed.path == str(path)
    assert parsed.entries == [
        E("evil.example", 2),
        E("c2.example", 3),
        E("wild.example", 5, "below"),
        E("sub.example", 6, "subtree"),
        E("xn--bcher-kva.example", 7),
        E("xn--zz.example", 15),  # not valid IDNA, a valid DNS name: listed, and counted
        E("pair.example", 16, "subtree"),  # pair.example and *.pair.example
        E("dup.example", 19),
    ]
    assert parsed.duplicates == 3  # lines 8 (punycode of 7), 9 (case of 2), 18
    assert parsed.skipped == {"IP address host": 1}  # line 10
    assert parsed.kept == {"xn-- label that is not valid IDNA": 1}
    p = str(path)
    assert bad(parsed) == [
        f"{p}:11: label 'bad_-' starts or ends with a hyphen: bad_-.example",
        f"{p}:12: a URL, not a domain name: http://url.example/path",
        f"{p}:13: label 'aaaaaaaaaaaaaaaaaaaa'… longer than 63 bytes: {LONG_LABEL}.example",
        f"{p}:14: several fields, not one name: two names.example",
        f"{p}:20: conflicts with line 19: .dup.example",
        f"{p}:21: label 'bad!char' has characters other than a-z 0-9 - _: bad!char.example",
        f"{p}:22: empty name (the root cannot be listed): *.",
    ]


def test_plain_not_utf8_and_lone_lines(tmp_path):
    path = write(tmp_path, "latin1.txt", "ok.example\n", raw=b"caf\xe9.example\nlast.example")
    parsed = parse_feed(path, "plain")
    assert parsed.entries == [E("ok.example", 1), E("last.example", 3)]
    assert bad(parsed) == [f"{path}:2: not UTF-8: caf\ufffd.example"]


def test_plain_name_length_limit(tmp_path):
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: 255 in wire form
    too_long = "c." + longest
    path = write(tmp_path, "long.txt", f"{longest}\n{too_long}\n")
    parsed = parse_feed(path, "plain")
    assert parsed.entries == [E(longest, 1)]
    assert bad(parsed) == [f"{path}:2: longer than 255 bytes in wire form: {too_long[:79]}…"]


def test_bad_line_value_is_cut():
    assert str(BadLine("f", 3, "why", "x")) == "f:3: why: x"
    b = common._Builder("f")
    b.refuse(1, "why", "  " + "v" * 100 + "  ")
    assert b.bad[0].value == "v" * 79 + "…"


# Lines that look normalized but are not, beside ones that are: the fast path must send
# each of the former to the careful path, and agree with it on everything.
TRICKY = [
    "good.example", "-lead.example", "trail-.example", "mid.-dle.example", "mid-.dle.example",
    "xn--bcher-kva.example", "xn--zz.example", "x" * 63 + ".example", "under_score.example",
    "1.2.3.4", "2.example", "a.b.c.d.e.f", "localhost.localdomain", "ok-hyphen.example",
    ".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 62]),
    "e.x-", "-", "good.example", "rpz-ip.example", "xn--ls8h.la", "a.b-",
]


def _patch(monkeypatch, name: str, value) -> None:
    """Replace a name in whichever of the formats' modules holds it (each imports what it
    uses, so every holder is patched)."""
    holders = [m for m in FORMAT_MODULES if hasattr(m, name)]
    assert holders, name
    for module in holders:
        monkeypatch.setattr(module, name, value)


def _without_fast_path(monkeypatch, *names: str) -> None:
    never = common._runs("(?!)")
    for name in names:
        _patch(monkeypatch, name, never)


@pytest.mark.parametrize(
    "fmt, line, runs",
    [
        ("plain", "{}", "_PLAIN_RUNS"),
        ("hosts", "0.0.0.0 {}", "_HOSTS_RUNS"),
        ("adblock", "||{}^", "_ADBLOCK_RUNS"),
        ("rpz", "{} CNAME .", "_RPZ_RUNS"),
        ("csv", "{}", "_CSV_RUNS"),
    ],
)
def test_fast_path_agrees_with_careful_path(tmp_path, monkeypatch, fmt, line, runs):
    tricky = TRICKY if fmt != "rpz" else [n for n in TRICKY if len(n) < 254]  # see below
    lines = [line.format(n) for n in tricky * 3]
    path = write(tmp_path, f"tricky.{fmt}", "\n".join(lines) + "\n")
    fast = parse_feed(path, fmt)
    _without_fast_path(monkeypatch, runs)
    if fmt == "csv":  # and the pattern that finds hosts in URLs finds none
        _patch(monkeypatch, "_CSV_FAST_HOSTS", re.compile(r"^()()[^\n]*$", re.M))
    careful = parse_feed(path, fmt)
    assert fast == careful
    assert [e.name for e in fast.entries][:4] == ["good.example", "xn--bcher-kva.example",
                                                 "xn--zz.example", "x" * 63 + ".example"]
    assert fast.kept == {"xn-- label that is not valid IDNA": 1}
    assert fast.duplicates > 0 and fast.bad


URL_VALUES = [
    "http://good.example/x", "http://user@auth.example/", "http://x.example:80@evil.example/",
    "https://UPPER.example/", "evil.example/redirect?u=http://x.example", "port.example:443",
    "port.example:abc", "http://q.example?q=1", "http://f.example#frag", "http://-bad.example/",
    "http://xn--zz.example/", "ftp://files.example", "http:///nohost", "http://[::1]/",
    "http://1.2.3.4:80/", "//proto.example/path", "what.example?x", "http://good.example/y",
    "http://port.example:8080", "HTTP://scheme.example/", "http://back.example\\x/",
    "http://sp.example/a b", "plain.example", "http://xn--bcher-kva.example/", "",
]


BACKSLASHED = "example\\x"


def test_csv_url_fast_path_agrees_with_careful_path(tmp_path, monkeypatch):
    text = "url\n" + "".join(f'"{v}"\n' for v in URL_VALUES * 2)
    path = write(tmp_path, "urls.csv", text)
    fast = parse_feed(path, "csv")
    _patch(monkeypatch, "_CSV_FAST_HOSTS", re.compile(r"^()()[^\n]*$", re.M))
    assert parse_feed(path, "csv") == fast
    assert [e.name for e in fast.entries] == [
        "good.example", "auth.example", "evil.example", "upper.example", "port.example",
        "q.example", "f.example", "xn--zz.example", "files.example", "proto.example",
        "what.example", "scheme.example", "sp.example", "plain.example",
        "xn--bcher-kva.example",
    ]
    assert fast.skipped == {"IP address host": 4}
    p = str(path)
    assert bad(fast)[:5] == [
        f"{p}:8: label 'example:abc' has characters other than a-z 0-9 - _: port.example:abc",
        f"{p}:11: label '-bad' starts or ends with a hyphen: http://-bad.example/",
        f"{p}:14: URL without a host: http:///nohost",
        f"{p}:22: label {BACKSLASHED!r} has characters other than a-z 0-9 - _: "
        "http://back.example\\x/",
        f'{p}:26: empty value: ""',
    ]
    assert len(fast.bad) == 10  # each of 5 bad values, listed twice


FRAGMENTS = st.sampled_from([
    "a", "bc", "d1", "-", "_", ".", "..", "xn--", "xn--bcher-kva", "xn--zz", "Up", "ü", "9",
    "1.2.3.4", "*.", " ", "\t", "#", ";", "localhost", "rpz-ip", "x" * 63, "y" * 64, "/p",
    ":80", "http://", "@", "?q",
])


@pytest.mark.parametrize(
    "fmt, template, hooks",
    [
        ("plain", "{}", ["_PLAIN_RUNS"]),
        ("hosts", "0.0.0.0 {}", ["_HOSTS_RUNS"]),
        ("adblock", "||{}^", ["_ADBLOCK_RUNS"]),
        ("rpz", "{} CNAME .", ["_RPZ_RUNS"]),
        ("csv", "{}", ["_CSV_RUNS", "_CSV_FAST_HOSTS"]),
    ],
)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.lists(FRAGMENTS, max_size=6).map("".join), max_size=25))
def test_fast_path_agrees_on_any_lines(tmp_path, monkeypatch, fmt, template, hooks, values):
    header = "domain\n" if fmt == "csv" else ""
    path = write(tmp_path, f"any.{fmt}", header + "".join(template.format(v) + "\n"
                                                          for v in values))

    def outcome():
        try:
            return parse_feed(path, fmt)
        except FeedFormatError as e:
            return str(e)

    fast = outcome()
    with monkeypatch.context() as m:
        for hook in hooks:
            never = (re.compile(r"^()()[^\n]*$", re.M) if hook == "_CSV_FAST_HOSTS"
                     else common._runs("(?!)"))
            _patch(m, hook, never)
        assert outcome() == fast


CELLS = st.sampled_from([
    "", "x", "evil.example", "Evil.example", "http://c2.example/x", '"q.example"', '"a,b"',
    '"say ""hi"""', " ", "#", '"', "1.2.3.4:80", "y.example ", '"z.example", ', "\r",
])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(CELLS, min_size=1, max_size=4).map(",".join), max_size=12),
       column=st.sampled_from([None, "1", "3"]))
def test_csv_paths_agree_on_any_rows(tmp_path, monkeypatch, rows, column):
    path = write(tmp_path, "any.csv", "a,b,domain\n" + "".join(r + "\n" for r in rows))

    def outcome():
        try:
            return parse_feed(path, "csv", column=column)
        except FeedFormatError as e:
            return str(e)

    expected = outcome()
    with monkeypatch.context() as m:
        _patch(m, "_pick_by_pattern", lambda *a: None)
        assert outcome() == expected
        _patch(m, "_pick_by_reader", lambda *a: None)
        assert outcome() == expected


ZONE_LINES = st.sampled_from([
    "a.example CNAME .", "*.a.example CNAME .", "a.example CNAME rpz-drop.", "b.example CNAME *.",
    "b.example 60 IN CNAME rpz-passthru.", "c.example in 60 cname rpz-tcp-only. ; note",
    "  TXT \"why\"", "  A 192.0.2.1", "d.example A 192.0.2.2", "D.example CNAME .",
    "$ORIGIN sub.rpz.test.", "$ORIGIN rpz.test.", "$TTL 60", "; comment", "",
    "@ SOA ns. host. ( 1 2", "  3 4 5 )", "e-.example CNAME .", "x.rpz-ip CNAME .",
    "f.example CNAME elsewhere.example.", "g.example. CNAME .", "xn--bcher-kva.example CNAME .",
])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(ZONE_LINES, max_size=20))
def test_rpz_fast_lines_agree_on_any_zone(tmp_path, monkeypatch, lines):
    path = write(tmp_path, "any.rpz", "\n".join(lines) + "\n")

    def outcome():
        try:
            return parse_feed(path, "rpz")
        except FeedFormatError as e:
            return str(e)

    fast = outcome()
    with monkeypatch.context() as m:
        _patch(m, "_RPZ_RUNS", common._runs("(?!)"))
        assert outcome() == fast


def test_rpz_name_too_long_for_dnspython(tmp_path):
    name = ".".join(["a" * 63] * 3 + ["b" * 62])
    path = write(tmp_path, "long.rpz", f"ok.example CNAME .\n{name} CNAME .\n")
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "rpz")
    assert str(e.value) == f"{path}:2: A DNS name is > 255 octets long."


def test_gc_is_enabled_again(tmp_path):
    path = write(tmp_path, "p.txt", "a.example\n")
    assert gc.isenabled()
    parse_feed(path, "plain")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_feed(path, "plain")
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- hosts -----------------------------------------------------------------------------------
HOSTS = """\
# Title: StevenBlack-like hosts
127.0.0.1 localhost
127.0.0.1 localhost.localdomain
127.0.0.1 local
255.255.255.255 broadcasthost
::1 localhost ip6-localhost ip6-loopback
fe80::1%lo0 localhost
ff00::0 ip6-mcastprefix
0.0.0.0 0.0.0.0
0.0.0.0 evil.example
127.0.0.1\tc2.example   # trailing comment
:: v6.example Alias.Example.
0:0:0:0:0:0:0:0 long6.example
198.51.100.7 sinkholed.example
0.0.0.0 EVIL.example.
0.0.0.0 bad_-.example good.example
evil.example
0.0.0.0
0.0.0.0 xn--bcher-kva.example bücher.example
0.0.0.0 10.0.0.1 ten.example
"""


def test_hosts_quirks(tmp_path):
    path = write(tmp_path, "hosts", HOSTS, crlf=True)
    parsed = parse_feed(path, "hosts")
    assert parsed.entries == [
        E("evil.example", 10),
        E("c2.example", 11),
        E("v6.example", 12),
        E("alias.example", 12),
        E("long6.example", 13),
        E("sinkholed.example", 14),  # a feed's own sinkhole address: still an entry
        E("good.example", 16),
        E("xn--bcher-kva.example", 19),
        E("ten.example", 20),
    ]
    assert parsed.duplicates == 2
    assert parsed.skipped == {"hosts-file boilerplate": 9, "IP address host": 2}
    p = str(path)
    assert bad(parsed) == [
        f"{p}:16: label 'bad_-' starts or ends with a hyphen: bad_-.example",
        f"{p}:17: not an address followed by names: evil.example",
        f"{p}:18: an address without names: 0.0.0.0",
    ]


# -- adblock ---------------------------------------------------------------------------------
ADBLOCK = """\
[Adblock Plus 2.0]
! Title: C&C domains
! Expires: 1 day
||evil.example^
||c2.example^$important
@@||good.example^
||third.example^$third-party
||dnstype.example^$dnstype=AAAA
||path.example/ads^
example.com##.banner
example.com#@#.banner
/regex\\.example/
||1.2.3.4^
||bad_-.example^
# an AdGuard-style comment
||Evil.Example^
||pipe.example^|
||nocaret.example
|start.example^
||*.star.example^
||bücher.example^
@@||evil.example^
||all.example^$all,important
"""


def test_adblock_quirks(tmp_path):
    path = write(tmp_path, "filters.txt", ADBLOCK, crlf=True)
    parsed = parse_feed(path, "adblock")
    assert parsed.entries == [
        E("evil.example", 4, "subtree"),
        E("c2.example", 5, "subtree"),
        E("good.example", 6, "subtree", kind="allow"),
        E("pipe.example", 17, "subtree"),
        E("start.example", 19),  # |name^: the name alone, as AdGuard Home reads it
        E("xn--bcher-kva.example", 21, "subtree"),
        E("evil.example", 22, "subtree", kind="allow"),  # allow and block are two entries
        E("all.example", 23, "subtree"),
    ]
    assert parsed.duplicates == 1  # ||Evil.Example^
    assert parsed.skipped == {
        "unsupported adblock modifier": 2,
        "not a domain rule": 6,
        "IP address host": 1,
    }
    assert bad(parsed) == [
        f"{path}:14: label 'bad_-' starts or ends with a hyphen: ||bad_-.example^",
    ]


# -- rpz -------------------------------------------------------------------------------------
RPZ = """\
$TTL 300
$ORIGIN rpz.local.
@ IN SOA ns.rpz.local. hostmaster.rpz.local. (
        2024010101 ; serial
        3600 600 86400 300 )
  IN NS ns.rpz.local.
; policies
evil.example CNAME .
*.evil.example CNAME .
nodata.example 300 IN CNAME *.
drop.example IN 300 CNAME rpz-drop.
tcp.example cname rpz-tcp-only. ; comment
good.example CNAME rpz-passthru.
*.good.example CNAME rpz-passthru.
*.below.example CNAME .
sink.example A 192.0.2.1
sink.example AAAA 2001:db8::1
sink.example A 192.0.2.1
 TXT "note"
old.example CNAME old.example.
rewrite.example CNAME walled.garden.example.
32.1.2.0.192.rpz-ip CNAME .
ns.bad.example.rpz-nsdname CNAME .
32.1.0.0.127.rpz-client-ip CNAME rpz-drop.
24.0.2.0.192.rpz-nsip CNAME .
Upper.Example CNAME .
abs.example.rpz.local. CNAME .
other.zone. CNAME .
bad_-.example CNAME .
evil.example CNAME .
conflict.example CNAME .
conflict.example CNAME rpz-drop.
bücher.example CNAME .
mx.example MX 10 mail.example.
$ORIGIN sub.rpz.local.
deep.example CNAME .
* CNAME rpz-drop.
"""


def test_rpz_every_trigger(tmp_path):
    path = write(tmp_path, "zone.rpz", RPZ, crlf=True, bom=True)
    parsed = parse_feed(path, "rpz")
    assert parsed.entries == [
        E("evil.example", 8, "subtree", "nxdomain"),  # name and *.name, one entry
        E("nodata.example", 10, "exact", "nodata"),
        E("drop.example", 11, "exact", "drop"),
        E("tcp.example", 12, "exact", "tc"),
        E("good.example", 13, "subtree", kind="allow"),
        E("below.example", 15, "below", "nxdomain"),
        E("sink.example", 16, "exact", "sinkhole"),
        E("old.example", 20, "exact", kind="allow"),  # the old passthru: CNAME to itself
        E("upper.example", 26, "exact", "nxdomain"),
        E("abs.example", 27, "exact", "nxdomain"),
        E("conflict.example", 31, "exact", "nxdomain"),
        E("xn--bcher-kva.example", 33, "exact", "nxdomain"),
        E("deep.example.sub", 36, "exact", "nxdomain"),
        E("sub", 37, "below", "drop"),
    ]
    assert parsed.duplicates == 2  # the second A 192.0.2.1, evil.example again
    assert parsed.skipped == {
        "TXT record": 1,
        "CNAME rewrite": 1,
        "rpz-ip trigger": 1,
        "rpz-nsdname trigger": 1,
        "rpz-client-ip trigger": 1,
        "rpz-nsip trigger": 1,
        "MX record": 1,
    }
    p = str(path)
    assert bad(parsed) == [
        f"{p}:28: outside the zone rpz.local.: other.zone.",
        f"{p}:29: label 'bad_-' starts or ends with a hyphen: bad_-.example",
        f"{p}:32: conflicts with line 31: conflict.example",
    ]


def test_rpz_fast_lines_and_dnspython_agree(tmp_path, monkeypatch):
    path = write(tmp_path, "zone.rpz", RPZ)
    fast = parse_feed(path, "rpz")
    _without_fast_path(monkeypatch, "_RPZ_RUNS")
    assert parse_feed(path, "rpz") == fast


def test_rpz_without_origin_takes_names_as_written(tmp_path):
    # URLhaus's layout: "@ SOA" and relative names, the apex left to the server.
    text = """\
$TTL 30
@ SOA rpz.urlhaus.abuse.ch. hostmaster.urlhaus.abuse.ch. 2304061510 300 1800 604800 30
 NS localhost.
;
; abuse.ch URLhaus Response Policy Zones (RPZ)
0022a601.pphost.net CNAME . ; Malware download (2020-05-25)
1.off3.ru CNAME .
testentry.rpz.urlhaus.abuse.ch CNAME .
"""
    parsed = parse_feed(write(tmp_path, "urlhaus.rpz", text))
    assert parsed.format == "rpz"
    assert parsed.entries == [
        E("0022a601.pphost.net", 6, action="nxdomain"),
        E("1.off3.ru", 7, action="nxdomain"),
        E("testentry.rpz.urlhaus.abuse.ch", 8, action="nxdomain"),
    ]
    assert parsed.bad == [] and parsed.skipped == {} and parsed.duplicates == 0


def test_rpz_apex_from_an_absolute_soa(tmp_path):
    text = """\
rpz.example. 60 IN SOA ns. host. 1 2 3 4 5
rpz.example. 60 IN NS ns.
evil.example.rpz.example. 60 IN CNAME .
$ORIGIN rpz.example.
relative.example CNAME rpz-drop.
"""
    parsed = parse_feed(write(tmp_path, "abs.rpz", text), "rpz")
    assert parsed.entries == [E("evil.example", 3, action="nxdomain"),
                              E("relative.example", 5, action="drop")]


def test_rpz_records_without_ttl_get_zero(tmp_path):
    # No $TTL, no TTL anywhere: dnspython alone would refuse; TTLs mean nothing to ccxdp.
    parsed = parse_feed(write(tmp_path, "nottl.rpz", "a.example CNAME .\nb.example A 1.2.3.4\n"))
    assert parsed.entries == [E("a.example", 1, action="nxdomain"),
                              E("b.example", 2, action="sinkhole")]


def test_rpz_blank_owner_after_a_fast_line(tmp_path, monkeypatch):
    text = """\
$ORIGIN rpz.local.
evil.example CNAME .
  TXT "why"
  A 192.0.2.1
other.example CNAME .
; comment between
  TXT "again"
"""
    path = write(tmp_path, "owner.rpz", text)
    parsed = parse_feed(path, "rpz")
    assert parsed.entries == [E("evil.example", 2, action="nxdomain"),
                              E("other.example", 5, action="nxdomain")]
    assert parsed.skipped == {"TXT record": 2}
    assert bad(parsed) == [f"{path}:4: conflicts with line 2: evil.example"]
    _without_fast_path(monkeypatch, "_RPZ_RUNS")
    assert parse_feed(path, "rpz") == parsed


@pytest.mark.parametrize(
    "body, message",
    [
        ("bad.example CNAME\n", ":{n}: "),
        ("bad.example BOGUS x\n", ":{n}: unknown rdatatype 'BOGUS'"),
        ("$INCLUDE /etc/passwd\n", ":{n}: zone file directive '$INCLUDE' is not allowed"),
        ("bad.example CH CNAME .\n", ":{n}: RR class is not zone's class"),
        (f"{LONG_LABEL}.example CNAME .\n", ":{n}: A DNS label is > 63 octets long."),
    ],
)
def test_rpz_that_dnspython_cannot_read(tmp_path, body, message):
    fast_lines = "".join(f"n{i}.example CNAME .\n" for i in range(50))
    text = "$TTL 60\n@ SOA a. b. 1 2 3 4 5\n" + fast_lines + "; comment\n" + body
    path = write(tmp_path, "broken.rpz", text)
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "rpz")
    assert str(e.value).startswith(f"{path}" + message.format(n=54))


def test_rpz_wildcard_for_the_whole_zone(tmp_path):
    path = write(tmp_path, "star.rpz", "$ORIGIN rpz.local.\n@ SOA a. b. 1 2 3 4 5\n* CNAME .\n")
    parsed = parse_feed(path, "rpz")
    assert parsed.entries == []
    assert bad(parsed) == [f"{path}:3: a wildcard for the whole zone: *"]


# -- csv -------------------------------------------------------------------------------------
THREATFOX = """\
################################################################
# ThreatFox IOCs: recent additions - CSV format                #
# Last updated: 2026-07-04 22:19:04 UTC                        #
#                                                              #
# Terms Of Use: https://threatfox.abuse.ch/api/                #
################################################################
#
# "first_seen_utc","ioc_id","ioc_value","ioc_type","threat_type","fk_malware","malware_alias",\
"malware_printable","last_seen_utc","confidence_level","is_compromised","reference","tags",\
"anonymous","reporter"
"2026-07-04 22:19:04", "1844855", "dazayse.hi-lo.bet", "domain", "payload_delivery", \
"js.clearfake", "None", "ClearFake", "", "100", "False", "None", "ClearFake,win-0x4679,windows", \
"1", "anonymous"
"2026-07-04 21:46:30", "1844853", "64.227.143.36:5555", "ip:port", "botnet_cc", \
"win.cobalt_strike", "Agentemis,BEACON,CobaltStrike,cobeacon", "Cobalt Strike", \
"2026-07-04 22:46:23", "75", "False", "None", "CobaltStrike,drb-ra", "0", "abuse_ch"
"2026-07-04 21:40:00", "1844850", "https://Malicious.example:8443/Path", "url", "botnet_cc", \
"example", "None", "Example", "", "75", "False", "None", "x", "0", "tester"
"2026-07-04 21:30:00", "1844849", "3dd25cbfe76db155615283f905992030468f3da9", "sha1_hash", \
"payload", "win.vidar", "None", "Vidar", "", "95", "False", "None", "None", "0", "Grim"
"2026-07-04 21:20:00", "1844848", "evil.com:443", "domain", "botnet_cc", "x", "None", "X", "", \
"50", "False", "None", "None", "0", "r"
"2026-07-04 21:10:00", "1844847", "http://[2001:db8::7]/a", "url", "botnet_cc", "x", "None", \
"X", "", "50", "False", "None", "None", "0", "r"
"2026-07-04 21:00:00", "1844846", "abcdef0123456789", "md5_hash", "payload", "x", "None", "X", \
"", "50", "False", "None", "None", "0", "r"
"2026-07-04 20:50:00", "1844845", "c2.bücher.example", "domain", "botnet_cc", "x", "None", "X", \
"", "50", "False", "None", "None", "0", "r"
"2026-07-04 20:40:00", "1844844", "bad_-.example", "domain", "botnet_cc", "x", "None", "X", \
"", "50", "False", "None", "None", "0", "r"
"2026-07-04 20:30:00", "1844843", "http://dazayse.hi-lo.bet/gate.php", "url", "botnet_cc", \
"x", "None", "X", "", "50", "False", "None", "None", "0", "r"
# Number of entries: 10
"""


def test_threatfox_csv(tmp_path):
    path = write(tmp_path, "threatfox.csv", THREATFOX, crlf=True)
    parsed = parse_feed(path)
    assert parsed.format == "csv"
    # Each with its malware family (fk_malware) as the category.
    assert parsed.entries == [
        E("dazayse.hi-lo.bet", 9, category="js.clearfake"),
        E("malicious.example", 11, category="example"),
        E("evil.com", 13, category="x"),
        E("c2.xn--bcher-kva.example", 16, category="x"),
    ]
    assert parsed.duplicates == 1
    assert parsed.skipped == {"IP address host": 2, "ioc_type sha1_hash": 1,
                              "ioc_type md5_hash": 1}
    assert bad(parsed) == [f"{path}:17: label 'bad_-' starts or ends with a hyphen: bad_-.example"]
    # Each skipped row, by line, in file order (the ioc_type ones are counted in bulk).
    assert [str(b) for b in parsed.skipped_lines] == [
        f"{path}:10: IP address host: 64.227.143.36:5555",
        f"{path}:12: ioc_type sha1_hash: 3dd25cbfe76db155615283f905992030468f3da9",
        f"{path}:14: IP address host: http://[2001:db8::7]/a",
        f"{path}:15: ioc_type md5_hash: abcdef0123456789",
    ]


def test_ioc_types_written_by_hand(tmp_path):
    text = ('ioc_value,ioc_type\n"a.example","domain"\n"b.example"," Domain "\n'
            '"1.2.3.4:80","ip:port"\n"ffff","MD5_hash"\n"c.example","md5_hash"\n')
    parsed = parse_feed(write(tmp_path, "iocs.csv", text))
    assert parsed.entries == [E("a.example", 2), E("b.example", 3)]
    assert parsed.skipped == {"IP address host": 1, "ioc_type md5_hash": 2}
    assert [(b.line, b.reason) for b in parsed.skipped_lines] == [
        (4, "IP address host"), (5, "ioc_type md5_hash"), (6, "ioc_type md5_hash")]


URLHAUS = """\
################################################################
# abuse.ch URLhaus Database Dump (CSV - recent URLs only)      #
# Last updated: 2020-12-03 06:06:09 (UTC)                      #
#                                                              #
# Terms Of Use: https://urlhaus.abuse.ch/api/                  #
# For questions please contact urlhaus [at] abuse.ch           #
################################################################
#
# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter
"3821497","2026-04-14 16:02:21","http://evil1.example/bin.sh","online","2026-04-14 16:02:21",\
"malware_download","32-bit,elf,mips,Mozi","https://urlhaus.abuse.ch/url/3821497/","geenensp"
"3821496","2026-04-14 16:02:19","https://EVIL2.example:8080/payload?x=1","online","",\
"malware_download","ClearFake","https://urlhaus.abuse.ch/url/3821496/","anonymous"
"3821495","2026-04-14 16:00:19","","online","","","","https://urlhaus.abuse.ch/url/3821495/","x"
"884896","2020-12-03 06:06:09","http://94.122.77.235:32794/Mozi.m","online","","malware_download",\
"elf,Mozi","https://urlhaus.abuse.ch/url/884896/","lrz_urlhaus"
"884895","2020-12-03 06:06:08","http://evil1.example/other","online","","malware_download",\
"elf","https://urlhaus.abuse.ch/url/884895/","x"
"884894","2020-12-03 06:06:08","http://bücher.example/x","online","","malware_download",\
"elf","https://urlhaus.abuse.ch/url/884894/","x"
"884893","2020-12-03 06:06:08","http://user:pw@auth.example/x","online","","malware_download",\
"elf","https://urlhaus.abuse.ch/url/884893/","x"
"884892","2020-12-03 06:06:08","http://[fd00::1]:80/x","online","","malware_download",\
"elf","https://urlhaus.abuse.ch/url/884892/","x"
"884891","2020-12-03 06:06:08","http:///nohost","online","","malware_download",\
"elf","https://urlhaus.abuse.ch/url/884891/","x"
"884890","2020-12-03 06:06:08","http://[bad/x","online","","malware_download",\
"elf","https://urlhaus.abuse.ch/url/884890/","x"
"""


def test_urlhaus_csv(tmp_path):
    path = write(tmp_path, "urlhaus.csv", URLHAUS)
    parsed = parse_feed(path)
    assert parsed.format == "csv"
    assert parsed.entries == [
        E("evil1.example", 10),
        E("evil2.example", 11),
        E("xn--bcher-kva.example", 15),
        E("auth.example", 16),
    ]
    assert parsed.duplicates == 1
    assert parsed.skipped == {"IP address host": 2}
    p = str(path)
    assert bad(parsed) == [
        f'{p}:12: empty value: ""',
        f"{p}:18: URL without a host: http:///nohost",
        f"{p}:19: not a valid URL: http://[bad/x",
    ]


@pytest.mark.parametrize("force", ["pattern", "reader", "rows"])
def test_csv_paths_agree(tmp_path, monkeypatch, force):
    """The one-pattern path, the csv.reader path and the row by row path read the same."""
    paths = [write(tmp_path, "tf.csv", THREATFOX), write(tmp_path, "uh.csv", URLHAUS)]
    expected = [parse_feed(p) for p in paths]
    if force in ("reader", "rows"):
        _patch(monkeypatch, "_pick_by_pattern", lambda *a: None)
    if force == "rows":
        _patch(monkeypatch, "_pick_by_reader", lambda *a: None)
    assert [parse_feed(p) for p in paths] == expected


def test_csv_generic_header_and_column_choice(tmp_path):
    text = "first_seen,domain,family\n2024-01-01,evil.example,emotet\n2024-01-02,C2.example,qbot\n"
    path = write(tmp_path, "generic.csv", text)
    assert parse_feed(path).entries == [E("evil.example", 2), E("c2.example", 3)]
    assert parse_feed(path, "csv", column="Domain").entries == [E("evil.example", 2),
                                                                E("c2.example", 3)]
    by_number = parse_feed(path, "csv", column="2")
    assert by_number.entries == [E("evil.example", 2), E("c2.example", 3)]
    family = parse_feed(path, "csv", column="family")
    assert family.entries == [E("emotet", 2), E("qbot", 3)]  # single labels are names too
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "csv", column="url")
    assert str(e.value) == f"{path}: no column 'url' (columns: first_seen, domain, family)"
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "csv", column="4")
    assert str(e.value) == f"{path}: no column 4 (the header has 3: first_seen, domain, family)"


def test_csv_without_a_name_column(tmp_path):
    path = write(tmp_path, "odd.csv", "when,what\n2024-01-01,evil.example\n")
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "csv")
    assert str(e.value) == (f"{path}: cannot tell which column holds the names (columns: when, "
                            "what); choose one with --column")
    assert parse_feed(path, "csv", column="what").entries == [E("evil.example", 2)]


def test_csv_without_a_header(tmp_path):
    path = write(tmp_path, "bare.csv", "evil.example,emotet\nc2.example,qbot\n")
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "csv")
    assert str(e.value) == f"{path}: no header line and 2 columns; choose one with --column"
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "csv", column="domain")
    assert str(e.value) == f"{path}: no header line; give the column as a number"
    assert parse_feed(path, "csv", column="1").entries == [E("evil.example", 1),
                                                           E("c2.example", 2)]


def test_csv_comments_blank_lines_and_records_over_two_lines(tmp_path):
    text = """\
domain,note
a.example,plain
# a comment with "a quote, that must not open a field
b.example,"two
lines"

c.example,last
short
d.example
"""
    path = write(tmp_path, "mixed.csv", text)
    parsed = parse_feed(path)
    assert parsed.entries == [E("a.example", 2), E("b.example", 4), E("c.example", 7),
                              E("short", 8), E("d.example", 9)]
    assert parsed.bad == []


def test_csv_carriage_return_inside_a_field(tmp_path):
    path = write(tmp_path, "cr.csv", "domain,n\na.example,1\nb.exa\rmple,2\nc.example,3\n")
    parsed = parse_feed(path)
    assert parsed.entries == [E("a.example", 2), E("c.example", 4)]
    assert bad(parsed) == [
        f"{path}:3: unreadable CSV row (a line break inside a field): b.exa\\rmple,2"
    ]


def test_csv_of_an_export_reads_kind_match_action_category(tmp_path):
    text = """\
name,kind,match,action,category
evil.example,block,subtree,nxdomain,emotet
good.example,allow,exact,,
plain.example,,,,
sink.example,block,exact,redirect,
bad1.example,maybe,exact,,
bad2.example,block,everything,,
bad3.example,block,exact,explode,
bad4.example,allow,exact,drop,
bad5.example,block,exact,,Not A Category!
evil.example,block,subtree,drop,emotet
"""
    path = write(tmp_path, "export.csv", text)
    parsed = parse_feed(path)
    assert parsed.entries == [
        E("evil.example", 2, "subtree", "nxdomain", category="emotet"),
        E("good.example", 3, kind="allow"),
        E("plain.example", 4),
        E("sink.example", 5, action="sinkhole"),
    ]
    p = str(path)
    actions = ", ".join(ff.ACTIONS)
    assert bad(parsed) == [
        f"{p}:6: unknown kind 'maybe' (block, allow): bad1.example,maybe,exact,,",
        f"{p}:7: unknown match 'everything' (exact, subtree, below): "
        "bad2.example,block,everything,,",
        f"{p}:8: unknown action 'explode' ({actions}): bad3.example,block,exact,explode,",
        f"{p}:9: an allow entry takes no action: bad4.example,allow,exact,drop,",
        f"{p}:10: invalid category 'Not A Category!': bad5.example,block,exact,,Not A Category!",
        f"{p}:11: conflicts with line 2: evil.example",
    ]


# -- detection -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, fmt",
    [
        (PLAIN, "plain"),
        ("evil.example # c2\n*.wild.example\n", "plain"),
        (HOSTS, "hosts"),
        (ADBLOCK, "adblock"),
        ("! comment\n||a.example^\n", "adblock"),
        (RPZ, "rpz"),
        ("; policy\nevil.example 300 IN CNAME .\n", "rpz"),
        (THREATFOX, "csv"),
        (URLHAUS, "csv"),
        ("domain,first_seen\nevil.example,2024-01-01\n", "csv"),
        ("", "plain"),
        ("# nothing yet\n", "plain"),
        ("! nothing yet\n", "adblock"),
    ],
)
def test_detect_format(tmp_path, text, fmt):
    path = write(tmp_path, "feed", text)
    assert detect_format(path) == fmt
    assert parse_feed(path).format == fmt
    windows = write(tmp_path, "feed.win", text, crlf=True, bom=True)
    assert detect_format(windows) == fmt


@pytest.mark.parametrize("text", ['{"data": [1, 2]}\n', "<html>\n<body>\n", "a b c d\n"])
def test_detect_format_cannot_tell(tmp_path, text):
    path = write(tmp_path, "feed.json", text)
    expected = (f"{path}: cannot tell the feed format (plain, hosts, rpz, adblock, csv); "
                "give it with --format")
    with pytest.raises(FeedFormatError) as e:
        detect_format(path)
    assert str(e.value) == expected
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path)
    assert str(e.value) == expected


def test_parse_feed_refusals(tmp_path):
    path = write(tmp_path, "p.txt", "a.example\n")
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "json")
    assert str(e.value) == "unknown feed format 'json' (plain, hosts, rpz, adblock, csv)"
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, "plain", column="2")
    assert str(e.value) == f"{path}: a column can only be chosen in a CSV feed, not plain"
    missing = tmp_path / "missing.txt"
    with pytest.raises(FeedFormatError) as e:
        parse_feed(missing)
    assert str(e.value) == f"{missing}: no such file"


# -- export ----------------------------------------------------------------------------------
ROUND_TRIPS = {
    "plain": [
        ExportEntry("evil.example"),
        ExportEntry("sub.example", match="subtree"),
        ExportEntry("below.example", match="below"),
        ExportEntry("xn--bcher-kva.example"),
    ],
    "hosts": [ExportEntry("evil.example"), ExportEntry("_srv.c2.example")],
    "adblock": [
        ExportEntry("evil.example", match="subtree"),
        ExportEntry("good.example", kind="allow", match="subtree"),
    ],
    "rpz": [
        ExportEntry("nx.example", action="nxdomain"),
        ExportEntry("sub.example", match="subtree", action="drop"),
        ExportEntry("below.example", match="below", action="nodata"),
        ExportEntry("tc.example", action="tc"),
        ExportEntry("sink.example", match="subtree", action="sinkhole"),
        ExportEntry("redirect.example", action="redirect"),
        ExportEntry("good.example", kind="allow"),
        ExportEntry("good-sub.example", kind="allow", match="subtree"),
    ],
    "csv": [
        ExportEntry("evil.example", match="subtree", action="nxdomain", category="emotet"),
        ExportEntry("good.example", kind="allow"),
        ExportEntry("plain.example"),
        ExportEntry("below.example", match="below", action="monitor", category="qbot"),
        ExportEntry("refused.example", action="refused"),
    ],
}


@pytest.mark.parametrize("fmt", ff.FORMATS)
def test_export_round_trip(tmp_path, fmt):
    entries = ROUND_TRIPS[fmt]
    path = write(tmp_path, f"export.{fmt}", "\n".join(export_feed(entries, fmt)) + "\n")
    parsed = parse_feed(path)  # detected, too
    assert parsed.format == fmt
    assert parsed.bad == [] and parsed.skipped == {} and parsed.duplicates == 0
    got = [ExportEntry(e.name, e.kind, e.match, e.action, e.category) for e in parsed.entries]
    want = [ExportEntry(e.name, e.kind, e.match,
                        "sinkhole" if e.action == "redirect" else e.action, e.category)
            for e in entries]
    assert got == want
    assert [e.line for e in parsed.entries] == sorted(e.line for e in parsed.entries)


def test_export_lines():
    entries = [ExportEntry("evil.example", match="subtree", action="nxdomain"),
               ExportEntry("sink.example", action="sinkhole"),
               ExportEntry("ok.example", kind="allow", match="below")]
    assert list(export_feed(entries, "rpz", origin="rpz.test.", serial=7)) == [
        "$ORIGIN rpz.test.",
        "$TTL 300",
        "@ SOA localhost. hostmaster.localhost. 7 3600 600 86400 300",
        "@ NS localhost.",
        "evil.example CNAME .",
        "*.evil.example CNAME .",
        "sink.example A 0.0.0.0",
        "sink.example AAAA ::",
        "*.ok.example CNAME rpz-passthru.",
    ]
    assert list(export_feed([ExportEntry("a.example", category="x,y")], "csv")) == [
        "name,kind,match,action,category",
        'a.example,block,exact,,"x,y"',
    ]
    assert list(export_feed([ExportEntry("a.example", match="below")], "plain")) == [
        "*.a.example"
    ]


@pytest.mark.parametrize(
    "fmt, entry, message",
    [
        ("plain", ExportEntry("ok.example", kind="allow"),
         "plain cannot hold ok.example (an allow entry); use csv"),
        ("plain", ExportEntry("d.example", action="drop"),
         "plain cannot hold d.example (action drop); use csv"),
        ("plain", ExportEntry("c.example", category="emotet"),
         "plain cannot hold c.example (category emotet); use csv"),
        ("hosts", ExportEntry("s.example", match="subtree"),
         "hosts cannot hold s.example (match subtree: hosts lists exact names); "
         "use plain, rpz or csv"),
        ("adblock", ExportEntry("e.example", match="below"),
         "adblock cannot hold e.example (match below: ||name^ is a subtree, |name^ the name "
         "alone); use rpz or csv"),
        ("rpz", ExportEntry("n.example"),
         "rpz cannot hold n.example (no action: RPZ gives every name its own); "
         "give the action the entry has in effect"),
        ("rpz", ExportEntry("r.example", action="refused"),
         "rpz cannot hold r.example (action refused: RPZ has no such policy); use csv"),
        ("rpz", ExportEntry("x.rpz-ip", action="drop"),
         "rpz cannot hold x.rpz-ip (its last label names an RPZ trigger); use csv"),
        ("hosts", ExportEntry("localhost.localdomain"),
         "hosts cannot hold localhost.localdomain (hosts files skip it as boilerplate); "
         "use plain, rpz or csv"),
        ("plain", ExportEntry("192.0.2.1"),
         "plain cannot hold 192.0.2.1 (plain reads it as an IP address); use rpz"),
        ("csv", ExportEntry("192.0.2.1"),
         "csv cannot hold 192.0.2.1 (csv reads it as an IP address); use rpz"),
        ("csv", ExportEntry("k.example", kind="maybe"), "k.example: unknown kind 'maybe'"),
        ("csv", ExportEntry("a.example", action="explode"), "a.example: unknown action 'explode'"),
        ("csv", ExportEntry("g.example", kind="allow", action="drop"),
         "g.example: an allow entry takes no action"),
    ],
)
def test_export_refuses_what_a_format_cannot_hold(fmt, entry, message):
    fine = ExportEntry("fine.example", match="subtree" if fmt == "adblock" else "exact",
                       action="drop" if fmt == "rpz" else None)
    lines = export_feed([fine, entry, ExportEntry("never.example")], fmt)
    with pytest.raises(FeedFormatError) as e:
        list(lines)
    assert str(e.value) == message


def test_export_unknown_format():
    with pytest.raises(FeedFormatError) as e:
        export_feed([], "json")
    assert str(e.value) == "unknown feed format 'json' (plain, hosts, rpz, adblock, csv)"


# -- scale -----------------------------------------------------------------------------------
def test_many_names_with_duplicates_keep_first_lines(tmp_path):
    names = [f"c2-{i % 700}.family-{i % 7}.test" for i in range(2100)]
    path = write(tmp_path, "dups.txt", "\n".join(names) + "\n")
    parsed = parse_feed(path, "plain")
    assert parsed.duplicates == 2100 - 700
    assert parsed.entries == [E(names[i], i + 1) for i in range(700)]


def test_gzip_and_zip_files_are_read_as_what_they_hold(tmp_path, real_feeds):
    import gzip
    import zipfile

    src = real_feeds / "urlhaus-filter.rpz"
    plain = parse_feed(src)
    gz = tmp_path / "feed.rpz.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    zipped = tmp_path / "feed.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(src, "urlhaus-filter.rpz")
    for packed in (gz, zipped):
        got = parse_feed(packed)
        assert (got.format, got.entries) == ("rpz", plain.entries)
        assert len(got.entries) == 2_689
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(FeedFormatError, match="a damaged or truncated archive"):
        parse_feed(cut)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a.txt", "a.test\n")
        z.writestr("b.txt", "b.test\n")
    with pytest.raises(FeedFormatError, match="a zip archive of 2 files; a feed is one"):
        parse_feed(two)
