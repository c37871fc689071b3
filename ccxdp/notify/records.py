"""Notification records: per subscriber line and month, what its addresses' blocked queries
add up to; and ``notify``, which turns records into at most one message per line and month.

A record: line id, period, first and last seen, total hits, hits per category, the days with
hits, the addresses seen, the feeds involved. Operators see all of it (``ccxdp records``);
a subscriber's message names none of it.

The threshold. A DNS query over UDP carries whatever source address its sender wrote, so
anyone can make an innocent line "query" a C&C name: a burst of spoofed packets on one day
looks exactly like an infected device. Malware beacons again and again, day after day. So a
line is notified only when its hits fall on at least ``min_days`` distinct days (UTC) of the
period, 2 by default: one day of noise, however loud, is not enough, and a real infection
that lasts past one day still is. Raise it where spoofing is common; 1 notifies on any hit.

At most once a month, whatever happens. For each line, notify first records a claim
('pending', with the record and the whole message) in the store and commits it, then
delivers, then marks it 'sent'. A second run, or two runs at once, never deliver to a line
that has a claim. A crash between the claim and 'sent' leaves the claim pending: for the
outbox, the next run finds the file (same Message-ID) and marks it sent; for SMTP, where the
server cannot be asked, the line is reported as unconfirmed and is not sent again, unless the
operator, having checked the mail server's log for its Message-ID, asks for
``--resend-unconfirmed`` (which resends the very same message, Message-ID included, so a mail
client that saw the first one can tell). Failing safe means a crash can cost a subscriber a
notice, never give them two. A refusal by the SMTP server, or a connection that fails before
the message was handed over, is certain: that claim is dropped and the next run tries again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from ccxdp.errors import CcxdpError
from ccxdp.hits.store import Store, iso, period_bounds
from ccxdp.inputs import InputError, csv_rows, open_input
from ccxdp.notify import mail
from ccxdp.notify.attribution import Sessions
from ccxdp.policy.catalog import category_label as category_name

DEFAULT_MIN_DAYS = 2
# Human output stays readable over an ISP's month (tens of thousands of addresses): a
# secondary list shows this many rows (the most hits first) and says how many more there
# are; a record shows this many addresses, else their number. --json always has them all.
SHOWN = 10
ADDRESSES_SHOWN = 3
SUBSCRIBER_HEADER = ["line_id", "email", "language"]


@dataclass(frozen=True)
class LineRecord:
    line: str
    period: str
    first_seen: str  # ISO 8601, UTC
    last_seen: str
    hits: int
    categories: dict[str, int]  # category name -> hits
    days: int  # distinct days (UTC) with hits
    addresses: list[str]
    feeds: list[str]
    resolvers: dict[str, int] | None = None  # hits per resolver (the fleet), when asked

    def to_json(self) -> dict:
        data = {"line": self.line, "period": self.period, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "hits": self.hits,
                "categories": dict(self.categories), "days": self.days,
                "addresses": list(self.addresses), "feeds": list(self.feeds)}
        if self.resolvers is not None:
            data["resolvers"] = dict(self.resolvers)
        return data


@dataclass(frozen=True)
class Unattributed:
    address: str
    hits: int
    categories: dict[str, int]
    first_seen: str
    last_seen: str
    reason: str

    def to_json(self) -> dict:
        return {"address": self.address, "hits": self.hits,
                "categories": dict(self.categories), "first_seen": self.first_seen,
                "last_seen": self.last_seen, "reason": self.reason}


@dataclass(frozen=True)
class Subscriber:
    line: str
    email: str
    language: str


def _address_key(text: str) -> tuple[int, bytes, int]:
    """Addresses, and the IPv6 prefixes sources were counted by, in ipaddress's order (IPv4
    first, then by value), from their packed bytes: an ipaddress object per address was a
    third of records' time over a busy month."""
    address, slash, plen = text.partition("/")
    if ":" in address:
        return 6, inet_pton(AF_INET6, address), int(plen) if slash else 128
    return 4, inet_pton(AF_INET, address), int(plen) if slash else 32


def build_records(store: Store, period: str, line: str | None = None,
                  by_resolver: bool = False) -> list[LineRecord]:
    """Every line with attributed hits in the period, by line id; with ``by_resolver`` (the
    fleet store), each line's hits per resolver too."""
    start, end = period_bounds(period)
    names = store.categories()
    acc: dict[str, dict] = {}
    for ln, category, hour, hits, first_us, last_us, address in store.line_hits(
        start, end, line
    ):
        a = acc.setdefault(
            ln, {"hits": 0, "first": first_us, "last": last_us, "cats": defaultdict(int),
                 "days": set(), "addresses": set(), "feeds": set()},
        )
        a["hits"] += hits
        a["first"] = min(a["first"], first_us)
        a["last"] = max(a["last"], last_us)
        a["cats"][category_name(category, names)] += hits
        a["days"].add(hour // 86400)
        if address is not None:
            a["addresses"].add(address)
    for ln, feed in store.line_feeds(start, end, line):
        if ln in acc:
            acc[ln]["feeds"].add(feed)
    per_resolver: dict[str, dict[str, int]] = defaultdict(dict)
    if by_resolver:
        for ln, resolver, hits in store.line_resolvers(start, end, line):
            per_resolver[ln][resolver] = int(hits)
    return [
        LineRecord(
            line=ln, period=period, first_seen=iso(a["first"]), last_seen=iso(a["last"]),
            hits=a["hits"], categories=dict(sorted(a["cats"].items())), days=len(a["days"]),
            addresses=sorted(a["addresses"], key=_address_key), feeds=sorted(a["feeds"]),
            resolvers=per_resolver[ln] if by_resolver else None,
        )
        for ln, a in sorted(acc.items())
    ]


def attribute(store: Store, sessions: Sessions, period: str) -> tuple[int, list[Unattributed]]:
    """Give the period's unattributed rows their lines where the sessions tell; returns the
    number attributed and what is left, per address."""
    start, end = period_bounds(period)
    assignments, left = [], []
    for h in store.hits(start, end):
        if h.line is not None:
            continue
        line, reason = sessions.lookup(h.address, h.first_us, h.last_us)
        if line is not None:
            assignments.append((h.address, h.category, h.hour, h.hits, line, h.resolver))
        else:
            left.append((h.address, h.category, h.hits, h.first_us, h.last_us, reason))
    done = store.attribute(assignments)
    return done, _unattributed(store, left)


def unattributed(store: Store, period: str) -> list[Unattributed]:
    """Rows of the period that have no line (yet), per address."""
    start, end = period_bounds(period)
    return _unattributed(store, [(*row, "not attributed")
                                 for row in store.unattributed_hits(start, end)])


def _unattributed(store: Store, rows) -> list[Unattributed]:
    """(address, category, hits, first_us, last_us, reason) rows, per address."""
    names = store.categories()
    acc: dict[str, list] = {}
    for address, category, hits, first_us, last_us, reason in rows:
        a = acc.get(address)
        if a is None:
            a = acc[address] = [0, first_us, last_us, defaultdict(int), set()]
        a[0] += hits
        a[1] = min(a[1], first_us)
        a[2] = max(a[2], last_us)
        a[3][category_name(category, names)] += hits
        a[4].add(reason)
    return [
        Unattributed(
            address=addr, hits=hits, categories=dict(sorted(cats.items())),
            first_seen=iso(first), last_seen=iso(last), reason="; ".join(sorted(reasons)),
        )
        for addr, (hits, first, last, cats, reasons) in sorted(
            acc.items(), key=lambda kv: _address_key(kv[0]))
    ]


# -- subscribers and opt-outs ----------------------------------------------------------------


def read_subscribers(path: Path | str, languages: Iterable[str]) -> dict[str, Subscriber]:
    """``line_id,email,language`` (a first row of those names is a header). Every line once;
    the language must have a template."""
    known = set(languages)
    out: dict[str, Subscriber] = {}
    for lineno, (line, email, language), text in csv_rows(path, SUBSCRIBER_HEADER):
        if not line:
            raise InputError(path, lineno, "empty line id", text)
        try:
            mail.check_address(email)
        except mail.MailError:
            raise InputError(path, lineno, "invalid e-mail address", email) from None
        if language not in known:
            raise InputError(
                path, lineno,
                f"no template for this language (templates: {', '.join(sorted(known))})",
                language,
            )
        if line in out:
            raise InputError(path, lineno, "line id listed twice", line)
        out[line] = Subscriber(line, email, language)
    return out


def read_opt_out(path: Path | str) -> set[str]:
    """Line ids, one a line; blank lines and '#' comments are skipped."""
    out = set()
    with open_input(path) as f:
        for raw in f:
            text = raw.split("#", 1)[0].strip()
            if text:
                out.add(text)
    return out


# -- notify ----------------------------------------------------------------------------------


@dataclass
class Sent:
    record: LineRecord
    email: str
    language: str
    message_id: str
    channel: str
    where: str
    resent: bool = False

    def to_json(self) -> dict:
        return {**self.record.to_json(), "email": self.email, "language": self.language,
                "message_id": self.message_id, "channel": self.channel, "where": self.where,
                "resent": self.resent}


@dataclass
class NotifyResult:
    period: str
    min_days: int
    dry_run: bool
    attributed_rows: int = 0
    leases_without_line_id: int = 0
    notified: list[Sent] = field(default_factory=list)
    would_notify: list[LineRecord] = field(default_factory=list)  # dry run
    already_notified: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # pending, found delivered
    unconfirmed: list[dict] = field(default_factory=list)  # pending, left alone
    below_threshold: list[str] = field(default_factory=list)
    opted_out: list[str] = field(default_factory=list)
    no_contact: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    unattributed: list[Unattributed] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "period": self.period,
            "min_days": self.min_days,
            "dry_run": self.dry_run,
            "attributed_rows": self.attributed_rows,
            "leases_without_line_id": self.leases_without_line_id,
            "notified": [s.to_json() for s in self.notified],
            "would_notify": [r.to_json() for r in self.would_notify],
            "already_notified": self.already_notified,
            "recovered": self.recovered,
            "unconfirmed": self.unconfirmed,
            "below_threshold": self.below_threshold,
            "opted_out": self.opted_out,
            "no_contact": self.no_contact,
            "failed": self.failed,
            "unattributed": [u.to_json() for u in self.unattributed],
        }


class NotifyError(CcxdpError):
    """A run stopped part-way (the result so far is attached)."""

    def __init__(self, message: str, result: NotifyResult):
        super().__init__(message)
        self.result = result


def notify(
    store: Store,
    period: str,
    sessions: Sessions,
    *,
    subscribers: dict[str, Subscriber] | None = None,
    opt_out: set[str] = frozenset(),
    min_days: int = DEFAULT_MIN_DAYS,
    deliverer=None,
    templates: mail.Templates | None = None,
    sender: str | None = None,
    resend_unconfirmed: bool = False,
    now: datetime | None = None,
) -> NotifyResult:
    """Attribute the period's hits, build the records, and notify each line that passes the
    threshold, is not opted out, has a contact and has no notification for the period yet.
    Without a deliverer (an Outbox or SmtpSender) it is a dry run: nothing is written."""
    if min_days < 1:
        raise CcxdpError(f"--min-days must be at least 1, not {min_days}")
    dry = deliverer is None
    result = NotifyResult(period, min_days, dry)
    result.leases_without_line_id = sessions.leases_without_line_id
    if dry:
        # Attribute in a transaction that is rolled back: a dry run changes nothing.
        with store.rehearsal():
            result.attributed_rows, result.unattributed = attribute(store, sessions, period)
            records = build_records(store, period)
    else:
        result.attributed_rows, result.unattributed = attribute(store, sessions, period)
        records = build_records(store, period)
    todo, pending = _sort_lines(store, period, records, result, subscribers or {}, opt_out,
                                min_days)  # fmt: skip
    if dry:
        result.would_notify = [r for r, _ in todo]
        result.unconfirmed = [_pending_json(p) for p in pending]
        return result
    assert templates is not None and sender is not None
    resend = _settle_pending(store, period, pending, deliverer, result, resend_unconfirmed)
    if todo or resend:
        _send(store, period, todo, resend, deliverer, result, templates, sender, now)
    return result


def _sort_lines(store: Store, period: str, records: list[LineRecord], result: NotifyResult,
                subscribers: dict[str, Subscriber], opt_out: set[str], min_days: int,
                ) -> tuple[list[tuple[LineRecord, Subscriber]], list]:
    """Each line's record into the result's lists (opted out, already notified, below the
    threshold, no contact); returns the lines to notify and the pending claims to settle."""
    todo: list[tuple[LineRecord, Subscriber]] = []
    pending = []
    for r in records:
        existing = store.notification(r.line, period)
        if r.line in opt_out:
            result.opted_out.append(r.line)
        elif existing is not None and existing.state == "sent":
            result.already_notified.append(r.line)
        elif existing is not None:
            pending.append(existing)
        elif r.days < min_days:
            result.below_threshold.append(r.line)
        elif r.line not in subscribers:
            result.no_contact.append(r.line)
        else:
            todo.append((r, subscribers[r.line]))
    return todo, pending


def _settle_pending(store: Store, period: str, pending: list, deliverer, result: NotifyResult,
                    resend_unconfirmed: bool) -> list:
    """Claims an earlier run left pending: delivered ones are marked sent (recovered), the
    others resent if asked, else reported unconfirmed. Returns those to resend."""
    resend = []
    for p in pending:
        if deliverer.channel == p.channel and deliverer.delivered(p.line, period, p.message_id):
            store.mark_sent(p.line, period, p.message_id)
            result.recovered.append(p.line)
        elif resend_unconfirmed and deliverer.channel == p.channel:
            resend.append(p)
        else:
            result.unconfirmed.append(_pending_json(p))
    return resend


def _send(store: Store, period: str, todo: list[tuple[LineRecord, Subscriber]], resend: list,
          deliverer, result: NotifyResult, templates: mail.Templates, sender: str,
          now: datetime | None) -> None:
    """Deliver: each message is claimed in the store before it is handed over, so a run
    killed midway never sends a line twice."""
    try:
        deliverer.open()
    except mail.NotDelivered as e:
        raise NotifyError(str(e), result) from e
    try:
        for p in resend:
            _deliver(store, deliverer, result, p.line, period, p.message_id,
                     p.record["message"].encode(), sender, p.recipient,
                     LineRecord(**p.record["record"]), p.record["language"], resent=True)
        for r, sub in todo:
            msg = mail.build_message(
                templates, line_id=r.line, language=sub.language, to=sub.email,
                sender=sender, date=now,
            )
            data = msg.as_bytes()
            message_id = msg["Message-ID"]
            stored = {"record": r.to_json(), "language": sub.language,
                      "message": data.decode("utf-8")}
            if not store.claim(r.line, period, deliverer.channel, sub.email, message_id, stored):
                result.already_notified.append(r.line)  # another run got there first
                continue
            _deliver(store, deliverer, result, r.line, period, message_id, data, sender,
                     sub.email, r, sub.language)
    finally:
        deliverer.close()


def _deliver(store, deliverer, result, line, period, message_id, data, sender, to, record,
             language, resent=False) -> None:
    try:
        if deliverer.channel == "smtp":
            where = deliverer.deliver(line, period, data, sender, to)
        else:
            where = deliverer.deliver(line, period, data)
    except mail.NotDelivered as e:
        store.release(line, period, message_id)
        result.failed.append({"line": line, "error": str(e)})
        return
    except mail.Uncertain as e:
        result.unconfirmed.append({"line": line, "message_id": message_id, "error": str(e)})
        raise NotifyError(
            f"{e}; stopped: line {line} stays unconfirmed (Message-ID {message_id})", result
        ) from e
    store.mark_sent(line, period, message_id)
    result.notified.append(
        Sent(record, to, language, message_id, deliverer.channel, where, resent)
    )


def _pending_json(p) -> dict:
    return {"line": p.line, "message_id": p.message_id, "channel": p.channel,
            "claimed_at": p.claimed_at}


# -- report ----------------------------------------------------------------------------------


def report(store: Store, period: str, by_resolver: bool = False) -> dict:
    """Anonymous totals for the period: lines with hits and lines notified, per category
    (and, with ``by_resolver``, lines seen and hits per resolver). No line id, no address:
    fit to share with other ISPs."""
    records = build_records(store, period, by_resolver=by_resolver)
    notified = {n.line for n in store.notifications(period=period) if n.state == "sent"}
    cats: dict[str, dict[str, int]] = defaultdict(
        lambda: {"lines_seen": 0, "lines_notified": 0, "hits": 0}
    )
    for r in records:
        for name, hits in r.categories.items():
            c = cats[name]
            c["lines_seen"] += 1
            c["lines_notified"] += r.line in notified
            c["hits"] += hits
    extra = {}
    if by_resolver:
        per: dict[str, dict[str, int]] = defaultdict(lambda: {"lines_seen": 0, "hits": 0})
        for r in records:
            for resolver, hits in (r.resolvers or {}).items():
                per[resolver]["lines_seen"] += 1
                per[resolver]["hits"] += hits
        extra["resolvers"] = [{"resolver": k, **v} for k, v in sorted(per.items())]
    return {
        **extra,
        "period": period,
        "lines_seen": len(records),
        "lines_notified": sum(r.line in notified for r in records),
        "hits": sum(r.hits for r in records),
        "unattributed_addresses": len(unattributed(store, period)),
        "categories": [{"category": k, **v} for k, v in sorted(cats.items())],
    }


# -- rendering (pure: data in, rich renderable out) ------------------------------------------


def _cats(categories: dict[str, int]) -> str:
    return ", ".join(f"{_text(k)} {v:,}" for k, v in categories.items())


def _text(value: str) -> str:
    """A line id or a name from outside (sessions files, the database), fit for a table
    cell: never read as rich markup, control characters shown as escapes."""
    return escape("".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value))


def _when(text: str) -> str:
    return text.replace("T", " ").rstrip("Z")


def _addresses(addresses: list[str]) -> str:
    if not addresses:
        return "-"
    if len(addresses) <= ADDRESSES_SHOWN:
        return "\n".join(addresses)
    return f"{len(addresses):,} addresses; --json for all"


def most_hits(left: list[Unattributed], n: int | None) -> list[Unattributed]:
    """The ``n`` addresses with the most hits (all, with None), most first."""
    ranked = sorted(left, key=lambda u: (-u.hits, _address_key(u.address)))
    return ranked if n is None else ranked[:n]


def render_records(
    records: list[LineRecord], notes: dict[tuple[str, str], str], left: list[Unattributed],
    shown: int = SHOWN,
) -> Group:
    table = Table(title=f"notification records ({len(records)})", title_justify="left")
    by_resolver = any(r.resolvers is not None for r in records)
    for col in ("line", "period", "hits", "days", "categories", "first seen (UTC)",
                "last seen (UTC)", "addresses", "feeds", "notified",
                *(("resolvers",) if by_resolver else ())):
        table.add_column(col, justify="right" if col in ("hits", "days") else "left")
    for r in records:
        table.add_row(
            _text(r.line), r.period, f"{r.hits:,}", str(r.days), _cats(r.categories),
            _when(r.first_seen), _when(r.last_seen), _addresses(r.addresses),
            _text(", ".join(r.feeds)) or "-", notes.get((r.line, r.period), "-"),
            *((_cats(r.resolvers or {}),) if by_resolver else ()),
        )
    return Group(table, render_unattributed(left, shown))


def render_unattributed(left: list[Unattributed], shown: int = SHOWN) -> Group:
    """The ``shown`` addresses with the most hits, and what the others add up to."""
    table = Table(title=f"unattributed addresses ({len(left):,})", title_justify="left")
    for col in ("address", "hits", "categories", "first seen (UTC)", "last seen (UTC)",
                "reason"):
        table.add_column(col, justify="right" if col == "hits" else "left")
    top = most_hits(left, shown)
    for u in top:
        table.add_row(u.address, f"{u.hits:,}", _cats(u.categories), _when(u.first_seen),
                      _when(u.last_seen), u.reason)
    if len(top) == len(left):
        return Group(table)
    rest = sum(u.hits for u in left) - sum(u.hits for u in top)
    return Group(table, f"… and {len(left) - len(top):,} more unattributed addresses with "
                        f"{rest:,} hits; --json for all")


def render_notify(res: NotifyResult) -> Group:
    title = (f"notify {res.period}: dry run, nothing sent or recorded" if res.dry_run
             else f"notify {res.period}")
    table = Table(title=title, title_justify="left")
    for col in ("line", "result", "hits", "days", "categories", "to"):
        table.add_column(col, justify="right" if col in ("hits", "days") else "left")
    for s in res.notified:
        r = s.record
        table.add_row(_text(r.line), "resent" if s.resent else f"sent ({s.channel})", f"{r.hits:,}",
                      str(r.days), _cats(r.categories), s.email)
    for r in res.would_notify:
        table.add_row(_text(r.line), "would notify", f"{r.hits:,}", str(r.days),
                      _cats(r.categories), "-")
    # Lines that need the operator (unconfirmed, not delivered) are all listed; those that
    # only say why nothing was sent, SHOWN of each kind.
    rows = [
        (res.already_notified, "already notified this month", SHOWN),
        (res.recovered, "found delivered, now recorded", None),
        ([u["line"] for u in res.unconfirmed], "unconfirmed: check the mail log", None),
        (res.below_threshold, f"below threshold (< {res.min_days} days)", SHOWN),
        (res.opted_out, "opted out", SHOWN),
        (res.no_contact, "no contact in subscribers", SHOWN),
        ([f["line"] for f in res.failed], "not delivered, will retry", None),
    ]
    more = []
    for lines, what, limit in rows:
        for line in lines[:limit]:
            table.add_row(_text(line), what, "", "", "", "")
        if limit is not None and len(lines) > limit:
            more.append(f"… and {len(lines) - limit:,} more lines: {what}; --json for all")
    verb = "would be attributed" if res.dry_run else "attributed"
    parts = [table, *more, f"{res.attributed_rows:,} hit rows {verb} to lines"]
    if res.leases_without_line_id:
        parts.append(f"{res.leases_without_line_id:,} leases had no line id field")
    parts.append(render_unattributed(res.unattributed))
    return Group(*parts)


def render_report(rep: dict) -> Group:
    table = Table(title=f"infected lines per category, {rep['period']}", title_justify="left")
    table.add_column("category")
    table.add_column("lines seen", justify="right")
    table.add_column("lines notified", justify="right")
    table.add_column("hits", justify="right")
    for c in rep["categories"]:
        table.add_row(c["category"], f"{c['lines_seen']:,}", f"{c['lines_notified']:,}",
                      f"{c['hits']:,}")
    table.add_section()
    table.add_row("all", f"{rep['lines_seen']:,}", f"{rep['lines_notified']:,}",
                  f"{rep['hits']:,}")
    parts = [table]
    if "resolvers" in rep:
        per = Table(title="lines seen per resolver", title_justify="left")
        per.add_column("resolver")
        per.add_column("lines seen", justify="right")
        per.add_column("hits", justify="right")
        for r in rep["resolvers"]:
            per.add_row(r["resolver"], f"{r['lines_seen']:,}", f"{r['hits']:,}")
        parts.append(per)
    return Group(*parts, f"{rep['unattributed_addresses']:,} addresses with hits had no line")
