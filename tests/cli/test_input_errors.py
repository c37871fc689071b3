"""One line, never a traceback, through the real CLI: a full disk, a read-only state folder,
a missing or unwritable folder, a symlink loop, a FIFO, a deleted file; values from a feed
escaped on the terminal and in JSON; and the guard rails of what is listed by hand.

The full disk and the read-only folder are small tmpfs mounts each test makes under its own
temporary folder and unmounts, also when it fails.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import dns.rcode
import pytest

from ccxdp.datapath.loader import Datapath
from ccxdp.errors import DatapathError
from tests.cli.test_policy import XDP_DROP, XDP_PASS, Policy
from tests.conftest import Ccxdp, make_pin_dir, one_line_error, remove_pins

pytestmark = pytest.mark.root

OSC = "\x1b]0;owned\x07"  # an escape sequence that retitles the operator's terminal


@contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0
    return filler


def set_read_only(disk: Path, read_only: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(disk)],
                   check=True)


@pytest.fixture
def disk(tmp_path):
    """A 16 MiB tmpfs of the test's own."""
    with tmpfs(tmp_path / "disk", "16m") as where:
        yield where


@pytest.fixture
def on_disk(disk, bare_netns):
    """The CLI with its state folder on `disk`, attached to lo of an empty namespace; the
    teardown detaches it (the disk writable again) and removes its pins."""
    cli = Ccxdp(make_pin_dir(), disk / "state")
    policy = Policy(cli, bare_netns)
    try:
        policy.attach()
        yield policy
    finally:
        set_read_only(disk, False)
        (disk / "filler").unlink(missing_ok=True)
        try:
            with Datapath(cli.pin_dir, cli.state_dir) as dp:
                for a in dp.attachments():
                    if a.prog_id is not None:
                        dp.detach(a.ifname, a.netns)
        except DatapathError as e:
            if "no network namespace" not in str(e) and "no interface" not in str(e):
                raise
        finally:
            remove_pins(cli.pin_dir)


# -- a full disk, a read-only state folder -------------------------------------------------
def test_collect_on_a_full_disk_says_so_in_one_line_and_loses_no_hit(on_disk, disk):
    cli = on_disk.cli
    cli.run("block", "add", "evil.test", "--action", "nxdomain")
    for _ in range(3):
        assert on_disk.judge("evil.test", src="198.18.0.7").rcode == dns.rcode.NXDOMAIN
    assert cli.json("collect")["hits"] == 3
    for _ in range(4):
        on_disk.judge("evil.test", src="198.18.0.7")
    fill(disk)
    cp = cli.run("collect", check=False)
    one_line_error(cp, 1, str(cli.state_dir), "the disk is full (0 bytes free)")
    (disk / "filler").unlink()
    assert cli.json("collect")["hits"] == 4  # kept in the kernel: none lost, none twice


COMMANDS = [
    ["block", "add", "new.test"], ["block", "list"], ["allow", "add", "ok.test"],
    ["exempt", "add", "198.18.9.0/24"], ["feed", "add", "f", "{feed}"], ["feed", "sync"],
    ["block", "import", "{feed}"], ["collect"], ["stats"], ["records"],
]


def run_each(cli, feed: Path, *words: str) -> None:
    """Every command of COMMANDS fails in one line holding ``words``."""
    for args in COMMANDS:
        cp = cli.run(*(a.format(feed=feed) for a in args), check=False)
        one_line_error(cp, 1, *words)


def test_every_command_on_a_full_disk_is_one_line(on_disk, disk, tmp_path):
    cli = on_disk.cli
    cli.run("block", "add", "kept.test")
    feed = tmp_path / "feed.txt"
    feed.write_text("a.test\nb.test\n")
    fill(disk)
    run_each(cli, feed, str(cli.state_dir), "the disk is full")
    (disk / "filler").unlink()
    assert [e["name"] for e in cli.json("block", "list")] == ["kept.test"]


def test_every_command_on_a_read_only_state_folder_is_one_line(on_disk, disk, tmp_path):
    cli = on_disk.cli
    cli.run("block", "add", "kept.test")
    feed = tmp_path / "feed.txt"
    feed.write_text("a.test\nb.test\n")
    set_read_only(disk, True)
    run_each(cli, feed, str(cli.state_dir), "the file system is read-only")
    set_read_only(disk, False)
    assert [e["name"] for e in cli.json("block", "list")] == ["kept.test"]


# -- block export -o ------------------------------------------------------------------------
def test_block_export_to_a_missing_read_only_or_full_folder(on_disk, disk, tmp_path):
    cli = on_disk.cli
    cli.run("block", "add", *(f"name-{i}.test" for i in range(2000)))
    missing = tmp_path / "nowhere" / "names.txt"
    one_line_error(cli.run("block", "export", "-o", str(missing), check=False), 1,
                   f"cannot write {missing}: no folder {missing.parent}")
    with tmpfs(tmp_path / "small", "8k") as small:
        out = small / "names.txt"
        one_line_error(cli.run("block", "export", "-o", str(out), check=False), 1,
                       f"cannot write {out}: No space left on device: the disk is full")
        assert list(small.iterdir()) == []  # neither the file nor its temporary
        set_read_only(small, True)
        one_line_error(cli.run("block", "export", "-o", str(out), check=False), 1,
                       f"cannot write {out}: Read-only file system: the file system is "
                       "read-only")
        set_read_only(small, False)
    good = tmp_path / "names.txt"
    cli.run("block", "export", "-o", str(good))
    assert len(good.read_text().splitlines()) == 2000


# -- files that are not feeds ---------------------------------------------------------------
def test_feed_add_of_a_symlink_loop_a_fifo_or_a_deleted_file(on_disk, tmp_path):
    cli = on_disk.cli
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    one_line_error(cli.run("feed", "add", "loop", str(tmp_path / "a"), check=False), 1,
                   "cannot read: Too many levels of symbolic links")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(cli.run("feed", "add", "fifo", str(fifo), check=False), 1,
                   f"{fifo}: not a regular file (a FIFO)")
    one_line_error(cli.run("block", "import", "/dev/zero", check=False), 1,
                   "/dev/zero: not a regular file (a character device)")
    assert cli.json("feed", "list") == []
    feed = tmp_path / "feed.txt"
    feed.write_text("a.test\n")
    cli.run("feed", "add", "gone", str(feed))
    feed.unlink()
    one_line_error(cli.run("feed", "sync", "gone", check=False), 1,
                   f"feed 'gone': {feed}: no such file; nothing was changed")
    assert [e["name"] for e in cli.json("block", "list")] == ["a.test"]


def test_a_feed_over_the_cap_or_binary_is_refused_before_it_is_parsed(on_disk, tmp_path):
    cli = on_disk.cli
    big = tmp_path / "big.txt"
    big.write_text("".join(f"n{i}.test\n" for i in range(1000)))
    env = {**os.environ, "CCXDP_MAX_FEED_BYTES": "4K"}
    argv = [str(cli.exe), "--pin-dir", str(cli.pin_dir), "--state-dir", str(cli.state_dir)]
    cp = subprocess.run([*argv, "feed", "add", "big", str(big)], capture_output=True,
                        text=True, env=env, timeout=120)
    one_line_error(cp, 1, f"feed 'big': {big}: 9,890 bytes, more than the cap of 4,096 bytes")
    binary = tmp_path / "feed.bin"
    binary.write_bytes(b"a.test\n\x7fELF\x02\x01\x01\x00\x00")
    one_line_error(cli.run("block", "import", str(binary), check=False), 1,
                   f"{binary}: binary content (a NUL byte on line 2), not a feed: refused")
    assert cli.json("block", "list") == [] and cli.json("feed", "list") == []


# -- values from a feed ---------------------------------------------------------------------
def test_bad_line_values_reach_the_terminal_and_json_escaped(on_disk, tmp_path):
    cli = on_disk.cli
    feed = tmp_path / "feed.txt"
    feed.write_bytes(f"good.test\nevil{OSC}.test\n\x1b[2J\x9b31m\n".encode())
    cp = cli.run("feed", "add", "third-party", str(feed), check=False)
    assert cp.returncode == 1 and not any(c in cp.stderr for c in "\x1b\x07\x9b")
    assert cp.stderr.splitlines()[1:] == [
        f"{feed}:2: label 'evil\\x1b]0;owned\\x07' has characters other than a-z 0-9 - _: "
        "evil\\x1b]0;owned\\x07.test",
        f"{feed}:3: not a valid internationalized name (Codepoint U+009B not allowed at "
        "position 5 in '\\x1b[2J\\x9b31m'): \\x1b[2J\\x9b31m"]
    done = cli.run("block", "import", str(feed), "--skip-invalid", "--json")
    assert "\x1b" not in done.stdout and "\\u001b" not in done.stdout
    assert json.loads(done.stdout)["bad_lines"][0].endswith(": evil\\x1b]0;owned\\x07.test")


def test_the_daemons_line_for_a_refused_feed_lists_the_first_bad_lines(on_disk, tmp_path):
    cli = on_disk.cli
    feed = tmp_path / "feed.txt"
    feed.write_text("good.test\n" + "".join(f"bad..{i}.test\n" for i in range(7))
                    + f"evil{OSC}.test\n")
    config = tmp_path / "ccxdp.toml"
    config.write_text(f'on_stop = "keep"\n\n[[feeds]]\nname = "broken"\npath = "{feed}"\n'
                      f'refresh = 3600\n\n[collect]\ninterval = 0\n')
    log = tmp_path / "daemon.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([str(cli.exe), "--pin-dir", str(cli.pin_dir), "--state-dir",
                                 str(cli.state_dir), "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        line = ""
        for _ in range(1200):
            line = next((x for x in log.read_text().splitlines()
                         if "event=feed_sync" in x), "")
            if line or proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    fields = dict(w.split("=", 1) for w in shlex.split(line))
    assert fields["level"] == "error" and fields["result"] == "error"
    assert fields["error"] == (f"{feed}: 8 bad line(s); nothing was imported "
                               "(--skip-invalid imports the rest and lists them)")
    assert fields["bad_lines"] == "8"
    assert fields["first_bad_lines"] == " | ".join(
        f"{feed}:{i + 2}: empty label: bad..{i}.test" for i in range(5))
    assert "\x1b" not in log.read_text()


# -- guard rails ----------------------------------------------------------------------------
def test_an_ip_literal_is_never_listed_as_a_name(on_disk):
    cli = on_disk.cli
    for kind in ("block", "allow"):
        one_line_error(cli.run(kind, "add", "198.18.0.1", check=False), 1,
                       "invalid domain name '198.18.0.1': an IP address, not a domain name")
    assert cli.json("block", "list") == [] and cli.json("allow", "list") == []
    cli.run("block", "add", "18.198.in-addr.arpa", "--subtree")  # the reverse zone is a name
    assert [e["name"] for e in cli.json("block", "list")] == ["18.198.in-addr.arpa"]


def test_a_top_level_subtree_needs_force(on_disk):
    cli = on_disk.cli
    one_line_error(cli.run("block", "add", "com", "--subtree", check=False), 1,
                   "com: a top-level domain; a subtree of it blocks every name registered "
                   "under it: nothing was changed (--force lists it all the same)")
    one_line_error(cli.run("allow", "add", "test", "--subtree", check=False), 1,
                   "test: a top-level domain; a subtree of it allows every name")
    assert cli.json("block", "list") == [] and cli.json("allow", "list") == []
    assert on_disk.judge("shop.example.com").retval == XDP_PASS
    cli.run("block", "add", "com")  # the name alone blocks only queries for "com"
    assert on_disk.judge("shop.example.com").retval == XDP_PASS
    cli.run("block", "add", "com", "--subtree", "--force")
    assert on_disk.judge("shop.example.com").retval == XDP_DROP  # the default action


@pytest.mark.parametrize(("prefix", "words"), [
    ("0.0.0.0/0", "0.0.0.0/0 would exempt all of the IPv4 Internet from filtering and "
                  "counting (4,294,967,296 addresses): prefixes shorter than /8 (IPv4) or "
                  "/16 (IPv6) need --force; nothing was changed"),
    ("10.0.0.0/7", "10.0.0.0/7 would exempt 1/128 of the IPv4 Internet"),
    ("2000::/3", "2000::/3 would exempt 1/8 of the IPv6 Internet from filtering and "
                 "counting: prefixes shorter than /8 (IPv4) or /16 (IPv6) need --force"),
])
def test_a_very_short_exempt_prefix_needs_force(on_disk, prefix, words):
    cli = on_disk.cli
    cli.run("block", "add", "evil.test")
    one_line_error(cli.run("exempt", "add", prefix, check=False), 1, words)
    assert cli.json("exempt", "list") == []
    src = "198.18.0.7" if ":" not in prefix else "2001:db8::7"
    inside = "10.0.0.7" if prefix == "10.0.0.0/7" else src
    assert on_disk.judge("evil.test", src=inside).retval == XDP_DROP
    cli.run("exempt", "add", prefix, "--force")
    assert on_disk.judge("evil.test", src=inside).retval == XDP_PASS
    cli.run("exempt", "add", "10.0.0.0/8", "fd00::/16")  # /8 and /16 and longer: as before


# -- a missing bpffs ----------------------------------------------------------------------
@pytest.mark.parametrize("args", [["collect"], ["stats"], ["top", "--once"]],
                         ids=["collect", "stats", "top"])
def test_commands_that_read_the_kernel_without_bpffs_are_one_line(tmp_path, args):
    pin_dir = tmp_path / "not-bpffs" / "ccxdp"
    cli = Ccxdp(pin_dir, tmp_path / "state")
    one_line_error(cli.run(*args, check=False), 1, "ccxdp is not loaded: no pinned map",
                   str(pin_dir), "run 'ccxdp attach IFACE' first")
    assert not pin_dir.exists()


def test_a_reader_that_goes_away_is_no_error(on_disk, tmp_path):
    cli = on_disk.cli
    feed = tmp_path / "feed.txt"
    feed.write_text("".join(f"name-{i}.test\n" for i in range(5000)))
    cli.run("block", "import", str(feed))
    argv = [str(cli.exe), "--pin-dir", str(cli.pin_dir), "--state-dir", str(cli.state_dir)]
    proc = subprocess.Popen([*argv, "block", "list", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head` does: the JSON (~400 KB) meets a closed pipe
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(60) == 1 and err == ""
