"""Notification e-mails: rendered from templates, written to an outbox or sent through SMTP.

A message tells the subscriber that their line may be infected, that traffic to malware
command-and-control servers was blocked, and how to clean up. It names no domain, count or
time, and asks nobody to open a link or an attachment: the shipped templates have neither,
and an operator's own templates get only ``$line_id`` to fill in.

Templates are ``<language>.txt`` files: a ``Subject:`` line, a blank line, the body, UTF-8.
The shipped ones (``ja``, ``en``) live in the package; ``--templates DIR`` replaces them.

Delivery failures come in two kinds, which notify treats differently (see records.py):
``NotDelivered`` (the message certainly did not leave: the server refused it, or the
connection failed before it was handed over) and ``Uncertain`` (the connection broke while
the message was in flight: it may or may not have been accepted).
"""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import ssl
import stat
import string
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from importlib.resources import files
from pathlib import Path

from ccxdp.errors import CcxdpError

PASSWORD_ENV = "CCXDP_SMTP_PASSWORD"
PLACEHOLDERS = ("line_id",)


class MailError(CcxdpError):
    pass


class NotDelivered(MailError):
    """The message certainly did not leave."""


class Uncertain(MailError):
    """The message may or may not have been accepted."""


def shipped_templates() -> Path:
    return Path(str(files("ccxdp.notify") / "templates"))


class Templates:
    """The message templates of one folder, by language."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder is not None else shipped_templates()
        if not self.folder.is_dir():
            raise MailError(f"no template folder {self.folder}")
        self._parsed: dict[str, tuple[string.Template, string.Template]] = {}
        for path in sorted(self.folder.glob("*.txt")):
            self._parsed[path.stem] = self._parse(path)
        if not self._parsed:
            raise MailError(f"{self.folder} holds no templates (<language>.txt)")

    @property
    def languages(self) -> list[str]:
        return sorted(self._parsed)

    def _parse(self, path: Path) -> tuple[string.Template, string.Template]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MailError(f"{path}: not UTF-8") from None
        head, sep, body = text.partition("\n\n")
        if not sep or not head.startswith("Subject:") or "\n" in head:
            raise MailError(f"{path}:1: a template starts with one 'Subject:' line and a blank "
                            f"line: {head.splitlines()[0] if head else ''}")
        subject = string.Template(head[len("Subject:"):].strip())
        body_t = string.Template(body)
        for t in (subject, body_t):
            unknown = set(t.get_identifiers()) - set(PLACEHOLDERS)
            if unknown or not t.is_valid():
                raise MailError(
                    f"{path}: unknown placeholder {', '.join(sorted(unknown)) or '(invalid $)'}"
                    f"; templates may use only {', '.join('$' + p for p in PLACEHOLDERS)}"
                )
        return subject, body_t

    def render(self, language: str, line_id: str) -> tuple[str, str]:
        if language not in self._parsed:
            raise MailError(f"no template for language {language!r} in {self.folder}")
        subject, body = self._parsed[language]
        values = {"line_id": line_id}
        return subject.substitute(values), body.substitute(values)


def check_address(text: str) -> str:
    """A bare e-mail address (local@domain), as given; MailError otherwise."""
    name, addr = parseaddr(text)
    if (
        not addr or addr != text.strip() or name
        or not re.fullmatch(r"[^@\s<>(),;:\"]+@[^@\s<>(),;:\"]+\.?[^@\s<>(),;:\"]*", addr)
    ):
        raise MailError(f"not an e-mail address: {text}")
    return addr


def build_message(
    templates: Templates,
    *,
    line_id: str,
    language: str,
    to: str,
    sender: str,
    date: datetime | None = None,
) -> EmailMessage:
    """One notification: text/plain in UTF-8, Date, Message-ID, Content-Language, and
    Auto-Submitted (RFC 3834: automatic replies should not answer it)."""
    subject, body = templates.render(language, line_id)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(addr_spec=sender)
    msg["To"] = Address(addr_spec=to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = make_msgid("ccxdp", domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    ascii_only = body.isascii()
    msg.set_content(
        body, charset="us-ascii" if ascii_only else "utf-8",
        cte="7bit" if ascii_only else "base64",
    )
    msg["Content-Language"] = language  # after set_content, which resets Content-* headers
    return msg


# -- delivery -----------------------------------------------------------------------------


def outbox_name(line: str, period: str) -> str:
    """File name of a line's message: readable, safe, and unique per line id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", line)[:64]
    digest = hashlib.sha256(line.encode()).hexdigest()[:8]
    return f"{period}-{safe}-{digest}.eml"


class Outbox:
    """Messages as .eml files in a folder, each written whole (temporary file, fsync,
    rename), so a file in the outbox is always a complete message."""

    channel = "outbox"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def path(self, line: str, period: str) -> Path:
        return self.folder / outbox_name(line, period)

    def delivered(self, line: str, period: str, message_id: str) -> bool:
        """Whether the message with this Message-ID is in the outbox (a crash came between
        writing it and recording that)."""
        path = self.path(line, period)
        try:
            head = path.read_bytes().split(b"\r\n\r\n", 1)[0]
        except FileNotFoundError:
            return False
        return f"Message-ID: {message_id}".encode() in head

    def deliver(self, line: str, period: str, data: bytes) -> str:
        path = self.path(line, period)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            dfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise NotDelivered(f"cannot write {path}: {e.strerror}") from e
        return str(path)


TLS_MODES = ("none", "starttls", "implicit")  # implicit: TLS from the first byte (SMTPS)
DEFAULT_PORTS = {"none": 25, "starttls": 25, "implicit": 465}  # HOST without :PORT


class SmtpSender:
    """One SMTP session for a notify run: STARTTLS or implicit TLS, and AUTH when asked.

    The server's certificate is checked against the system's CAs or ``cafile``, and its
    name against HOST. A password never goes over a connection without TLS unless
    ``insecure_auth`` says so: AUTH PLAIN and LOGIN carry it in clear text."""

    channel = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: str = "none",
        user: str | None = None,
        password: str | None = None,
        cafile: Path | None = None,
        insecure_auth: bool = False,
        timeout: float = 60.0,
    ):
        if tls not in TLS_MODES:
            raise MailError(f"unknown SMTP TLS mode {tls!r}: one of {', '.join(TLS_MODES)}")
        if user and tls == "none" and not insecure_auth:
            raise MailError(
                f"refusing to send the SMTP password to {host}:{port} without TLS: use "
                f"--starttls or --smtps (or --smtp-insecure-auth, on a trusted network only)"
            )
        self.host, self.port, self.tls = host, port, tls
        self.user, self.password = user, password
        self.cafile, self.timeout = cafile, timeout
        self._smtp: smtplib.SMTP | None = None

    def _context(self) -> ssl.SSLContext:
        # create_default_context: CERT_REQUIRED and check_hostname against HOST.
        return ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)

    def open(self) -> None:
        where = f"{self.host}:{self.port}"
        try:
            if self.tls == "implicit":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        context=self._context())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as e:  # ssl.SSLError is an OSError
            raise NotDelivered(f"cannot connect to SMTP server {where}: {e}") from e
        try:
            smtp.ehlo()
            if self.tls == "starttls":
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.user:
                self._login(smtp)
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            smtp.close()
            raise NotDelivered(f"SMTP server {where}: {e}") from e
        self._smtp = smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        """AUTH with one mechanism, PLAIN where offered (the usual one over TLS), else what
        smtplib picks: a rejected password is not worth a second mechanism."""
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if "PLAIN" not in offered:
            smtp.login(self.user, self.password or "")
            return
        smtp.user, smtp.password = self.user, self.password or ""
        smtp.auth("PLAIN", smtp.auth_plain)

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                self._smtp.close()
            self._smtp = None

    def delivered(self, line: str, period: str, message_id: str) -> bool:
        return False  # an SMTP server cannot be asked

    def deliver(self, line: str, period: str, data: bytes, sender: str, to: str) -> str:
        assert self._smtp is not None
        try:
            self._smtp.sendmail(sender, [to], data)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
                smtplib.SMTPDataError) as e:
            # The server answered with an error: it did not take the message.
            raise NotDelivered(f"SMTP server refused the message to {to}: {e}") from e
        except (OSError, smtplib.SMTPException) as e:
            raise Uncertain(
                f"SMTP connection lost while sending to {to} (the server may have it): {e}"
            ) from e
        return f"{self.host}:{self.port}"


def parse_hostport(text: str, default_port: int | None = 25) -> tuple[str, int | None]:
    """HOST:PORT, [IPv6]:PORT, or HOST (``default_port``)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise MailError(f"not HOST:PORT: {text}")
    host = m.group(1) or m.group(3)
    given = m.group(2) or m.group(4)
    if given is None:
        return host, default_port
    port = int(given)
    if not 0 < port < 65536:
        raise MailError(f"port out of range: {text}")
    return host, port


def smtp_password(password_file: Path | None) -> str | None:
    """The password from the file, else from $CCXDP_SMTP_PASSWORD, else None."""
    if password_file is not None:
        try:
            return Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise MailError(f"cannot read {password_file}: {e.strerror}") from e
    return os.environ.get(PASSWORD_ENV)


def password_file_warning(password_file: Path) -> str | None:
    """A warning when others than the owner may read the password file, else None."""
    try:
        mode = Path(password_file).stat().st_mode
    except OSError:
        return None  # smtp_password says why it cannot be read
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"SMTP password file {password_file} can be read by others (mode "
                f"{stat.S_IMODE(mode):o}): chmod 600 it")
    return None
