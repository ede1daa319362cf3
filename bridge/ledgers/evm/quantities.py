"""Strict parsing of the JSON-RPC hex an EVM node sends (quantities and their digits).

``int(x, 16)`` and ``bytes.fromhex`` accept more than the JSON-RPC encoding allows: a sign,
spaces, underscores, and (``int``) a ``0x`` prefix of its own. Everything the bridge reads
from a node, over HTTP or pushed over WebSocket, goes through these instead, so an answer
means one thing whichever path brought it.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_HEAD", "is_hex", "quantity"]

_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")

MAX_HEAD = 2**63 - 1
"""The highest block number a node's ``eth_blockNumber`` is believed (a node's own bound:
geth and anvil number blocks in 64 bits). Above it the answer is Unavailable: a head is
kept as the highest one seen, so one absurd answer would otherwise stand for good."""


def is_hex(digits: str, empty: bool = False) -> bool:
    """Only hex digits (no sign, space or underscore, which ``int``/``fromhex`` accept);
    the empty string only when ``empty``."""
    return (empty or bool(digits)) and _HEX_DIGITS.fullmatch(digits) is not None


def quantity(value: Any) -> int:
    """A JSON-RPC quantity (``0x`` hex, or a non-negative int) as an int; ValueError for
    anything else (a sign, spaces, underscores, a missing prefix, a bool)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value[:2] in ("0x", "0X") and is_hex(value[2:]):
        return int(value[2:], 16)
    raise ValueError(f"not a quantity: {value!r}"[:200])
