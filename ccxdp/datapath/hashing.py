"""The keyed name hash, exactly as bpf/dns.h computes it (tests/program/test_parity.py holds
them equal).

Per label, two NH sums (UMAC) under independent key words; the sums are chained from the root
outwards through a 64-bit bijection, so the state after each label is the key of that label's
suffix. See dns.h for the definition and why it resists crafted collisions.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ccxdp.datapath.shared import NH_KEY_WORDS
from ccxdp.errors import CcxdpError
from ccxdp.policy.names import to_wire, wire_labels

MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1
MUL = 0xFF51AFD7ED558CCD
KEY_BYTES = 16 + 4 * NH_KEY_WORDS
_KEY_FORMAT = f"<QQ{NH_KEY_WORDS}I"


class KeyFileError(CcxdpError):
    pass


@dataclass(frozen=True, repr=False)
class HashKey:
    k0: int
    k1: int
    nh: tuple[int, ...]

    @classmethod
    def generate(cls) -> HashKey:
        return cls.from_bytes(os.urandom(KEY_BYTES))

    @classmethod
    def from_bytes(cls, raw: bytes) -> HashKey:
        k0, k1, *nh = struct.unpack(_KEY_FORMAT, raw)
        return cls(k0, k1, tuple(nh))

    def to_bytes(self) -> bytes:
        return struct.pack(_KEY_FORMAT, self.k0, self.k1, *self.nh)

    @property
    def fingerprint(self) -> str:
        """Names which key hashed something, without revealing the key."""
        return hashlib.sha256(b"ccxdp-key-id" + self.to_bytes()).hexdigest()[:16]

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
            raise KeyFileError(
                f"hash key file {path} is {len(raw)} bytes, expected {KEY_BYTES}: it is not a "
                "ccxdp key of this version (move it away to make a new one; listed names are "
                "hashed again from the catalog at the next attach)"
            )
        return cls.from_bytes(raw)

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return "HashKey(<secret>)"


def _mix(x: int) -> int:
    return ((x ^ (x >> 32)) * MUL) & MASK64


def _nh_sums(run: bytes, nh: tuple[int, ...]) -> tuple[int, int]:
    a = b = 0
    for j in range(0, len(run), 8):
        w = int.from_bytes(run[j : j + 8].ljust(8, b"\0"), "little")
        lo, hi = w & MASK32, w >> 32
        i = j // 4  # 2 key words per 8-byte word
        a += ((lo + nh[i]) & MASK32) * ((hi + nh[i + 1]) & MASK32)
        b += ((lo + nh[i + 4]) & MASK32) * ((hi + nh[i + 5]) & MASK32)
    return a & MASK64, b & MASK64


def suffix_hashes(wire: bytes, key: HashKey) -> list[int]:
    """Map key of every suffix of a wire-form name, leftmost (the whole name) first."""
    state = key.k0
    out = []
    for label in reversed(wire_labels(wire)):
        # The label in wire form: its length byte, then its bytes. bytes.lower() folds ASCII
        # A-Z only, as the C does (DNS compares case-insensitively in ASCII only: RFC 4343).
        a, b = _nh_sums(bytes([len(label)]) + label.lower(), key.nh)
        state = _mix(_mix(state ^ a) ^ b)
        out.append(state ^ key.k1)
    out.reverse()
    return out


def name_hash(name: str, key: HashKey) -> int:
    """Map key of one normalized name, as stored in the kernel's name map."""
    return suffix_hashes(to_wire(name), key)[0]
