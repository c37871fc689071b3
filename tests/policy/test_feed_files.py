"""Feed files as ccxdp reads them: once, under a cap, refused early when they are not text
or not a regular file, parsed a chunk of lines at a time with the same result as whole, and
every value from them escaped before anyone sees it."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccxdp.inputs import InputError, shown
from ccxdp.policy import formats
from ccxdp.policy.formats import FeedFormatError, parse_feed, read_feed_bytes
from ccxdp.policy.formats import common as ff_common


def refusal(path: Path, **kwargs) -> str:
    with pytest.raises(FeedFormatError) as e:
        parse_feed(path, **kwargs)
    return str(e.value)


# -- what is not a regular file -------------------------------------------------------------
def test_a_fifo_is_refused_at_once_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "feed.txt"
    os.mkfifo(fifo)
    # A child: before, open() waited for a writer that never comes, forever.
    code = ("import sys; from pathlib import Path; from ccxdp.policy.formats import "
            "parse_feed, FeedFormatError\n"
            "try:\n    parse_feed(Path(sys.argv[1]))\n"
            "except FeedFormatError as e:\n    print(e)\n")
    cp = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                        text=True, timeout=30)
    assert cp.stdout == f"{fifo}: not a regular file (a FIFO); a feed is a file\n", cp.stderr


@pytest.mark.parametrize(("path", "kind"), [
    (None, "a folder"), ("/dev/null", "a character device"), ("/dev/zero", "a character device"),
], ids=["folder", "dev-null", "dev-zero"])
def test_a_folder_or_device_is_not_a_regular_file(tmp_path, path, kind):
    path = Path(path) if path else tmp_path
    assert refusal(path) == f"{path}: not a regular file ({kind}); a feed is a file"


def test_a_symlink_loop_and_a_missing_file_are_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert refusal(tmp_path / "a") == (
        f"{tmp_path / 'a'}: cannot read: Too many levels of symbolic links")
    assert refusal(tmp_path / "gone.txt") == f"{tmp_path / 'gone.txt'}: no such file"


# -- binary content ---------------------------------------------------------------------------
def test_binary_content_is_refused_naming_the_line_of_the_first_nul(tmp_path):
    path = tmp_path / "feed.txt"
    path.write_bytes(b"one.test\ntwo.test\nthree\x00.test\nfour.test\n")
    assert refusal(path) == (f"{path}: binary content (a NUL byte on line 3), not a feed: "
                             "refused")


def test_binary_content_past_the_first_check_and_inside_gzip_is_refused(tmp_path):
    late = tmp_path / "late.txt"
    late.write_bytes(b"name.test\n" * 20_000 + b"\x00\x01\x02")  # past the first 64 KiB
    assert refusal(late) == (f"{late}: binary content (a NUL byte on line 20,001), not a "
                             "feed: refused")
    packed = tmp_path / "feed.txt.gz"
    packed.write_bytes(gzip.compress(b"a.test\n\x00\x00\x00\x00"))
    assert "binary content (a NUL byte on line 2)" in refusal(packed)


# -- the cap -----------------------------------------------------------------------------------
def test_a_file_over_the_cap_is_refused_from_its_size(tmp_path, monkeypatch):
    monkeypatch.setenv("CCXDP_MAX_FEED_BYTES", "1K")
    at_cap = tmp_path / "ok.txt"
    at_cap.write_bytes(b"a.test\n" * 144 + b"abcdefghij.test\n")
    assert at_cap.stat().st_size == 1024
    assert len(parse_feed(at_cap, "plain").entries) == 2
    over = tmp_path / "big.txt"
    over.write_bytes(b"a.test\n" * 147)  # 1,029 bytes
    assert refusal(over, fmt="plain") == (
        f"{over}: 1,029 bytes, more than the cap of 1,024 bytes: refused (a feed is text of "
        "at most that; CCXDP_MAX_FEED_BYTES raises it)")


def test_a_compressed_file_is_held_to_the_cap_by_what_it_unpacks_to(tmp_path, monkeypatch):
    monkeypatch.setenv("CCXDP_MAX_FEED_BYTES", "4096")
    bomb = tmp_path / "feed.txt.gz"
    bomb.write_bytes(gzip.compress(b"a.test\n" * 10_000))  # 70,000 bytes in a few hundred
    assert bomb.stat().st_size < 4096
    assert refusal(bomb) == (
        f"{bomb}: the gzip file unpacks to more than the cap of 4,096 bytes: refused (a feed "
        "is text of at most that; CCXDP_MAX_FEED_BYTES raises it)")


def test_the_default_cap_and_its_setting(monkeypatch):
    monkeypatch.delenv("CCXDP_MAX_FEED_BYTES", raising=False)
    assert formats.max_feed_bytes() == 256 << 20
    for text, value in (("1048576", 1 << 20), ("512M", 512 << 20), ("2G", 2 << 30),
                        ("64KiB", 64 << 10), (" 300 ", 300)):
        monkeypatch.setenv("CCXDP_MAX_FEED_BYTES", text)
        assert formats.max_feed_bytes() == value
    for text in ("0", "-5", "lots", "1T"):
        monkeypatch.setenv("CCXDP_MAX_FEED_BYTES", text)
        with pytest.raises(FeedFormatError) as e:
            formats.max_feed_bytes()
        assert str(e.value) == (f"CCXDP_MAX_FEED_BYTES={text.strip()!r}: give a size of 1 or "
                                "more, in bytes (268435456) or with K, M or G (256M)")


def test_detection_reads_only_the_head_of_a_file_over_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("CCXDP_MAX_FEED_BYTES", "1K")
    path = tmp_path / "big.hosts"
    path.write_text("0.0.0.0 a.test\n" * 500)
    assert formats.detect_format(path) == "hosts"
    assert len(read_feed_bytes(path, 100)) == 100


# -- the parse, a chunk at a time ----------------------------------------------------------
def test_a_feed_parsed_in_small_chunks_is_the_feed_parsed_whole(tmp_path, monkeypatch):
    lines = []
    for i in range(400):
        lines += [f"name-{i}.test", f"# comment {i}", f"bad..{i}.test", f"name-{i % 50}.test",
                  f"Ünïcode-{i}.test", "192.0.2.1", "", f"*.below-{i}.test"]
    data = ("\ufeff" + "\r\n".join(lines) + "\r\nlast.test").encode() + b"\xff.test\n"
    path = tmp_path / "feed.txt"
    path.write_bytes(data)
    whole = parse_feed(path, "plain")
    monkeypatch.setattr(ff_common, "CHUNK_BYTES", 97)  # lines cut at every size
    chunked = parse_feed(path, "plain")
    assert chunked == whole
    assert len(whole.entries) == 400 * 3 and len(whole.bad) == 401
    assert whole.bad[-1].line == 3201 and whole.bad[-1].reason == "not UTF-8"
    assert [e.line for e in whole.entries[:3]] == [1, 5, 8]


def test_the_chunks_are_whole_lines_numbered_from_their_first():
    data = "\ufeffa\r\nb\nc\nd".encode()
    assert list(formats.common.text_chunks(data, 1)) == [(1, "a\n"), (2, "b\n"), (3, "c\n"),
                                                         (4, "d\n")]
    assert list(formats.common.text_chunks(data)) == [(1, "a\nb\nc\nd\n")]
    assert list(formats.common.text_chunks(b"")) == []


# -- escaped values ------------------------------------------------------------------------
OSC = "\x1b]0;owned\x07"  # sets the terminal's title


def test_bad_line_values_and_reasons_are_escaped(tmp_path):
    path = tmp_path / "feed.txt"
    path.write_bytes(f"good.test\nevil{OSC}.test\nbell\x08\x7f.test\ncsi\u009b2J.test\n"
                     "rlo\u202e.test a\n".encode())
    bad = [str(b) for b in parse_feed(path, "plain").bad]
    assert bad == [
        f"{path}:2: label 'evil\\x1b]0;owned\\x07' has characters other than a-z 0-9 - _: "
        "evil\\x1b]0;owned\\x07.test",
        f"{path}:3: label 'bell\\x08\\x7f' has characters other than a-z 0-9 - _: "
        "bell\\x08\\x7f.test",
        f"{path}:4: not a valid internationalized name (Codepoint U+009B not allowed at "
        "position 4 in 'csi\\x9b2J.test'): csi\\x9b2J.test",
        f"{path}:5: several fields, not one name: rlo\\u202e.test a",
    ]
    assert not any(c in "".join(bad) for c in "\x1b\x07\x08\x7f\x9b\u202e")


def test_a_csv_reason_made_of_the_files_words_is_escaped(tmp_path):
    path = tmp_path / "threatfox.csv"
    path.write_text('# "first_seen_utc","ioc_value","ioc_type"\n'
                    '"2026-01-01","a.test","domain"\n'
                    f'"2026-01-01","b.test","x{OSC}"\n')
    parsed = parse_feed(path, "csv")
    assert parsed.skipped == {"ioc_type x\\x1b]0;owned\\x07": 1}
    assert [e.name for e in parsed.entries] == ["a.test"]


def test_shown_escapes_what_a_terminal_would_obey_and_keeps_the_rest():
    assert shown("plain.test") == "plain.test"
    assert shown("bücher.example") == "bücher.example"
    assert shown("a\x00b\x1b[2Jc\u2028d\r\n") == "a\\x00b\\x1b[2Jc\\u2028d\\r\\n"
    assert shown("x" * 10, 4) == "xxxx…"
    err = InputError("subs\x1b.csv", 7, "invalid e-mail address", f"a{OSC}@b")
    assert str(err) == "subs\\x1b.csv:7: invalid e-mail address: a\\x1b]0;owned\\x07@b"
