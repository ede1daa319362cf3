"""Keccak-256 and the ABI encoding that every digest in the protocol is built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi.abi import encode as _abi_encode
from eth_utils.crypto import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    """Return the 32-byte Keccak-256 digest of ``data`` (Ethereum's, not SHA3-256)."""
    return bytes(_keccak(data))


def abi_encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """Return Solidity's ``abi.encode`` of ``values``; identical to the contracts' encoding."""
    return bytes(_abi_encode(list(types), list(values)))


def tag(name: str) -> bytes:
    """Return the 32-byte domain-separation tag ``keccak256(name)`` used in digests."""
    return keccak256(name.encode("ascii"))
