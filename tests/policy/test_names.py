"""Domain names as users type them: normalization and refusals, exact values."""

from __future__ import annotations

import pytest

from ccxdp.errors import InvalidNameError
from ccxdp.policy.names import normalize, to_wire, unusual_a_label, wire_labels


@pytest.mark.parametrize(
    "typed, stored",
    [
        ("evil.example", "evil.example"),
        ("EVIL.Example.", "evil.example"),
        ("  c2.example.net\n", "c2.example.net"),
        ("_dmarc.example", "_dmarc.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
        # IDN: UTF-8, punycode in any case, and UTS 46 mapping all give the same A-labels
        ("bücher.example", "xn--bcher-kva.example"),
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("bücher\u3002example", "xn--bcher-kva.example"),  # ideographic full stop
        ("ｂücher.example", "xn--bcher-kva.example"),  # full-width b
        ("_dmarc.bücher.example", "_dmarc.xn--bcher-kva.example"),  # ASCII labels keep _
        ("пример.испытание", "xn--e1afmkfd.xn--80akhbyknj4f"),
        # an existing emoji name, given as its A-label, stays listable (see _valid_punycode)
        ("xn--ls8h.la", "xn--ls8h.la"),
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
        ("-lead.example", "label '-lead' starts or ends with a hyphen"),
        ("trail-.example", "label 'trail-' starts or ends with a hyphen"),
        ("bad_-.example!", "label 'example!' has characters other than"),  # characters first
        ("a" * 64 + ".test", "longer than 63 bytes"),
        (".".join(["a" * 63] * 4), "longer than 255 bytes"),
        ("xn--abc-.example", "label 'xn--abc-' starts or ends with a hyphen"),
        ("xn--.example", "label 'xn--' starts or ends with a hyphen"),
        ("💩.la", "label '💩' is not a valid internationalized label"),
        ("a\u0300b.example", None),  # valid: combining mark after a letter (sanity below)
        ("\u0300a.example", "is not a valid internationalized label"),
        ("ab_ü.example", "label 'ab_ü' is not a valid internationalized label"),
        ("bü cher.example", "label 'bü cher' is not a valid internationalized label"),
        ("ü" * 70 + ".example", "is not a valid internationalized label (Label too long)"),
    ],
)
def test_refused(typed, reason):
    if reason is None:
        assert normalize(typed).isascii()
        return
    with pytest.raises(InvalidNameError) as e:
        normalize(typed)
    assert reason in str(e.value)
    assert repr(typed) in str(e.value)


@pytest.mark.parametrize("typed, label", [
    ("xn--zz.example", "xn--zz"),
    ("XN--ZZ.example", "xn--zz"),
    ("xn--abc.example", "xn--abc"),  # C1 control characters
    ("xn--a-kfa.example", "xn--a-kfa"),  # "aÜ": not case-folded
    ("xn--bcher-kv.example", "xn--bcher-kv"),  # truncated
    # The real one, from hagezi's tif.mini list: 'ildcard' with a code point IDNA refuses.
    ("xn--ildcard-0c2c.facture-rapide.fr", "xn--ildcard-0c2c"),
])
def test_an_xn_label_that_is_not_valid_idna_is_still_a_name_a_client_can_query(typed, label):
    assert normalize(typed) == typed.lower()
    assert unusual_a_label(normalize(typed)) == label


def test_valid_a_labels_are_not_unusual():
    assert unusual_a_label("xn--bcher-kva.example") is None
    assert unusual_a_label("xn--ls8h.la") is None
    assert unusual_a_label("plain.example") is None


def test_wire_form():
    assert to_wire("evil.example") == b"\x04evil\x07example\x00"
    assert to_wire("") == b"\x00"
    assert wire_labels(b"\x04evil\x07example\x00") == [b"evil", b"example"]
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(to_wire(normalize(longest))) == 255
