"""Domain names as users type them: normalization and refusals, exact values."""

from __future__ import annotations

import pytest

from ccxdp.errors import InvalidNameError
from ccxdp.names import normalize, to_wire, wire_labels


@pytest.mark.parametrize(
    "typed, stored",
    [
        ("evil.example", "evil.example"),
        ("EVIL.Example.", "evil.example"),
        ("  c2.example.net\n", "c2.example.net"),
        ("_dmarc.example", "_dmarc.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
    ],
)
def test_normalize(typed, stored):
    assert normalize(typed) == stored


@pytest.mark.parametrize(
    "typed, reason",
    [
        ("", "empty name"),
        (".", "empty name"),
        ("a..b", "empty label"),
        ("bad name.example", "characters other than"),
        ("-lead.example", "characters other than"),
        ("trail-.example", "characters other than"),
        ("a" * 64 + ".test", "longer than 63 bytes"),
        (".".join(["a" * 63] * 4), "longer than 255 bytes"),
        ("bücher.example", "not ASCII"),
    ],
)
def test_refused(typed, reason):
    with pytest.raises(InvalidNameError) as e:
        normalize(typed)
    assert reason in str(e.value)
    assert repr(typed) in str(e.value)


def test_wire_form():
    assert to_wire("evil.example") == b"\x04evil\x07example\x00"
    assert to_wire("") == b"\x00"
    assert wire_labels(b"\x04evil\x07example\x00") == [b"evil", b"example"]
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(to_wire(normalize(longest))) == 255
