"""Keccak-256, domain tags and the static ABI encoding every digest is built from."""

from __future__ import annotations

from sha3 import keccak_256 as _keccak_256  # type: ignore[import-untyped]


def keccak256(data: bytes) -> bytes:
    """Return the 32-byte Keccak-256 digest of ``data`` (Ethereum's, not SHA3-256).
    TypeError for anything but ``bytes`` or ``bytearray``: what is hashed never depends on
    how one Keccak library reads other objects (pycryptodome hashed ``None`` or ``""`` as
    empty, and a wide memoryview's first ``len()`` bytes only)."""
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"keccak256 takes bytes, not {type(data).__name__}")
    return bytes(_keccak_256(data).digest())


def tag(name: str) -> bytes:
    """Return the 32-byte domain-separation tag ``keccak256(name)`` used in digests."""
    return keccak256(name.encode("ascii"))


def word32(value: bytes) -> bytes:
    """One ``bytes32`` ABI word; raises ValueError unless ``value`` is exactly 32 bytes."""
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ValueError("bytes32 must be 32 bytes")
    return bytes(value)


def uint(value: int, bits: int = 256) -> bytes:
    """One ``uint<bits>`` ABI word (big-endian, left-padded); ValueError when out of range."""
    if type(value) is not int or not 0 <= value < 2**bits:
        raise ValueError(f"{value!r} does not fit uint{bits}")
    return value.to_bytes(32, "big")


def encode(*words: bytes) -> bytes:
    """``abi.encode`` of static values already converted by :func:`word32` / :func:`uint`."""
    for w in words:
        if len(w) != 32:
            raise ValueError("every static ABI value is one 32-byte word")
    return b"".join(words)
