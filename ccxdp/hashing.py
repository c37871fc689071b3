"""The keyed name hash, exactly as bpf/dns.h computes it (tests/test_parity.py holds them equal).

Suffixes are hashed from the root outwards, so the state after each label is the hash of
that label's suffix; see dns.h for the definition. The key is random per installation.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .names import to_wire, wire_labels

MASK64 = (1 << 64) - 1
MUL = 0xC2B2AE3D27D4EB4F
MUL_FINAL = 0xFF51AFD7ED558CCD
KEY_BYTES = 16

# The C loads words in host order; so do we, so both agree on any host.
_BYTEORDER = sys.byteorder


@dataclass(frozen=True)
class HashKey:
    k0: int
    k1: int

    @classmethod
    def generate(cls) -> HashKey:
        raw = os.urandom(KEY_BYTES)
        return cls(int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little"))

    def to_bytes(self) -> bytes:
        return self.k0.to_bytes(8, "little") + self.k1.to_bytes(8, "little")

    def save(self, path: Path) -> None:
        """Write the key file (mode 0600) unless it already holds this key."""
        if path.exists() and path.read_bytes() == self.to_bytes():
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load_or_create(cls, path: Path) -> HashKey:
        """Read the installation's key, creating it on first use."""
        if not path.exists():
            cls.generate().save(path)
        raw = path.read_bytes()
        if len(raw) != KEY_BYTES:
            raise ValueError(f"hash key file {path} is {len(raw)} bytes, expected {KEY_BYTES}")
        return cls(int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little"))

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return "HashKey(<secret>)"


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def _finish(h: int, k1: int) -> int:
    x = h ^ k1
    return ((x ^ (x >> 29)) * MUL_FINAL) & MASK64


def suffix_hashes(wire: bytes, key: HashKey) -> list[int]:
    """Hash of every suffix of a wire-form name, leftmost (the whole name) first."""
    h = key.k0
    out = []
    for label in reversed(wire_labels(wire)):
        # The label in wire form: its length byte, then its bytes. bytes.lower() folds ASCII
        # A-Z only, as the C does (DNS compares case-insensitively in ASCII only: RFC 4343).
        run = bytes([len(label)]) + label.lower()
        for i in range(0, len(run), 8):
            word = int.from_bytes(run[i : i + 8].ljust(8, b"\0"), _BYTEORDER)
            h = _rotl64(((h ^ word) * MUL) & MASK64, 29)
        out.append(_finish(h, key.k1))
    out.reverse()
    return out


def name_hash(name: str, key: HashKey) -> int:
    """Hash of one normalized name, as stored in the kernel's name map."""
    return suffix_hashes(to_wire(name), key)[0]
