"""Domain names as users type them, and as the XDP program sees them (wire form)."""

from __future__ import annotations

import re

from .errors import InvalidNameError
from .layout import DNS_MAX_LABEL_LEN, DNS_MAX_NAME_LEN

# Host names are letters, digits and hyphens; C&C feeds also carry underscores (SRV-like and
# DGA names), which resolvers resolve, so they are allowed too.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")


def normalize(name: str) -> str:
    """Lower-case, strip one trailing dot, validate; returns the name as stored and shown."""
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidNameError(name, "empty name (the root cannot be listed)")
    if not text.isascii():
        raise InvalidNameError(name, "not ASCII: give the IDNA form (xn--…)")
    text = text.lower()
    labels = text.split(".")
    for label in labels:
        if not label:
            raise InvalidNameError(name, "empty label")
        if len(label) > DNS_MAX_LABEL_LEN:
            raise InvalidNameError(name, f"label {label[:20]!r}… longer than 63 bytes")
        if not _LABEL.match(label):
            raise InvalidNameError(name, f"label {label!r} has characters other than a-z 0-9 - _")
    if len(to_wire(text)) > DNS_MAX_NAME_LEN:
        raise InvalidNameError(name, "longer than 255 bytes in wire form")
    return text


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
