"""The 32-byte words that name ledgers, securities, accounts, bridges and networks."""

from __future__ import annotations

import functools
import re

from .hashing import keccak256

_ISIN_RE = re.compile(r"[A-Z]{2}[A-Z0-9]{9}[0-9]")
_LEDGER_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def isin_check_digit(body: str) -> int:
    """Return the ISO 6166 check digit for the first 11 characters of an ISIN."""
    digits = "".join(str(int(c, 36)) for c in body)
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def is_valid_isin(value: object) -> bool:
    """True when ``value`` is a well-formed ISIN with a correct check digit.

    The answers for the last 4,096 distinct twelve-character strings are kept: every step
    of every transfer names its security (issue 14). Nothing longer is kept, so the memory
    a caller can make it hold is bounded whatever it sends."""
    if type(value) is str:
        return len(value) == 12 and _is_valid_isin_text(value)
    return isinstance(value, str) and _check_isin(value)


@functools.lru_cache(maxsize=4096)
def _is_valid_isin_text(value: str) -> bool:
    return _check_isin(value)


def _check_isin(value: str) -> bool:
    return bool(_ISIN_RE.fullmatch(value)) and isin_check_digit(value[:11]) == int(value[11])


def is_valid_ledger_name(value: object) -> bool:
    """True for 1-63 lowercase letters, digits or '-', starting with a letter or digit."""
    return isinstance(value, str) and bool(_LEDGER_RE.fullmatch(value))


def security_word(isin: str) -> bytes:
    """The ISIN as ASCII, right-padded with zero bytes to 32; ValueError if not an ISIN."""
    if not is_valid_isin(isin):
        raise ValueError(f"security id {isin!r} is not a valid ISIN")
    return isin.encode("ascii").ljust(32, b"\0")


def ledger_word(name: str) -> bytes:
    """keccak256(ledger name)."""
    return keccak256(name.encode("utf-8"))


def address_word(address: bytes) -> bytes:
    """A 20-byte account address left-padded to a word (``bytes32(uint256(uint160(a)))``)."""
    if len(address) != 20:
        raise ValueError("an address is 20 bytes")
    return bytes(12) + bytes(address)


def address_of_word(word: bytes) -> bytes | None:
    """The 20-byte account held by ``word``, or None unless it is a nonzero padded address."""
    if len(word) != 32 or any(word[:12]) or not any(word[12:]):
        return None
    return bytes(word[12:])


def fabric_bridge_word(channel_id: str, chaincode_name: str) -> bytes:
    """A Fabric endpoint's bridge id: keccak256("fabric:<channel>:<chaincode>")."""
    return keccak256(b"fabric:" + channel_id.encode("utf-8") + b":" + chaincode_name.encode())


def evm_network_word(chain_id: int) -> bytes:
    """An EVM ledger's network word: ``bytes32(uint256(chainid))``."""
    if type(chain_id) is not int or not 0 < chain_id < 2**256:
        raise ValueError("chain id must be a positive uint256")
    return chain_id.to_bytes(32, "big")
