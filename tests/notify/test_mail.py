"""Messages: the shipped templates, an operator's own, MIME and headers, the outbox."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy

import pytest

from ccxdp.notify import mail
from ccxdp.notify.mail import MailError, Outbox, Templates, build_message


def parse(data: bytes):
    return email.message_from_bytes(data, policy=policy.default)


def test_shipped_templates_say_what_they_must_and_nothing_more():
    t = Templates()
    assert t.languages == ["en", "ja"]
    for language in t.languages:
        subject, body = t.render(language, "LINE")
        text = subject + body
        assert "LINE" in body
        # No link, no number (count, time, date), no request to run something.
        assert not re.search(r"https?:|www\.|\d", text), language
        if language == "en":
            assert "infected" in text and "blocked" in text and "no links and no attachments" \
                in text
        else:
            assert "感染" in text and "遮断" in text and "リンクも添付ファイルもありません" in text


def test_message_headers_and_mime():
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    msg = build_message(Templates(), line_id="L-1", language="ja", to="tanaka@example.jp",
                        sender="noc@isp.example", date=when)
    data = msg.as_bytes()
    assert data.isascii()  # 7-bit clean: any SMTP server takes it
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    m = parse(data)
    assert m["Date"] == "Tue, 01 Dec 2026 09:30:00 +0000"
    assert re.fullmatch(r"<\d+\.\d+\.\d+\.ccxdp@isp\.example>", m["Message-ID"])
    assert m["Content-Type"] == 'text/plain; charset="utf-8"'
    assert m["Content-Transfer-Encoding"] == "base64"
    assert m["Content-Language"] == "ja"
    assert m["Auto-Submitted"] == "auto-generated"
    assert m["MIME-Version"] == "1.0"
    assert str(m["Subject"]).startswith("【重要】")
    assert "（L-1）" in m.get_content()
    en = parse(build_message(Templates(), line_id="L-2", language="en", to="a@example.net",
                             sender="noc@isp.example").as_bytes())
    assert en["Content-Type"] == 'text/plain; charset="us-ascii"'
    assert en["Content-Transfer-Encoding"] == "7bit"
    assert en["Message-ID"] != m["Message-ID"]


def test_operator_templates(tmp_path):
    (tmp_path / "ko.txt").write_text("Subject: 알림 $line_id\n\n회선 $line_id 안내.\n")
    t = Templates(tmp_path)
    assert t.languages == ["ko"]
    m = parse(build_message(t, line_id="L-9", language="ko", to="a@example.net",
                            sender="noc@isp.example").as_bytes())
    assert str(m["Subject"]) == "알림 L-9"
    assert m.get_content().replace("\r\n", "\n") == "회선 L-9 안내.\n"  # canonical CRLF
    with pytest.raises(MailError, match="no template for language 'ja'"):
        t.render("ja", "L-1")


@pytest.mark.parametrize(
    "text, message",
    [
        ("Subject: x $domain\n\nbody\n", "unknown placeholder domain"),
        ("Subject: x\n\n$hits blocked queries\n", "unknown placeholder hits"),
        ("no subject line\n\nbody\n", "a template starts with one 'Subject:' line"),
        ("Subject: x\nbody right away\n", "a template starts with one 'Subject:' line"),
    ],
    ids=["subject-placeholder", "body-placeholder", "no-subject", "no-blank-line"],
)
def test_bad_operator_templates(tmp_path, text, message):
    (tmp_path / "en.txt").write_text(text)
    with pytest.raises(MailError, match=re.escape(message)):
        Templates(tmp_path)


def test_template_folder_must_hold_templates(tmp_path):
    with pytest.raises(MailError, match="holds no templates"):
        Templates(tmp_path)
    with pytest.raises(MailError, match="no template folder"):
        Templates(tmp_path / "nope")


def test_outbox_writes_whole_files(tmp_path):
    box = Outbox(tmp_path / "out")
    box.open()
    msg = build_message(Templates(), line_id="olt1/0/3:100", language="en",
                        to="a@example.net", sender="noc@isp.example")
    where = box.deliver("olt1/0/3:100", "2026-11", msg.as_bytes())
    files = list((tmp_path / "out").iterdir())
    assert [str(f) for f in files] == [where]
    assert re.fullmatch(r"2026-11-olt1_0_3_100-[0-9a-f]{8}\.eml", files[0].name)
    assert files[0].read_bytes() == msg.as_bytes()
    assert box.delivered("olt1/0/3:100", "2026-11", msg["Message-ID"])
    assert not box.delivered("olt1/0/3:100", "2026-11", "<other@isp.example>")
    assert not box.delivered("L-2", "2026-11", msg["Message-ID"])
    # Ids that sanitize alike still get files of their own.
    assert mail.outbox_name("a/b", "2026-11") != mail.outbox_name("a:b", "2026-11")


def test_outbox_failure_is_certain(tmp_path):
    (tmp_path / "file").write_text("")
    box = Outbox(tmp_path / "file")
    with pytest.raises(mail.NotDelivered, match="cannot write"):
        box.deliver("L-1", "2026-11", b"x")


@pytest.mark.parametrize(
    "text, expected",
    [("198.18.0.25:587", ("198.18.0.25", 587)), ("mx.isp.example", ("mx.isp.example", 25)),
     ("[fd00::25]:2525", ("fd00::25", 2525)), ("[fd00::25]", ("fd00::25", 25))],
)
def test_hostport(text, expected):
    assert mail.parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["fd00::25:25", "mx:0", "mx:x", ""])
def test_bad_hostport(text):
    with pytest.raises(MailError):
        mail.parse_hostport(text)


@pytest.mark.parametrize(
    "text, ok",
    [("a@example.net", True), ("tanaka.t+isp@example.jp", True), ("a", False),
     ("a@b@c", False), ("Tanaka <a@example.net>", False), ("a @example.net", False),
     ("", False)],
)
def test_check_address(text, ok):
    if ok:
        assert mail.check_address(text) == text
    else:
        with pytest.raises(MailError):
            mail.check_address(text)


def test_password_sources(tmp_path, monkeypatch):
    monkeypatch.delenv(mail.PASSWORD_ENV, raising=False)
    assert mail.smtp_password(None) is None
    monkeypatch.setenv(mail.PASSWORD_ENV, "from-env")
    assert mail.smtp_password(None) == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    assert mail.smtp_password(tmp_path / "pw") == "from-file"
    with pytest.raises(MailError, match="cannot read"):
        mail.smtp_password(tmp_path / "nope")


def test_hostport_without_port_takes_the_default():
    assert mail.parse_hostport("mx.isp.example", default_port=None) == ("mx.isp.example", None)
    assert mail.parse_hostport("[fd00::25]", default_port=465) == ("fd00::25", 465)


def test_no_password_without_tls():
    with pytest.raises(MailError, match="^refusing to send the SMTP password to mx:25 "
                                        "without TLS"):
        mail.SmtpSender("mx", 25, user="u", password="p")
    for tls in ("starttls", "implicit"):
        assert mail.SmtpSender("mx", 25, tls=tls, user="u", password="p").tls == tls
    assert mail.SmtpSender("mx", 25, user="u", password="p", insecure_auth=True).tls == "none"


def test_password_file_readable_by_others_is_named(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    assert mail.password_file_warning(pw) is None
    for mode in (0o640, 0o604):
        pw.chmod(mode)
        assert mail.password_file_warning(pw) == (
            f"SMTP password file {pw} can be read by others (mode {mode:o}): chmod 600 it")
