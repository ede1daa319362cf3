"""Keccak-256 and the ABI encoding that every digest in the protocol is built from.

Keccak and tags come from the protocol core (``bridge.core``); the general ABI encoder is
here for the digests outside the core (supply records, issuance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi.abi import encode as _abi_encode

from bridge.core.hashing import keccak256, tag

__all__ = ["abi_encode", "keccak256", "tag"]


def abi_encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """Return Solidity's ``abi.encode`` of ``values``; identical to the contracts' encoding."""
    return bytes(_abi_encode(list(types), list(values)))
