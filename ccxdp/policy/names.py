"""Domain names as users type them, and as the XDP program sees them (wire form).

A name is stored and shown in one form: lower-case ASCII, internationalized labels as their
A-label (``xn--…``), no trailing dot. An ASCII xn-- label is kept as given even when it
does not decode to a valid IDNA label: it is a valid DNS name all the same. ASCII names are
checked by our own rules (C&C feeds carry underscores, which IDNA refuses); only labels with
non-ASCII characters go through IDNA, with UTS 46 mapping, the way browsers and resolvers'
stub libraries map what users type.
"""

from __future__ import annotations

import ipaddress
import re

import idna

from ccxdp.datapath.shared import DNS_MAX_LABEL_LEN, DNS_MAX_NAME_LEN
from ccxdp.errors import InvalidNameError

# Host names are letters, digits and hyphens; C&C feeds also carry underscores (SRV-like and
# DGA names), which resolvers resolve, so they are allowed too.
_LABEL_CHARS = re.compile(r"[a-z0-9_-]+")


def normalize(name: str) -> str:
    """Lower-case, strip one trailing dot, turn IDN labels into A-labels, validate; returns
    the name as stored and shown. Raises InvalidNameError with a short reason."""
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidNameError(name, "empty name (the root cannot be listed)")
    if not text.isascii():
        text = _to_ascii(name, text)
    text = text.lower()
    labels = text.split(".")
    # Characters first, label by label, then the finer rules: the worst problem is named.
    for label in labels:
        if not label:
            raise InvalidNameError(name, "empty label")
        if len(label) > DNS_MAX_LABEL_LEN:
            raise InvalidNameError(name, f"label {label[:20]!r}… longer than 63 bytes")
        if not _LABEL_CHARS.fullmatch(label):
            raise InvalidNameError(name, f"label {label!r} has characters other than a-z 0-9 - _")
    for label in labels:
        if label[0] == "-" or label[-1] == "-":
            raise InvalidNameError(name, f"label {label!r} starts or ends with a hyphen")
    if len(text) + 2 > DNS_MAX_NAME_LEN:  # wire form: one length byte a label, and the root
        raise InvalidNameError(name, "longer than 255 bytes in wire form")
    return text


def _to_ascii(name: str, text: str) -> str:
    """The name with each non-ASCII label replaced by its A-label (IDNA 2008, UTS 46
    mapping: case folding, full-width dots and the like). ASCII labels are left to our rules."""
    try:
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except idna.IDNAError as e:
        raise InvalidNameError(name, f"not a valid internationalized name ({e})") from None
    if mapped.endswith("."):  # an ideographic full stop at the end is a trailing dot too
        mapped = mapped[:-1]
    out = []
    for label in mapped.split("."):
        if label.isascii():
            out.append(label)
            continue
        try:
            out.append(idna.encode(label, uts46=True).decode("ascii"))
        except idna.IDNAError as e:
            raise InvalidNameError(
                name, f"label {label!r} is not a valid internationalized label ({e})"
            ) from None
    return ".".join(out)


def unusual_a_label(name: str) -> str | None:
    """The first xn-- label of a normalized name that is not a valid IDNA A-label, or None.
    Such a name is still a valid DNS name (letters, digits, hyphens) that a client can query,
    and a C&C name may be one on purpose: it is listed, and feeds count it."""
    for label in name.split("."):
        if label.startswith("xn--") and not _valid_punycode(label):
            return label
    return None


def _valid_punycode(label: str) -> bool:
    """An xn-- label that decodes to a label UTS 46 leaves as it is (every code point valid,
    already case-folded and mapped), and is written the way the encoder writes it. This is the
    check browsers apply to A-labels; it is looser than IDNA 2008's code point rules, so names
    that exist in the DNS (emoji names registered under permissive TLDs) stay listable."""
    encoded = label[4:]
    try:
        decoded = encoded.encode("ascii").decode("punycode")
        mapped = idna.uts46_remap(decoded, std3_rules=False, transitional=False)
    except (UnicodeError, idna.IDNAError):
        return False
    return (
        not decoded.isascii()
        and mapped == decoded
        and decoded.encode("punycode").decode("ascii") == encoded
    )


def to_wire(name: str) -> bytes:
    """Wire form of a normalized name: length-prefixed labels ending in the root's zero byte."""
    out = bytearray()
    for label in name.split(".") if name else []:
        raw = label.encode("ascii")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def wire_labels(wire: bytes) -> list[bytes]:
    """Labels of a wire-form name (uncompressed), leftmost first."""
    labels = []
    pos = 0
    while wire[pos]:
        length = wire[pos]
        labels.append(wire[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return labels


def is_ip_literal(text: str) -> bool:
    """An IPv4 or IPv6 address written as itself: no name, though "198.18.0.1" passes the
    rules of one. Feeds skip such lines; ``block add`` and ``allow add`` refuse them."""
    if not text or not (text[0].isdigit() or ":" in text):
        return False  # a name, most of the time: no exception to build
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_top_level(name: str) -> bool:
    """A normalized name of one label: a top-level domain (com, net, a ccTLD), a subtree
    of which is everything registered under it."""
    return "." not in name
