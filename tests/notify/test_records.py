"""Notification records end to end through the real ``ccxdp`` console script: hits set
through the store over simulated days (as the collector will add them), sessions that map
addresses to lines, and ``notify`` / ``records`` / ``report`` checked field by field.

None of this touches the kernel: the commands read the store only, so these tests need no
root; they run ``ccxdp --state-dir <tmp>``.
"""

from __future__ import annotations

import email
import ipaddress
import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest

from ccxdp.hits.store import Store, store_path
from tests.harness.hits import HitRow, add_hits

CCXDP = Path(sys.executable).parent / "ccxdp"
PERIOD = "2026-11"
SENDER = "noc@isp.example"

EMOTET, QAKBOT = 1, 2
A, B, C, D, E = "198.18.0.2", "fd00:cc::2", "198.18.0.3", "198.18.0.9", "198.18.0.4"

# What the resolver saw, as (address, category, day, hour, hits, first minute, last minute,
# feeds). A and B are line L-1's (B through its delegated prefix) until A moves to L-3 on the
# 20th; C is L-2's, on one day only; D has no session; E is L-4's, which opted out.
SCRIPT = [
    (A, EMOTET, 3, 10, 4, 5, 50, ("abuse.ch",)),
    (B, EMOTET, 4, 11, 3, 0, 59, ()),
    (A, QAKBOT, 10, 8, 2, 15, 16, ("abuse.ch", "local")),
    (C, QAKBOT, 5, 12, 7, 1, 30, ()),
    (D, EMOTET, 6, 9, 1, 7, 7, ()),
    (A, EMOTET, 21, 1, 5, 10, 40, ()),
    (A, EMOTET, 22, 23, 6, 0, 20, ()),
    (E, QAKBOT, 7, 1, 2, 0, 0, ()),
    (E, QAKBOT, 8, 1, 2, 0, 0, ()),
]
NAMES = {EMOTET: "emotet", QAKBOT: "qakbot"}

SESSIONS = f"""line_id,address_or_prefix,start,stop
L-1,{A},2026-10-01T00:00:00Z,2026-11-20T00:00:00Z
L-1,fd00:cc::/56,2026-11-01T09:00:00+09:00,
L-2,{C},2026-11-01T00:00:00Z,
L-3,{A},2026-11-20T09:00:00+09:00,
L-4,{E},2026-11-01T00:00:00Z,
"""
SUBSCRIBERS = """line_id,email,language
L-1,tanaka@example.jp,ja
L-2,lee@example.net,en
L-3,smith@example.net,en
L-4,optout@example.net,en
"""
OPT_OUT = "# lines that asked for no filtering and no notices\nL-4\n"


def hit_rows(script=SCRIPT) -> list[HitRow]:
    rows = []
    for addr, cat, day, hour, hits, first, last, feeds in script:
        start = datetime(2026, 11, day, hour, tzinfo=UTC)
        rows.append(HitRow(
            ipaddress.ip_network(addr) if "/" in addr else ipaddress.ip_address(addr), cat,
            NAMES[cat], start, hits,
            start + timedelta(minutes=first), start + timedelta(minutes=last, seconds=30),
            feeds,
        ))
    return rows


def seed(state_dir: Path, script=SCRIPT) -> Path:
    path = store_path(state_dir)
    with Store(path) as store:
        add_hits(store, hit_rows(script), {"collected": 1})
    return path


@pytest.fixture
def world(tmp_path) -> dict:
    """A state folder with the script's hits, and the input files."""
    state = tmp_path / "state"
    seed(state)
    files = {}
    for name, text in (("sessions.csv", SESSIONS), ("subscribers.csv", SUBSCRIBERS),
                       ("opt-out.txt", OPT_OUT)):
        files[name] = tmp_path / name
        files[name].write_text(text)
    return {"state": state, "dir": tmp_path, **files}


def ccxdp(state: Path, *args: str, check: bool = True, env=None) -> subprocess.CompletedProcess:
    cp = subprocess.run(
        [str(CCXDP), "--state-dir", str(state), *args], capture_output=True, text=True,
        timeout=120, env=env,
    )
    if check and cp.returncode != 0:
        raise AssertionError(f"ccxdp {' '.join(args)} exited {cp.returncode}: {cp.stderr}")
    return cp


def notify_args(world, *extra: str) -> list[str]:
    return [
        "notify", "--period", PERIOD, "--sessions", str(world["sessions.csv"]),
        "--subscribers", str(world["subscribers.csv"]), "--opt-out", str(world["opt-out.txt"]),
        *extra,
    ]


L1 = {
    "line": "L-1", "period": PERIOD,
    "first_seen": "2026-11-03T10:05:00Z", "last_seen": "2026-11-10T08:16:30Z",
    "hits": 9, "categories": {"emotet": 7, "qakbot": 2}, "days": 3,
    "addresses": [A, B], "feeds": ["abuse.ch", "local"],
}
L2 = {
    "line": "L-2", "period": PERIOD,
    "first_seen": "2026-11-05T12:01:00Z", "last_seen": "2026-11-05T12:30:30Z",
    "hits": 7, "categories": {"qakbot": 7}, "days": 1, "addresses": [C], "feeds": [],
}
L3 = {
    "line": "L-3", "period": PERIOD,
    "first_seen": "2026-11-21T01:10:00Z", "last_seen": "2026-11-22T23:20:30Z",
    "hits": 11, "categories": {"emotet": 11}, "days": 2, "addresses": [A], "feeds": [],
}
L4 = {
    "line": "L-4", "period": PERIOD,
    "first_seen": "2026-11-07T01:00:00Z", "last_seen": "2026-11-08T01:00:30Z",
    "hits": 4, "categories": {"qakbot": 4}, "days": 2, "addresses": [E], "feeds": [],
}
UNATTRIBUTED_D = {
    "address": D, "hits": 1, "categories": {"emotet": 1},
    "first_seen": "2026-11-06T09:07:00Z", "last_seen": "2026-11-06T09:07:30Z",
}


def parse_eml(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


# Everything a message must never name: the blocked names and categories, addresses, counts,
# times, feeds.
FORBIDDEN = [
    "emotet", "qakbot", "abuse.ch", "evil", ".test", A, B, C, "198.18", "fd00", "2026",
    "http", "www.", "open the attach", "click", "添付ファイルを開", "ダウンロード", "download",
]


def assert_clean_message(msg, line: str, to: str, language: str) -> None:
    assert msg["From"] == SENDER
    assert msg["To"] == to
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Content-Language"] == language
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()  # no attachment
    assert re.fullmatch(r"<[^<>@\s]+@isp\.example>", msg["Message-ID"])
    when = email.utils.parsedate_to_datetime(msg["Date"])
    assert when.tzinfo is not None and abs(datetime.now(UTC) - when) < timedelta(minutes=5)
    body = msg.get_content()
    subject = str(msg["Subject"])
    if language == "ja":
        assert msg.get_content_charset() == "utf-8"
        assert "マルウェア" in subject and "感染" in body and "遮断" in body
    else:
        assert msg.get_content_charset() == "us-ascii"
        assert "malware" in subject and "infected" in body and "blocked" in body
    assert f"({line})" in body or f"（{line}）" in body
    text = (subject + body).lower()
    for word in FORBIDDEN:
        assert word.lower() not in text, word
    # No count, no time, no date: the only digits are the line id's.
    assert not re.search(r"\d", (subject + body).replace(line, "")), body


# -- records and notify ----------------------------------------------------------------------


def test_dry_run_writes_nothing(world):
    before = dump(world["state"])
    data = json.loads(ccxdp(world["state"], *notify_args(world), "--json").stdout)
    assert data["dry_run"] is True
    assert data["would_notify"] == [L1, L3]
    assert data["notified"] == []
    assert data["below_threshold"] == ["L-2"]
    assert data["opted_out"] == ["L-4"]
    assert data["attributed_rows"] == 8
    assert dump(world["state"]) == before
    assert not any(world["dir"].glob("**/*.eml"))


def test_notify_outbox_records_and_emails(world):
    out = world["dir"] / "outbox"
    cp = ccxdp(world["state"], *notify_args(world, "--from", SENDER, "--out", str(out),
                                             "--json"))
    data = json.loads(cp.stdout)
    assert data["dry_run"] is False
    assert [{k: v for k, v in s.items() if k in L1} for s in data["notified"]] == [L1, L3]
    sent = {s["line"]: s for s in data["notified"]}
    assert sent["L-1"]["email"] == "tanaka@example.jp" and sent["L-1"]["language"] == "ja"
    assert sent["L-3"]["email"] == "smith@example.net" and sent["L-3"]["language"] == "en"
    assert {s["channel"] for s in sent.values()} == {"outbox"}
    assert data["below_threshold"] == ["L-2"]
    assert data["opted_out"] == ["L-4"]
    assert data["already_notified"] == [] and data["no_contact"] == []
    assert data["unconfirmed"] == [] and data["failed"] == []
    assert data["unattributed"] == [{**UNATTRIBUTED_D, "reason": "no session"}]
    assert data["attributed_rows"] == 8

    files = sorted(out.glob("*.eml"))
    assert [f.name for f in files] == [Path(sent["L-1"]["where"]).name,
                                       Path(sent["L-3"]["where"]).name]
    assert re.fullmatch(r"2026-11-L-1-[0-9a-f]{8}\.eml", files[0].name)
    assert re.fullmatch(r"2026-11-L-3-[0-9a-f]{8}\.eml", files[1].name)
    msgs = {m["To"]: m for m in map(parse_eml, files)}
    assert set(msgs) == {"tanaka@example.jp", "smith@example.net"}
    assert_clean_message(msgs["tanaka@example.jp"], "L-1", "tanaka@example.jp", "ja")
    assert_clean_message(msgs["smith@example.net"], "L-3", "smith@example.net", "en")
    assert msgs["tanaka@example.jp"]["Message-ID"] == sent["L-1"]["message_id"]
    # The Japanese subject is RFC 2047 encoded, the body base64: 7-bit clean on the wire.
    raw = files[0].read_bytes()
    assert raw.isascii() and b"Subject: =?utf-8?b?" in raw
    assert b"Content-Transfer-Encoding: base64" in raw

    # A second run sends nothing: every line it would notify already was this month.
    again = json.loads(ccxdp(world["state"], *notify_args(
        world, "--from", SENDER, "--out", str(out), "--json")).stdout)
    assert again["notified"] == []
    assert again["already_notified"] == ["L-1", "L-3"]
    assert again["attributed_rows"] == 0
    assert sorted(out.glob("*.eml")) == files

    # records: every field, and the notifications.
    recs = json.loads(ccxdp(world["state"], "records", "--period", PERIOD, "--json").stdout)
    by_line = {r["line"]: r for r in recs["records"]}
    assert [{k: v for k, v in r.items() if k != "notification"} for r in recs["records"]] == [
        L1, L2, L3, L4]
    assert by_line["L-1"]["notification"]["state"] == "sent"
    assert by_line["L-1"]["notification"]["channel"] == "outbox"
    assert by_line["L-1"]["notification"]["message_id"] == sent["L-1"]["message_id"]
    assert by_line["L-2"]["notification"] is None
    assert recs["unattributed"] == [{**UNATTRIBUTED_D, "period": PERIOD,
                                     "reason": "not attributed"}]
    top = json.loads(ccxdp(world["state"], "records", "--top", "1", "--json").stdout)
    assert [r["line"] for r in top["records"]] == ["L-3"]
    one = json.loads(ccxdp(world["state"], "records", "--line", "L-2", "--json").stdout)
    assert [r["line"] for r in one["records"]] == ["L-2"] and one["unattributed"] == []

    rep = json.loads(ccxdp(world["state"], "report", "--period", PERIOD, "--json").stdout)
    assert rep == {
        "period": PERIOD, "lines_seen": 4, "lines_notified": 2, "hits": 31,
        "unattributed_addresses": 1,
        "categories": [
            {"category": "emotet", "lines_seen": 2, "lines_notified": 2, "hits": 18},
            {"category": "qakbot", "lines_seen": 3, "lines_notified": 1, "hits": 13},
        ],
    }
    text = json.dumps(rep)
    for secret in ("L-", A, B, C, D, E, "example"):
        assert secret not in text


NOTIFY_TSV = """\
# notify 2026-11
line\tresult\thits\tdays\tcategories\tto
L-1\tsent (outbox)\t9\t3\temotet 7, qakbot 2\ttanaka@example.jp
L-3\tsent (outbox)\t11\t2\temotet 11\tsmith@example.net
L-2\tbelow threshold (< 2 days)\t\t\t\t
L-4\topted out\t\t\t\t

8 hit rows attributed to lines

# unattributed addresses (1)
address\thits\tcategories\tfirst seen (UTC)\tlast seen (UTC)\treason
198.18.0.9\t1\temotet 1\t2026-11-06 09:07:00\t2026-11-06 09:07:30\tno session
"""
RECORDS_TSV = """\
# notification records (4)
line\tperiod\thits\tdays\tcategories\tfirst seen (UTC)\tlast seen (UTC)\taddresses\tfeeds\t\
notified
L-1\t2026-11\t9\t3\temotet 7, qakbot 2\t2026-11-03 10:05:00\t2026-11-10 08:16:30\t\
198.18.0.2 fd00:cc::2\tabuse.ch, local\tSENT (outbox)
L-2\t2026-11\t7\t1\tqakbot 7\t2026-11-05 12:01:00\t2026-11-05 12:30:30\t198.18.0.3\t-\t-
L-3\t2026-11\t11\t2\temotet 11\t2026-11-21 01:10:00\t2026-11-22 23:20:30\t198.18.0.2\t-\t\
SENT (outbox)
L-4\t2026-11\t4\t2\tqakbot 4\t2026-11-07 01:00:00\t2026-11-08 01:00:30\t198.18.0.4\t-\t-

# unattributed addresses (1)
address\thits\tcategories\tfirst seen (UTC)\tlast seen (UTC)\treason
198.18.0.9\t1\temotet 1\t2026-11-06 09:07:00\t2026-11-06 09:07:30\tnot attributed
"""
REPORT_TSV = """\
# infected lines per category, 2026-11
category\tlines seen\tlines notified\thits
emotet\t2\t2\t18
qakbot\t3\t1\t13
all\t4\t2\t31

1 addresses with hits had no line
"""


def test_tables_are_tsv_when_stdout_is_not_a_terminal(world):
    """Piped, every cell whole (never cut to 80 columns), whatever COLUMNS says."""
    out = world["dir"] / "outbox"
    env = {"COLUMNS": "40", "PATH": "/usr/bin:/bin"}
    table = ccxdp(world["state"], *notify_args(world, "--from", SENDER, "--out", str(out)),
                  env=env).stdout
    assert table == NOTIFY_TSV
    records = ccxdp(world["state"], "records", env=env).stdout
    sent = re.compile(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
    assert sent.sub("SENT", records) == RECORDS_TSV
    report = ccxdp(world["state"], "report", "--period", PERIOD, env=env).stdout
    assert report == REPORT_TSV


@pytest.fixture
def busy_month(tmp_path) -> dict:
    """1,000 addresses without a session (10.0.0.n, n+1 hits each), 31 lines of one address
    on 2 days, and line L-BIG, whose delegated prefix held 50 addresses."""
    state = tmp_path / "state"
    day3, day4 = (datetime(2026, 11, d, 10, tzinfo=UTC) for d in (3, 4))
    rows = [HitRow(ipaddress.ip_address(f"10.0.{n // 256}.{n % 256}"), EMOTET, "emotet", day3,
                   n + 1, day3, day3) for n in range(1000)]
    rows += [HitRow(ipaddress.ip_address(f"198.18.1.{n}"), QAKBOT, "qakbot", d, 2, d, d)
             for n in range(31) for d in (day3, day4)]
    rows += [HitRow(ipaddress.ip_address(f"fd00:b16:0:a::{n:x}"), QAKBOT, "qakbot", d, 1, d, d)
             for n in range(1, 51) for d in (day3, day4)]
    with Store(store_path(state)) as store:
        add_hits(store, rows)
    sessions = tmp_path / "sessions.csv"
    sessions.write_text("line_id,address_or_prefix,start,stop\n" + "".join(
        f"L-{n:02d},198.18.1.{n},2026-11-01T00:00:00Z,\n" for n in range(31))
        + "L-BIG,fd00:b16::/48,2026-11-01T00:00:00Z,\n")
    return {"state": state, "sessions": sessions}


BUSY_DRY_RUN = """\
# notify 2026-11: dry run, nothing sent or recorded
line\tresult\thits\tdays\tcategories\tto
L-00\tno contact in subscribers\t\t\t\t
L-01\tno contact in subscribers\t\t\t\t
L-02\tno contact in subscribers\t\t\t\t
L-03\tno contact in subscribers\t\t\t\t
L-04\tno contact in subscribers\t\t\t\t
L-05\tno contact in subscribers\t\t\t\t
L-06\tno contact in subscribers\t\t\t\t
L-07\tno contact in subscribers\t\t\t\t
L-08\tno contact in subscribers\t\t\t\t
L-09\tno contact in subscribers\t\t\t\t

… and 22 more lines: no contact in subscribers; --json for all
162 hit rows would be attributed to lines

# unattributed addresses (1,000)
address\thits\tcategories\tfirst seen (UTC)\tlast seen (UTC)\treason
10.0.3.231\t1,000\temotet 1,000\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.230\t999\temotet 999\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.229\t998\temotet 998\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.228\t997\temotet 997\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.227\t996\temotet 996\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.226\t995\temotet 995\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.225\t994\temotet 994\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.224\t993\temotet 993\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.223\t992\temotet 992\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session
10.0.3.222\t991\temotet 991\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tno session

… and 990 more unattributed addresses with 490,545 hits; --json for all
"""
BUSY_TOP_3 = """\
# notification records (3)
line\tperiod\thits\tdays\tcategories\tfirst seen (UTC)\tlast seen (UTC)\taddresses\tfeeds\t\
notified
L-BIG\t2026-11\t100\t2\tqakbot 100\t2026-11-03 10:00:00\t2026-11-04 10:00:00\t\
50 addresses; --json for all\t-\t-
L-00\t2026-11\t4\t2\tqakbot 4\t2026-11-03 10:00:00\t2026-11-04 10:00:00\t198.18.1.0\t-\t-
L-01\t2026-11\t4\t2\tqakbot 4\t2026-11-03 10:00:00\t2026-11-04 10:00:00\t198.18.1.1\t-\t-

# unattributed addresses (3)
address\thits\tcategories\tfirst seen (UTC)\tlast seen (UTC)\treason
10.0.3.231\t1,000\temotet 1,000\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tnot attributed
10.0.3.230\t999\temotet 999\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tnot attributed
10.0.3.229\t998\temotet 998\t2026-11-03 10:00:00\t2026-11-03 10:00:00\tnot attributed
"""


def test_human_output_is_bounded_over_a_busy_month(busy_month, tmp_path):
    """However many addresses: --top limits every list, a record's addresses are counted,
    the dry run shows the 10 addresses with the most hits; --json has everything."""
    state, sessions = busy_month["state"], str(busy_month["sessions"])
    dry = ccxdp(state, "notify", "--period", PERIOD, "--sessions", sessions).stdout
    assert dry == BUSY_DRY_RUN
    data = json.loads(ccxdp(state, "notify", "--period", PERIOD, "--sessions", sessions,
                            "--json").stdout)
    assert (len(data["no_contact"]), len(data["unattributed"])) == (32, 1000)
    contacts = tmp_path / "subscribers.csv"
    contacts.write_text("line_id,email,language\nL-NONE,noc@isp.example,en\n")
    ccxdp(state, "notify", "--period", PERIOD, "--sessions", sessions, "--subscribers",
          str(contacts), "--from", SENDER, "--out", str(tmp_path / "out"))
    assert ccxdp(state, "records", "--period", PERIOD, "--top", "3").stdout == BUSY_TOP_3
    top = json.loads(ccxdp(state, "records", "--period", PERIOD, "--top", "3",
                           "--json").stdout)
    assert [r["line"] for r in top["records"]] == ["L-BIG", "L-00", "L-01"]
    assert len(top["records"][0]["addresses"]) == 50
    assert [u["address"] for u in top["unattributed"]] == [
        "10.0.3.231", "10.0.3.230", "10.0.3.229"]
    everything = json.loads(ccxdp(state, "records", "--period", PERIOD, "--json").stdout)
    assert (len(everything["records"]), len(everything["unattributed"])) == (32, 1000)
    whole = ccxdp(state, "records", "--period", PERIOD).stdout.splitlines()
    assert len(whole) == 2 + 32 + 1 + 2 + 10 + 1 + 1  # all 32 records, 10 addresses
    assert whole[-1] == ("… and 990 more unattributed addresses with 490,545 hits; --json "
                         "for all")


def test_threshold_is_configurable(world):
    data = json.loads(ccxdp(world["state"], *notify_args(world, "--min-days", "1",
                                                         "--json")).stdout)
    assert [r["line"] for r in data["would_notify"]] == ["L-1", "L-2", "L-3"]
    data = json.loads(ccxdp(world["state"], *notify_args(world, "--min-days", "3",
                                                         "--json")).stdout)
    assert [r["line"] for r in data["would_notify"]] == ["L-1"]
    assert data["below_threshold"] == ["L-2", "L-3"]


def test_opted_out_line_never_notified(world):
    """Even with every other condition met (2 days, a contact)."""
    out = world["dir"] / "outbox"
    data = json.loads(ccxdp(world["state"], *notify_args(
        world, "--from", SENDER, "--out", str(out), "--min-days", "1", "--json")).stdout)
    assert "L-4" not in [s["line"] for s in data["notified"]]
    assert data["opted_out"] == ["L-4"]
    assert not [f for f in out.glob("*.eml") if "L-4" in f.name]
    with Store(store_path(world["state"])) as store:
        assert store.notification("L-4", PERIOD) is None


def test_line_without_contact_is_reported_and_notified_later(world):
    out = world["dir"] / "outbox"
    partial = world["dir"] / "partial.csv"
    partial.write_text("L-3,smith@example.net,en\n")
    args = ["notify", "--period", PERIOD, "--sessions", str(world["sessions.csv"]),
            "--opt-out", str(world["opt-out.txt"]), "--from", SENDER, "--out", str(out),
            "--json"]
    data = json.loads(ccxdp(world["state"], *args, "--subscribers", str(partial)).stdout)
    assert [s["line"] for s in data["notified"]] == ["L-3"]
    assert data["no_contact"] == ["L-1"]
    data = json.loads(ccxdp(world["state"], *args, "--subscribers",
                            str(world["subscribers.csv"])).stdout)
    assert [s["line"] for s in data["notified"]] == ["L-1"]
    assert data["already_notified"] == ["L-3"]


def test_hits_collected_later_keep_the_month_at_one_message(world):
    out = world["dir"] / "outbox"
    args = notify_args(world, "--from", SENDER, "--out", str(out), "--json")
    ccxdp(world["state"], *args)
    with Store(store_path(world["state"])) as store:  # the collector adds more for L-1
        add_hits(store, hit_rows([(B, QAKBOT, 25, 3, 9, 0, 1, ())]))
    data = json.loads(ccxdp(world["state"], *args).stdout)
    assert data["notified"] == [] and data["already_notified"] == ["L-1", "L-3"]
    assert data["attributed_rows"] == 1
    recs = json.loads(ccxdp(world["state"], "records", "--line", "L-1", "--json").stdout)
    assert recs["records"][0]["hits"] == 18 and recs["records"][0]["days"] == 4
    assert len(list(out.glob("*.eml"))) == 2


def test_notified_line_stays_notified_when_hits_arrive_in_its_hour(world):
    """The collector adds hits to an hour notify already attributed: the line keeps what was
    attributed (and its notice) in every view; the new hits wait, under their address, for
    the next notify to attribute them."""
    out = world["dir"] / "outbox"
    args = notify_args(world, "--from", SENDER, "--out", str(out), "--json")
    ccxdp(world["state"], *args)
    with Store(store_path(world["state"])) as store:  # A's first hour of L-1, again
        add_hits(store, hit_rows([(A, EMOTET, 3, 10, 2, 52, 53, ())]))
    recs = json.loads(ccxdp(world["state"], "records", "--period", PERIOD, "--json").stdout)
    by_line = {r["line"]: r for r in recs["records"]}
    assert sorted(by_line) == ["L-1", "L-2", "L-3", "L-4"]
    assert {k: v for k, v in by_line["L-1"].items() if k != "notification"} == L1
    assert by_line["L-1"]["notification"]["state"] == "sent"
    assert recs["unattributed"] == [
        {"address": A, "hits": 2, "categories": {"emotet": 2}, "period": PERIOD,
         "first_seen": "2026-11-03T10:52:00Z", "last_seen": "2026-11-03T10:53:30Z",
         "reason": "not attributed"},
        {**UNATTRIBUTED_D, "period": PERIOD, "reason": "not attributed"}]
    rep = json.loads(ccxdp(world["state"], "report", "--period", PERIOD, "--json").stdout)
    assert (rep["lines_seen"], rep["lines_notified"], rep["hits"]) == (4, 2, 31)
    assert rep["unattributed_addresses"] == 2
    with Store(store_path(world["state"])) as store:
        assert len(store.notifications(period=PERIOD)) == 2
    human = ccxdp(world["state"], "records", "--line", "L-1").stdout.splitlines()
    assert re.fullmatch(r"L-1\t2026-11\t9\t3\temotet 7, qakbot 2\t.*\t\S+Z \(outbox\)", human[2])
    report = ccxdp(world["state"], "report", "--period", PERIOD).stdout.splitlines()
    assert "all\t4\t2\t31" in report and "2 addresses with hits had no line" in report
    # notify without sessions attributes nothing, and still knows L-1 was notified.
    bare = json.loads(ccxdp(world["state"], "notify", "--period", PERIOD, "--json").stdout)
    assert bare["already_notified"] == ["L-1", "L-3"] and bare["attributed_rows"] == 0
    again = json.loads(ccxdp(world["state"], *args).stdout)
    assert again["already_notified"] == ["L-1", "L-3"] and again["notified"] == []
    assert again["attributed_rows"] == 1
    [l1] = json.loads(ccxdp(world["state"], "records", "--line", "L-1", "--json").stdout)[
        "records"]
    assert (l1["hits"], l1["days"], l1["first_seen"], l1["addresses"]) == (
        11, 3, "2026-11-03T10:05:00Z", [A, B])
    assert len(list(out.glob("*.eml"))) == 2


def test_outbox_crash_after_writing_is_recovered(world):
    """A run killed after the .eml reached the outbox but before 'sent' was recorded: the
    claim is pending; the next run finds the file by its Message-ID and records it, sending
    nothing again. (Made by hand here: the claim, then the file, as notify does them.)"""
    from ccxdp.notify import attribution, mail
    from ccxdp.notify import records as rec

    out = world["dir"] / "outbox"
    store = Store(store_path(world["state"]))
    sessions = attribution.load([world["sessions.csv"]])
    rec.attribute(store, sessions, PERIOD)
    record = next(r for r in rec.build_records(store, PERIOD) if r.line == "L-1")
    msg = mail.build_message(mail.Templates(), line_id="L-1", language="ja",
                             to="tanaka@example.jp", sender=SENDER)
    data = msg.as_bytes()
    assert store.claim("L-1", PERIOD, "outbox", "tanaka@example.jp", msg["Message-ID"],
                       {"record": record.to_json(), "language": "ja",
                        "message": data.decode()})
    outbox = mail.Outbox(out)
    outbox.open()
    outbox.deliver("L-1", PERIOD, data)
    store.close()
    before = sorted(p.read_bytes() for p in out.glob("*.eml"))
    res = json.loads(ccxdp(world["state"], *notify_args(
        world, "--from", SENDER, "--out", str(out), "--json")).stdout)
    assert res["recovered"] == ["L-1"]
    assert [s["line"] for s in res["notified"]] == ["L-3"]
    after = sorted(p.read_bytes() for p in out.glob("*.eml"))
    assert before[0] in after and len(after) == 2
    with Store(store_path(world["state"])) as store:
        assert store.notification("L-1", PERIOD).state == "sent"


def test_unconfirmed_outbox_claim_is_not_resent_unless_asked(world):
    """A claim whose file never reached the outbox (a crash before the rename, or an outbox
    reader that already took it away): not sent again until --resend-unconfirmed."""
    from ccxdp.notify import mail

    out = world["dir"] / "outbox"
    msg = mail.build_message(mail.Templates(), line_id="L-1", language="ja",
                             to="tanaka@example.jp", sender=SENDER)
    with Store(store_path(world["state"])) as store:
        store.claim("L-1", PERIOD, "outbox", "tanaka@example.jp", msg["Message-ID"],
                    {"record": L1, "language": "ja", "message": msg.as_bytes().decode()})
    res = json.loads(ccxdp(world["state"], *notify_args(
        world, "--from", SENDER, "--out", str(out), "--json")).stdout)
    assert [u["line"] for u in res["unconfirmed"]] == ["L-1"]
    assert res["unconfirmed"][0]["message_id"] == msg["Message-ID"]
    assert [s["line"] for s in res["notified"]] == ["L-3"]
    assert len(list(out.glob("*L-1*.eml"))) == 0
    res = json.loads(ccxdp(world["state"], *notify_args(
        world, "--from", SENDER, "--out", str(out), "--resend-unconfirmed", "--json")).stdout)
    assert [(s["line"], s["resent"]) for s in res["notified"]] == [("L-1", True)]
    (resent,) = out.glob("*L-1*.eml")
    assert parse_eml(resent)["Message-ID"] == msg["Message-ID"]
    assert resent.read_bytes() == msg.as_bytes()


# -- bad input files ---------------------------------------------------------------------------


def dump(state: Path) -> list[str]:
    path = store_path(state)
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


BAD_FILES = [
    ("sessions.csv", "L-1,198.18.0.300,2026-11-01T00:00:00Z,\n",
     "{path}:1: invalid address or prefix: 198.18.0.300"),
    ("sessions.csv", "line_id,address_or_prefix,start,stop\nL-1,198.18.0.2,2026-11-01T00:00:00,\n",
     "{path}:2: start time has no UTC offset (add Z or +09:00): 2026-11-01T00:00:00"),
    ("sessions.csv", "L-1,fd00:cc::1/56,2026-11-01T00:00:00Z,\n",
     "{path}:1: host bits set in prefix: fd00:cc::1/56"),
    ("sessions.csv", "L-1,198.18.0.2,2026-11-02T00:00:00Z,2026-11-01T00:00:00Z\n",
     "{path}:1: stop before start: 2026-11-01T00:00:00Z"),
    ("sessions.csv", "\nL-1,198.18.0.2,2026-11-01T00:00:00Z\n",
     "{path}:2: expected 4 fields (line_id,address_or_prefix,start,stop), got 3: "
     "L-1,198.18.0.2,2026-11-01T00:00:00Z"),
    ("sessions.csv", "L-1,198.18.0.2,yesterday,\n",
     "{path}:1: invalid start time (ISO 8601 expected): yesterday"),
    ("subscribers.csv", "line_id,email,language\nL-1,tanaka-at-example.jp,ja\n",
     "{path}:2: invalid e-mail address: tanaka-at-example.jp"),
    ("subscribers.csv", "L-1,tanaka@example.jp,ja\nL-3,smith@example.net,fr\n",
     "{path}:2: no template for this language (templates: en, ja): fr"),
    ("subscribers.csv", "L-1,tanaka@example.jp,ja\nL-1,other@example.jp,en\n",
     "{path}:2: line id listed twice: L-1"),
    ("dhcpd.leases", "lease 198.18.0.2 {\n  starts 2 2026/11/31 00:00:00;\n}\n",
     "{path}:2: invalid lease time: 2 2026/11/31 00:00:00"),
    ("dhcpd.leases", "lease 198.18.0.256 {\n  starts 2 2026/11/03 00:00:00;\n}\n",
     "{path}:1: invalid lease address: 198.18.0.256"),
    ("dhcpd.leases", "lease 198.18.0.2 {\n  starts 2 2026/11/03 00:00:00;\n",
     "{path}:2: block without '}}': end of file"),
    ("kea-leases4.csv",
     "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,"
     "state,user_context\n198.18.0.2,00:16:3e:00:00:01,,3600,soon,1,0,0,,0,\n",
     "{path}:2: invalid expire: soon"),
]


@pytest.mark.parametrize(
    "name, text, expected", BAD_FILES,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_FILES)],
)
def test_bad_input_file(world, name, text, expected):
    bad = world["dir"] / f"bad-{name}"
    bad.write_text(text)
    out = world["dir"] / "outbox"
    before = dump(world["state"])
    files = {"sessions.csv": "--sessions", "subscribers.csv": "--subscribers"}
    option = files.get(name, "--leases")
    args = ["notify", "--period", PERIOD, "--from", SENDER, "--out", str(out)]
    for key, opt in files.items():
        args += [opt, str(bad if key == name else world[key])]
    if option == "--leases":
        args += ["--leases", str(bad)]
    cp = ccxdp(world["state"], *args, check=False)
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr == f"Error: {expected.format(path=bad)}\n"
    assert cp.stdout == ""
    assert dump(world["state"]) == before
    assert not out.exists()


def test_input_file_not_utf8(world):
    bad = world["dir"] / "sjis.csv"
    bad.write_bytes(b"line_id,email,language\nL-1,a@example.jp,ja\n"
                    + "L-2,\u7530\u4e2d@example.jp,ja\n".encode("shift_jis"))
    before = dump(world["state"])
    cp = ccxdp(world["state"], *notify_args(world)[:-2], "--subscribers", str(bad),
               check=False)
    expected = f"Error: {bad}:3: not UTF-8 text: b'\\x93c\\x92\\x86'\n"
    assert (cp.returncode, cp.stderr) == (1, expected)
    assert dump(world["state"]) == before


def test_missing_input_file(world):
    cp = ccxdp(world["state"], "notify", "--period", PERIOD, "--sessions",
               str(world["dir"] / "nope.csv"), check=False)
    assert (cp.returncode, cp.stderr) == (
        1, f"Error: cannot read {world['dir'] / 'nope.csv'}: No such file or directory\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "o", "--smtp", "198.18.0.25:25"], "give --out or --smtp, not both"),
        (["--out", "o", "--subscribers", "s.csv"], "give --from"),
        (["--out", "o", "--from", SENDER], "give --subscribers"),
        (["--starttls"], "go with --smtp"),
        (["--smtps"], "go with --smtp"),
        (["--smtp", "mx", "--from", SENDER, "--subscribers", "s.csv", "--starttls",
          "--smtps"], "give --starttls or --smtps, not both"),
        (["--smtp", "mx", "--from", SENDER, "--subscribers", "s.csv", "--smtp-user", "u"],
         "--smtp-user without TLS would send the password in clear text"),
        (["--period", "2026-13"], "invalid period '2026-13'"),
        (["--smtp", "mx:99999"], "port out of range"),
        (["--from", "not an address"], "not an e-mail address"),
    ],
    ids=["out-and-smtp", "no-from", "no-subscribers", "starttls-alone", "smtps-alone",
         "starttls-and-smtps", "auth-without-tls", "period", "port",
         "from"],
)
def test_usage_errors(tmp_path, args, message):
    state = tmp_path / "state"
    base = ["notify"] + ([] if "--period" in args else ["--period", PERIOD])
    cp = ccxdp(state, *base, *args, check=False)
    assert cp.returncode == 2, cp.stderr
    assert message in cp.stderr
    assert not state.exists()


def test_commands_on_an_empty_state_folder_make_nothing(tmp_path):
    state = tmp_path / "state"
    assert json.loads(ccxdp(state, "records", "--json").stdout) == {
        "records": [], "unattributed": [], "feed_copies": {}}
    rep = json.loads(ccxdp(state, "report", "--period", PERIOD, "--json").stdout)
    assert rep["lines_seen"] == 0 and rep["categories"] == []
    data = json.loads(ccxdp(state, "notify", "--period", PERIOD, "--json").stdout)
    assert data["would_notify"] == [] and data["dry_run"] is True
    assert not state.exists()


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.root
@pytest.mark.parametrize("args", [["records"], ["report", "--period", PERIOD],
                                  ["notify", "--period", PERIOD]],
                         ids=["records", "report", "notify"])
def test_state_folder_of_root_refuses_others(world, args):
    """The state folder is root's, 0700: anyone else gets one line naming root."""
    world["state"].chmod(0o700)
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import ccxdp.cli"],
                           capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip("user nobody cannot read the checkout or venv")
    cp = subprocess.run([*AS_NOBODY, str(CCXDP), "--state-dir", str(world["state"]), *args],
                        capture_output=True, text=True, cwd="/", timeout=120)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    (line,) = cp.stderr.splitlines()
    assert line.startswith("Error: Permission denied") and "root" in line


def test_expire_keeps_the_records_and_drops_the_addresses(world):
    """After notify attributed the month, `ccxdp expire` deletes the per-address rows: the
    records keep their hits, categories, days and feeds, only the addresses are gone. The
    hits no line was found for stay until --unattributed."""
    out = world["dir"] / "outbox"
    ccxdp(world["state"], *notify_args(world, "--from", SENDER, "--out", str(out)))
    before = json.loads(ccxdp(world["state"], "records", "--period", PERIOD, "--json").stdout)
    data = json.loads(ccxdp(world["state"], "expire", "--older-than", "0.01", "--json").stdout)
    assert (data["rows"], data["unattributed"]) == (8, False)
    after = json.loads(ccxdp(world["state"], "records", "--period", PERIOD, "--json").stdout)
    assert after["records"] == [{**r, "addresses": []} for r in before["records"]]
    assert after["unattributed"] == before["unattributed"] != []
    rep = json.loads(ccxdp(world["state"], "report", "--period", PERIOD, "--json").stdout)
    assert (rep["lines_seen"], rep["hits"]) == (4, 31)
    # Notified once a month still: nothing is sent again.
    again = json.loads(ccxdp(world["state"], *notify_args(
        world, "--from", SENDER, "--out", str(out), "--json")).stdout)
    assert again["notified"] == [] and again["already_notified"] == ["L-1", "L-3"]

    text = ccxdp(world["state"], "expire", "--older-than", "0.01", "--unattributed").stdout
    assert text.startswith("expired 1 per-address rows whose hour ended before 20")
    final = json.loads(ccxdp(world["state"], "records", "--period", PERIOD, "--json").stdout)
    assert final["unattributed"] == [] and final["records"] == after["records"]
    with Store(store_path(world["state"])) as store:
        assert store.hits() == []


@pytest.mark.parametrize("age, reason", [("0", "not in the range 0<x<=36500"),
                                         ("inf", "not in the range 0<x<=36500"),
                                         ("1e6", "not in the range 0<x<=36500"),
                                         ("nan", "nan is not a number of days")])
def test_expire_refuses_a_bad_age(tmp_path, age, reason):
    cp = ccxdp(tmp_path / "state", "expire", "--older-than", age, check=False)
    assert cp.returncode == 2 and "--older-than" in cp.stderr and reason in cp.stderr
    assert "Traceback" not in cp.stderr
    assert not (tmp_path / "state").exists()


def test_a_record_shows_the_ipv6_prefix_hits_were_counted_by(world):
    """IPv6 hits are counted per /64 (source_prefix_v6): the row names the prefix, the /56
    delegated to L-1 takes it, and L-1's record lists it among its addresses."""
    prefix = "fd00:cc:0:12::/64"  # inside L-1's fd00:cc::/56
    state = world["dir"] / "state64"
    seed(state, [(A, EMOTET, 3, 10, 4, 5, 50, ()), (prefix, EMOTET, 4, 11, 3, 0, 59, ()),
                 (prefix, QAKBOT, 12, 1, 2, 0, 0, ())])
    data = json.loads(ccxdp(state, *notify_args(world, "--json")).stdout)
    l1 = next(r for r in data["would_notify"] if r["line"] == "L-1")
    assert (l1["addresses"], l1["hits"], l1["days"]) == ([A, prefix], 9, 3)
    assert l1["categories"] == {"emotet": 7, "qakbot": 2}
    assert data["unattributed"] == []
