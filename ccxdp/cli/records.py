"""notify / records / report: from the hits store to notification records and e-mails.

These commands read and write the store (``hits.db`` in the state folder) only: they
never touch the kernel, so they need no loaded program and no root beyond the right to read
the state folder.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Group
from rich.text import Text

from ccxdp.cli.app import pass_app, store_option
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import render_feed_copies
from ccxdp.cli.types import INPUT, sessions_options
from ccxdp.hits.store import StoreError, period_bounds
from ccxdp.notify import attribution, mail
from ccxdp.notify import records as rec
from ccxdp.ops.daemon_config import MAX_RETENTION_DAYS
from ccxdp.utc import utc_text


class PeriodType(click.ParamType):
    name = "YYYY-MM"

    def convert(self, value, param, ctx):
        try:
            period_bounds(value)
        except StoreError as e:
            self.fail(str(e), param, ctx)
        return value


class HostPortType(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value, param, ctx):
        try:
            return mail.parse_hostport(value, default_port=None)  # None: by the TLS mode
        except mail.MailError as e:
            self.fail(str(e), param, ctx)


class EmailType(click.ParamType):
    name = "address"

    def convert(self, value, param, ctx):
        try:
            return mail.check_address(value)
        except mail.MailError as e:
            self.fail(str(e), param, ctx)


PERIOD = PeriodType()


@click.command()
@click.option("--period", type=PERIOD, required=True, help="The calendar month (UTC), YYYY-MM.")
@sessions_options
@click.option("--subscribers", type=INPUT, help="Contacts CSV: line_id,email,language.")
@click.option("--opt-out", type=INPUT, help="Line ids never to notify, one a line.")
@click.option("--min-days", type=click.IntRange(min=1), default=rec.DEFAULT_MIN_DAYS,
              show_default=True, help="Notify only lines with hits on this many days.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write each message as an .eml file to this folder.")
@click.option("--smtp", type=HostPortType(), help="Send through this SMTP server.")
@click.option("--starttls", is_flag=True, help="Use STARTTLS with --smtp (certificate checked).")
@click.option("--smtps", is_flag=True,
              help="Use implicit TLS (SMTPS, port 465 by default) with --smtp (certificate "
                   "checked).")
@click.option("--smtp-ca", type=INPUT,
              help="CA certificate(s) to check the server's with (default: the system's).")
@click.option("--smtp-user", help=f"Log in as this user (password: ${mail.PASSWORD_ENV}).")
@click.option("--smtp-password-file", type=INPUT, help="Read the SMTP password from this file.")
@click.option("--smtp-insecure-auth", is_flag=True,
              help="Allow --smtp-user without TLS: the password goes in clear text.")
@click.option("--from", "sender", type=EmailType(), help="The From address of the messages.")
@click.option("--templates", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of <language>.txt templates instead of the shipped ja and en.")
@click.option("--resend-unconfirmed", is_flag=True,
              help="Resend messages a crashed run left unconfirmed (same Message-ID).")
@store_option
@json_option
@pass_app
def notify(app, period, sessions, leases, line_id_from, subscribers, opt_out, min_days, out,
           smtp, starttls, smtps, smtp_ca, smtp_user, smtp_password_file,
           smtp_insecure_auth, sender, templates, resend_unconfirmed, store_spec, as_json):
    """Attribute a month's hits to lines and notify each infected line, at most once a month.

    A line is notified when its hits fall on at least --min-days days of the month, it is
    not in --opt-out nor opted out in the store ('exempt line add'), it has a contact in
    --subscribers, and it was not notified for that month before. Without --out or --smtp
    this is a dry run: it shows what it would do and writes nothing. Every input file is
    checked before anything is written.

    --smtp-user logs in only over TLS (--starttls or --smtps, the server's certificate
    checked against the system's CAs or --smtp-ca): a password never goes in clear text
    unless --smtp-insecure-auth says so.

    Against the fleet's PostgreSQL --store, one notify covers every resolver: a line's days
    and hits are counted across all of them, and the database's unique claim makes two
    runs on two hosts at once send one message per line.

    \b
    Examples:
      ccxdp notify --period 2026-11 --sessions radius.csv   # a dry run
      ccxdp notify --period 2026-11 --leases dhcpd.leases --opt-out opt-out.txt
      ccxdp notify --period 2026-11 --sessions s.csv --subscribers c.csv --from a@x.example --out o
      ccxdp notify --period 2026-11 --subscribers c.csv --from a@x.example --smtp mx:587 --starttls
      ccxdp notify --period 2026-11 --subscribers c.csv --from a@x.example --smtp mx --smtps
    """
    if out and smtp:
        raise click.UsageError("give --out or --smtp, not both")
    delivering = bool(out or smtp)
    if delivering and not sender:
        raise click.UsageError("give --from, the sender of the messages")
    if delivering and not subscribers:
        raise click.UsageError("give --subscribers: the messages need contact addresses")
    if (starttls or smtps or smtp_ca or smtp_user or smtp_password_file
            or smtp_insecure_auth) and not smtp:
        raise click.UsageError("--starttls, --smtps and the --smtp-* options go with --smtp")
    if starttls and smtps:
        raise click.UsageError("give --starttls or --smtps, not both")
    tls = "implicit" if smtps else "starttls" if starttls else "none"
    if smtp_user and tls == "none" and not smtp_insecure_auth:
        raise click.UsageError(
            "--smtp-user without TLS would send the password in clear text: add --starttls "
            "or --smtps (or --smtp-insecure-auth, on a trusted network only)")
    tmpl = mail.Templates(templates)
    # Read and check every input before the store is touched.
    kinds = {"dhcpd": [], "kea": []}
    for p in leases:
        kinds[attribution.lease_kind(p)].append(p)
    found = attribution.load(sessions, kinds["dhcpd"], kinds["kea"], line_id_from)
    subs = rec.read_subscribers(subscribers, tmpl.languages) if subscribers else {}
    opted = rec.read_opt_out(opt_out) if opt_out else set()
    deliverer = None
    if out:
        deliverer = mail.Outbox(out)
    elif smtp:
        password = mail.smtp_password(smtp_password_file)
        if smtp_user and smtp_password_file is not None:
            warning = mail.password_file_warning(smtp_password_file)
            if warning:
                click.echo(f"warning: {warning}", err=True)  # one line, never wrapped
        if smtp_user and password is None:
            raise click.UsageError(
                f"--smtp-user needs a password: set {mail.PASSWORD_ENV} or give "
                f"--smtp-password-file"
            )
        host, port = smtp
        deliverer = mail.SmtpSender(host, port or mail.DEFAULT_PORTS[tls], tls=tls,
                                    user=smtp_user, password=password, cafile=smtp_ca,
                                    insecure_auth=smtp_insecure_auth)
    where = app.store(store_spec)
    store = where.open() if delivering else where.open_reader()
    click.get_current_context().call_on_close(store.close)
    # Lines opted out in the store ('exempt line add') are never notified either.
    opted |= set(store.opted_out())
    try:
        result = rec.notify(
            store, period, found, subscribers=subs, opt_out=opted, min_days=min_days,
            deliverer=deliverer, templates=tmpl, sender=sender,
            resend_unconfirmed=resend_unconfirmed,
        )
    except rec.NotifyError as e:
        partial = e.result
        emit(as_json, partial.to_json(), lambda: rec.render_notify(partial))
        raise click.ClickException(str(e)) from e
    emit(as_json, result.to_json(), lambda: rec.render_notify(result))
    if result.failed:
        raise click.ClickException(
            f"{len(result.failed)} message(s) not delivered (they will be tried again): "
            + "; ".join(f"{f['line']}: {f['error']}" for f in result.failed)
        )


@click.command()
@click.option("--period", type=PERIOD, help="The calendar month (UTC), YYYY-MM; default: "
              "every month in the store.")
@click.option("--line", help="Only this line.")
@click.option("--top", type=click.IntRange(min=1),
              help="Only the N lines, and the N unattributed addresses, with the most hits.")
@click.option("--by-resolver", is_flag=True,
              help="Each line's hits per resolver (the fleet store only).")
@store_option
@json_option
@pass_app
def records(app, period, line, top, by_resolver, store_spec, as_json):
    """Show notification records: per line and month, hits per category, days, addresses,
    feeds, and whether the line was notified.

    Records hold what 'ccxdp notify' has attributed to lines; hits it could not attribute
    are listed per address. Operators see categories and counts; subscribers never do.
    The tables show the unattributed addresses with the most hits (10, or --top) and a
    record's addresses up to 3 (else how many): --json has them all.

    \b
    Examples:
      ccxdp records --period 2026-11
      ccxdp records --line L-1001 --json
      ccxdp records --period 2026-11 --top 20
      ccxdp records --period 2026-11 --store postgresql://ccxdp@db/ccxdp --by-resolver
    """
    where = app.store(store_spec)
    if by_resolver and not where.fleet:
        raise click.UsageError("--by-resolver needs the fleet store (a PostgreSQL --store)")
    store = where.open_reader()
    click.get_current_context().call_on_close(store.close)
    periods = [period] if period else store.periods()
    found, left = [], []
    for p in periods:
        found += rec.build_records(store, p, line, by_resolver=by_resolver)
        if line is None:
            left += [(u, p) for u in rec.unattributed(store, p)]
    if top:
        found = sorted(found, key=lambda r: (-r.hits, r.line, r.period))[:top]
        ranked = {id(u): i for i, u in enumerate(rec.most_hits([u for u, _ in left], top))}
        left = sorted(((u, p) for u, p in left if id(u) in ranked),
                      key=lambda up: ranked[id(up[0])])
    left_json = [{**u.to_json(), "period": p} for u, p in left]
    notes = {}
    sent = {}
    for n in store.notifications(period=period, line=line):
        sent[(n.line, n.period)] = {"state": n.state, "channel": n.channel,
                                    "claimed_at": n.claimed_at, "sent_at": n.sent_at,
                                    "message_id": n.message_id}
        notes[(n.line, n.period)] = (
            f"{n.sent_at} ({n.channel})" if n.state == "sent" else "pending (unconfirmed)"
        )
    named = {f for r in found for f in r.feeds}
    copies = {k: v for k, v in app.feed_copies().items() if k in named}
    data = {
        "records": [{**r.to_json(), "notification": sent.get((r.line, r.period))}
                    for r in found],
        "unattributed": left_json,
        "feed_copies": copies,
    }

    def render():
        shown = rec.render_records(found, notes, [u for u, _ in left], top or rec.SHOWN)
        return Group(shown, render_feed_copies(copies)) if copies else shown

    emit(as_json, data, render)


@click.command()
@click.option("--period", type=PERIOD, required=True, help="The calendar month (UTC), YYYY-MM.")
@click.option("--by-resolver", is_flag=True,
              help="Also lines seen and hits per resolver (the fleet store only).")
@store_option
@json_option
@pass_app
def report(app, period, by_resolver, store_spec, as_json):
    """Anonymous totals for a month: infected lines per category, fit to share.

    Lines with attributed hits and lines notified, per category; no line id, no address.

    \b
    Examples:
      ccxdp report --period 2026-11
      ccxdp report --period 2026-11 --json
    """
    where = app.store(store_spec)
    if by_resolver and not where.fleet:
        raise click.UsageError("--by-resolver needs the fleet store (a PostgreSQL --store)")
    store = where.open_reader()
    click.get_current_context().call_on_close(store.close)
    data = rec.report(store, period, by_resolver=by_resolver)
    emit(as_json, data, lambda: rec.render_report(data))


def _finite(param, value: float) -> float:
    if not math.isfinite(value):  # FloatRange lets nan through: it compares false
        raise click.BadParameter(f"{value} is not a number of days", param=param)
    return value


@click.command()
@click.option("--older-than", "days", required=True, metavar="DAYS",
              type=click.FloatRange(min=0, min_open=True, max=MAX_RETENTION_DAYS),
              callback=lambda ctx, param, v: _finite(param, v),
              help="Expire rows whose hour ended more than DAYS days ago.")
@click.option("--unattributed", is_flag=True,
              help="Also expire rows no line was found for (they are gone for good).")
@store_option
@json_option
@pass_app
def expire(app, days, unattributed, store_spec, as_json):
    """Delete old per-address hit rows from the store (privacy: addresses kept no longer
    than needed).

    Rows 'ccxdp notify' attributed to a line are folded into per-line totals first, so
    records, reports and the once-a-month rule are unchanged; their addresses are gone. Rows
    no line was found for stay (a later notify with more sessions may still attribute them)
    unless --unattributed. The daemon does this after each collection when
    collect.retention_days is set.

    \b
    Examples:
      ccxdp expire --older-than 90
      ccxdp expire --older-than 90 --unattributed --json
    """
    before = datetime.now(UTC) - timedelta(days=days)
    with app.store(store_spec).open_reader() as store:
        rows = store.expire(before, attributed_only=not unattributed)
    data = {"rows": rows, "before": utc_text(before),
            "unattributed": unattributed}
    kept = "" if unattributed else "; rows no line was found for are kept"
    emit(as_json, data, lambda: Text(
        f"expired {rows} per-address rows whose hour ended before {data['before']}{kept}"))


def register(group: click.Group) -> None:
    for command in (notify, records, report, expire):
        group.add_command(command)
