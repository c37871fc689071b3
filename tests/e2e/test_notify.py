"""``ccxdp notify --smtp`` against a real SMTP server (aiosmtpd), in a network namespace the
test makes: the server listens on 198.18.99.1 on that namespace's loopback, and notify runs
inside the same namespace (``ip netns exec``), so no packet can leave it.

Checked: the messages the server received (count, envelope, parsed content), STARTTLS and
implicit TLS (SMTPS) with a certificate made here by openssl and checked by notify, AUTH
refused without TLS unless asked for, a second run that sends nothing,
a refusal that is retried, and a run killed with SIGKILL while its message is in flight:
the next runs never send that line again unless told to, and then send the same message.
"""

from __future__ import annotations

import email
import json
import os
import signal
import subprocess
import sys
import time
from email import policy
from pathlib import Path

import pytest

from tests.harness.https import certificates
from tests.notify.test_records import (
    CCXDP,
    L1,
    L3,
    SENDER,
    assert_clean_message,
    notify_args,
)
from tests.notify.test_records import world as world  # noqa: F401 (a fixture)

pytestmark = pytest.mark.root

HOST = "198.18.99.1"
PORT = 2525
USER, PASSWORD = "ccxdp", "s3cret pass"

SERVER = r"""
import asyncio, json, os, signal, ssl, sys
from pathlib import Path
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

out, host, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cert, key, hang_on, refuse = sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7]
implicit = sys.argv[8] == "implicit"  # TLS from the first byte (SMTPS), else STARTTLS
user, password = os.environ["SMTP_USER"].encode(), os.environ["SMTP_PASSWORD"].encode()


def over_tls(server, session):
    # aiosmtpd sets session.ssl after STARTTLS only; implicit TLS shows on the transport.
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == user and auth_data.password == password
    with open(out / "auth.log", "a") as log:  # every AUTH the server saw, and over what
        log.write(json.dumps({"mechanism": mechanism, "tls": over_tls(server, session),
                              "ok": ok}) + "\n")
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535


class Handler:
    count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        n = Handler.count
        record = {"from": envelope.mail_from, "to": envelope.rcpt_tos,
                  "data": envelope.original_content.decode("ascii"),
                  "tls": over_tls(server, session), "authenticated": session.authenticated}
        tmp = out / f".{n:03d}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(out / f"{n:03d}.json")
        if n == hang_on:  # hold the reply to this message's DATA: it is in flight
            (out / "hanging").touch()
            await asyncio.sleep(3600)
        return "250 2.0.0 queued"


context = None
if cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
if implicit:
    controller = Controller(
        Handler(), hostname=host, port=port, ssl_context=context,
        authenticator=authenticator, auth_required=True, auth_require_tls=False,
    )
else:
    controller = Controller(
        Handler(), hostname=host, port=port, tls_context=context,
        require_starttls=context is not None, authenticator=authenticator,
        auth_required=True, auth_require_tls=context is not None,
    )
controller.start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
controller.stop()
"""


@pytest.fixture
def netns(bare_netns):
    """The namespace, its loopback up, with the server's address on it."""
    for args in (["link", "set", "lo", "up"], ["addr", "add", f"{HOST}/32", "dev", "lo"]):
        subprocess.run(["ip", "-n", bare_netns, *args], check=True)
    return bare_netns


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the server's address."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=IP:{HOST}"],
        check=True, capture_output=True,
    )
    return cert, key


class Server:
    def __init__(self, netns: str, folder: Path, cert=None, key=None, hang_on=0, refuse="",
                 tls="starttls", port=PORT):
        self.folder = folder
        folder.mkdir()
        script = folder.parent / "smtp_server.py"
        script.write_text(SERVER)
        env = {**os.environ, "SMTP_USER": USER, "SMTP_PASSWORD": PASSWORD}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(script), str(folder), HOST,
             str(port), str(cert or ""), str(key or ""), str(hang_on), refuse, tls],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise AssertionError(f"the SMTP server did not start: {line!r}")

    def received(self) -> list[dict]:
        out = []
        for path in sorted(self.folder.glob("*.json")):
            record = json.loads(path.read_text())
            record["message"] = email.message_from_bytes(
                record["data"].encode(), policy=policy.default)
            out.append(record)
        return out

    def auths(self) -> list[dict]:
        log = self.folder / "auth.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() \
            else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def servers(netns):
    started: list[Server] = []

    def start(folder: Path, **kwargs) -> Server:
        server = Server(netns, folder, **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def in_netns(netns: str, state: Path, *args: str, check=True, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCXDP_")}
    env.update(env_extra or {})
    cp = subprocess.run(
        ["ip", "netns", "exec", netns, str(CCXDP), "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )
    if check and cp.returncode != 0:
        raise AssertionError(f"notify exited {cp.returncode}: {cp.stderr}")
    return cp


def smtp_args(world, cert, *extra):
    return notify_args(world, "--from", SENDER, "--smtp", f"{HOST}:{PORT}", "--starttls",
                       "--smtp-ca", str(cert), "--smtp-user", USER, "--json", *extra)


PW = {"CCXDP_SMTP_PASSWORD": PASSWORD}


def test_smtp_starttls_auth(world, netns, servers, certificate):  # noqa: F811
    cert, key = certificate
    server = servers(world["dir"] / "mail", cert=cert, key=key)
    data = json.loads(in_netns(netns, world["state"], *smtp_args(world, cert),
                               env_extra=PW).stdout)
    assert [{k: v for k, v in s.items() if k in L1} for s in data["notified"]] == [L1, L3]
    assert {s["channel"] for s in data["notified"]} == {"smtp"}
    got = server.received()
    assert [(r["from"], r["to"], r["tls"], r["authenticated"]) for r in got] == [
        (SENDER, ["tanaka@example.jp"], True, True),
        (SENDER, ["smith@example.net"], True, True),
    ]
    assert_clean_message(got[0]["message"], "L-1", "tanaka@example.jp", "ja")
    assert_clean_message(got[1]["message"], "L-3", "smith@example.net", "en")
    assert [r["message"]["Message-ID"] for r in got] == [
        s["message_id"] for s in data["notified"]]

    again = json.loads(in_netns(netns, world["state"], *smtp_args(world, cert),
                                env_extra=PW).stdout)
    assert again["notified"] == [] and again["already_notified"] == ["L-1", "L-3"]
    assert len(server.received()) == 2


def test_smtp_certificate_and_password_are_checked(world, netns, servers, certificate,
                                                   tmp_path):  # noqa: F811
    cert, key = certificate
    server = servers(world["dir"] / "mail", cert=cert, key=key)
    # Without the CA the self-signed certificate is refused: nothing sent, nothing claimed.
    args = [a for a in smtp_args(world, cert) if a not in ("--smtp-ca", str(cert))]
    cp = in_netns(netns, world["state"], *args, check=False, env_extra=PW)
    assert cp.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in cp.stderr
    cp = in_netns(netns, world["state"], *smtp_args(world, cert), check=False,
                  env_extra={"CCXDP_SMTP_PASSWORD": "wrong"})
    assert cp.returncode == 1 and "Authentication" in cp.stderr
    cp = in_netns(netns, world["state"], *smtp_args(world, cert), check=False)
    assert cp.returncode == 2 and "CCXDP_SMTP_PASSWORD" in cp.stderr
    assert server.received() == []
    # The password from a file works as well as from the environment; a file others may
    # read is used, with a warning.
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o640)
    cp = in_netns(netns, world["state"], *smtp_args(world, cert, "--smtp-password-file",
                                                    str(pw)))
    assert [s["line"] for s in json.loads(cp.stdout)["notified"]] == ["L-1", "L-3"]
    assert cp.stderr == (f"warning: SMTP password file {pw} can be read by others (mode 640): "
                         f"chmod 600 it\n")
    pw.chmod(0o600)
    cp = in_netns(netns, world["state"], *smtp_args(world, cert, "--smtp-password-file",
                                                    str(pw)))
    assert json.loads(cp.stdout)["already_notified"] == ["L-1", "L-3"]
    assert cp.stderr == ""
    # The wrong password, then the good one (the last run had nothing to send), over TLS.
    assert [(a["tls"], a["ok"]) for a in server.auths()] == [(True, False), (True, True)]


def test_smtp_auth_needs_tls(world, netns, servers):  # noqa: F811
    """A server that offers AUTH without TLS: notify does not send the password there
    unless --smtp-insecure-auth is given; then it does, and says nothing more."""
    server = servers(world["dir"] / "mail", tls="none")
    args = notify_args(world, "--from", SENDER, "--smtp", f"{HOST}:{PORT}",
                       "--smtp-user", USER, "--json")
    cp = in_netns(netns, world["state"], *args, check=False, env_extra=PW)
    assert cp.returncode == 2 and cp.stdout == ""
    assert cp.stderr.splitlines()[-1] == (
        "Error: --smtp-user without TLS would send the password in clear text: add "
        "--starttls or --smtps (or --smtp-insecure-auth, on a trusted network only)")
    assert server.auths() == [] and server.received() == []
    data = json.loads(in_netns(netns, world["state"], *args, "--smtp-insecure-auth",
                               env_extra=PW).stdout)
    assert [s["line"] for s in data["notified"]] == ["L-1", "L-3"]
    assert server.auths() == [{"mechanism": "PLAIN", "tls": False, "ok": True}]
    assert [(r["tls"], r["authenticated"]) for r in server.received()] == [(False, True)] * 2


def test_smtps_implicit_tls(world, netns, servers, certificate):  # noqa: F811
    """--smtps: TLS from the first byte, on port 465 when none is given, the certificate
    checked (refused without the CA that signed it: nothing sent, nothing claimed)."""
    cert, key = certificate
    server = servers(world["dir"] / "mail", cert=cert, key=key, tls="implicit", port=465)
    args = notify_args(world, "--from", SENDER, "--smtp", HOST, "--smtps", "--smtp-user",
                       USER, "--json")
    cp = in_netns(netns, world["state"], *args, check=False, env_extra=PW)
    assert cp.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in cp.stderr
    assert server.auths() == [] and server.received() == []
    data = json.loads(in_netns(netns, world["state"], *args, "--smtp-ca", str(cert),
                               env_extra=PW).stdout)
    assert [(s["line"], s["channel"]) for s in data["notified"]] == [("L-1", "smtp"),
                                                                      ("L-3", "smtp")]
    assert server.auths() == [{"mechanism": "PLAIN", "tls": True, "ok": True}]
    got = server.received()
    assert [(r["to"], r["tls"], r["authenticated"]) for r in got] == [
        (["tanaka@example.jp"], True, True), (["smith@example.net"], True, True)]
    assert_clean_message(got[0]["message"], "L-1", "tanaka@example.jp", "ja")


def test_smtp_refusal_is_retried(world, netns, servers):  # noqa: F811
    """A recipient the server refuses: certainly not sent, so the claim is dropped and the
    next run sends it. Plain SMTP (no TLS) here: the server allows AUTH without it, and
    --smtp-insecure-auth lets notify use it."""
    first = servers(world["dir"] / "mail1", refuse="tanaka@example.jp", tls="none")
    args = notify_args(world, "--from", SENDER, "--smtp", f"{HOST}:{PORT}",
                       "--smtp-user", USER, "--smtp-insecure-auth", "--json")
    cp = in_netns(netns, world["state"], *args, check=False, env_extra=PW)
    assert cp.returncode == 1
    assert "1 message(s) not delivered" in cp.stderr and "550" in cp.stderr
    data = json.loads(cp.stdout)
    assert [s["line"] for s in data["notified"]] == ["L-3"]
    assert [f["line"] for f in data["failed"]] == ["L-1"]
    assert [r["to"] for r in first.received()] == [["smith@example.net"]]
    first.stop()
    second = servers(world["dir"] / "mail2", tls="none")
    data = json.loads(in_netns(netns, world["state"], *args, env_extra=PW).stdout)
    assert [s["line"] for s in data["notified"]] == ["L-1"]
    assert data["already_notified"] == ["L-3"]
    assert [r["to"] for r in second.received()] == [["tanaka@example.jp"]]


def test_killed_mid_send_never_sends_twice(world, netns, servers, certificate):  # noqa: F811
    """The server takes L-1's message and holds its reply; notify is killed with SIGKILL
    then, between sending and recording. The next run sends L-3 only (L-1 is unconfirmed);
    a run after that sends nothing; --resend-unconfirmed sends L-1's very message again."""
    cert, key = certificate
    server = servers(world["dir"] / "mail", cert=cert, key=key, hang_on=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCXDP_")}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, str(CCXDP), "--state-dir", str(world["state"]),
         *smtp_args(world, cert)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**env, **PW},
    )
    try:
        deadline = time.monotonic() + 60
        while not (server.folder / "hanging").exists():
            assert proc.poll() is None, "notify ended before its message was in flight"
            assert time.monotonic() < deadline, "the message never reached the server"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # ip netns exec execs ccxdp: this pid is notify's
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (first,) = server.received()
    assert first["to"] == ["tanaka@example.jp"]

    data = json.loads(in_netns(netns, world["state"], *smtp_args(world, cert),
                               env_extra=PW).stdout)
    assert [s["line"] for s in data["notified"]] == ["L-3"]
    assert [(u["line"], u["message_id"]) for u in data["unconfirmed"]] == [
        ("L-1", first["message"]["Message-ID"])]
    data = json.loads(in_netns(netns, world["state"], *smtp_args(world, cert),
                               env_extra=PW).stdout)
    assert data["notified"] == [] and data["already_notified"] == ["L-3"]
    assert [u["line"] for u in data["unconfirmed"]] == ["L-1"]
    assert [r["to"] for r in server.received()] == [["tanaka@example.jp"],
                                                    ["smith@example.net"]]

    data = json.loads(in_netns(netns, world["state"], *smtp_args(
        world, cert, "--resend-unconfirmed"), env_extra=PW).stdout)
    assert [(s["line"], s["resent"]) for s in data["notified"]] == [("L-1", True)]
    got = server.received()
    assert len(got) == 3
    assert got[2]["data"] == first["data"]  # the very same message, Message-ID and Date
    data = json.loads(in_netns(netns, world["state"], *smtp_args(
        world, cert, "--resend-unconfirmed"), env_extra=PW).stdout)
    assert data["notified"] == [] and data["already_notified"] == ["L-1", "L-3"]
    assert len(server.received()) == 3


def test_smtp_certificate_names_the_server(world, netns, servers, tmp_path):  # noqa: F811
    """A certificate from the CA notify is given, but for another address (127.0.0.1, not
    the server's): refused, by STARTTLS and by implicit TLS alike; nothing sent."""
    certs = certificates(tmp_path / "pki")
    for tls, port in (("starttls", PORT), ("implicit", 465)):
        server = servers(world["dir"] / f"mail-{tls}", cert=certs.cert, key=certs.key,
                         tls=tls, port=port)
        args = notify_args(world, "--from", SENDER, "--smtp", f"{HOST}:{port}",
                           "--starttls" if tls == "starttls" else "--smtps", "--smtp-ca",
                           str(certs.ca), "--smtp-user", USER, "--json")
        cp = in_netns(netns, world["state"], *args, check=False, env_extra=PW)
        assert cp.returncode == 1, cp.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in cp.stderr
        assert f"IP address mismatch, certificate is not valid for '{HOST}'" in cp.stderr
        assert server.auths() == [] and server.received() == []
        server.stop()
