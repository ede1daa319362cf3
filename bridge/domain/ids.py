"""Identifiers: ledgers, securities (ISIN) and account addresses as 32-byte words."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from bridge.core import words as core
from bridge.core.words import is_valid_isin, isin_check_digit
from bridge.domain.errors import InvalidInput

__all__ = [
    "LedgerId",
    "SecurityId",
    "evm_address_word",
    "is_valid_isin",
    "isin_check_digit",
    "parse_evm_address",
    "word_to_evm_address",
]


@dataclass(frozen=True, slots=True)
class SecurityId:
    """A security, identified by its ISIN; on ledgers it is the ISIN's ASCII, right-padded."""

    isin: str

    def __post_init__(self) -> None:
        if not is_valid_isin(self.isin):
            raise InvalidInput(f"security id {self.isin!r} is not a valid ISIN")

    @property
    def word(self) -> bytes:
        """The 32-byte on-ledger form."""
        return core.security_word(self.isin)

    @classmethod
    def from_word(cls, word: bytes) -> SecurityId:
        """Inverse of :attr:`word`; raises InvalidInput for anything that is not an ISIN."""
        try:
            text = word.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidInput("security word is not ASCII") from exc
        return cls(text)

    def __str__(self) -> str:
        return self.isin


@dataclass(frozen=True, slots=True)
class LedgerId:
    """A connected ledger's stable name (e.g. ``brokerage-a``); on ledgers, keccak256(name)."""

    name: str

    def __post_init__(self) -> None:
        if not core.is_valid_ledger_name(self.name):
            raise InvalidInput(
                f"ledger id {self.name!r} must be 1-63 lowercase letters, digits or '-'"
            )

    @property
    def word(self) -> bytes:
        """The 32-byte on-ledger form."""
        return _ledger_word(self.name)

    def __str__(self) -> str:
        return self.name


@lru_cache(maxsize=1024)
def _ledger_word(name: str) -> bytes:
    """keccak256 of a ledger's name, kept: a member works out the ledger words of every
    claim it signs, always of the same few names (issue 14)."""
    return core.ledger_word(name)


def evm_address_word(address: str) -> bytes:
    """Return an EVM address left-padded to a 32-byte word (as ``bytes32(uint256(uint160(a)))``)."""
    return core.address_word(parse_evm_address(address))


def parse_evm_address(address: str) -> bytes:
    """Parse a 0x-prefixed 20-byte hex address; mixed case must be a valid EIP-55 checksum.

    The last 4,096 accepted addresses are kept (the checksum is a keccak; a coordinator
    parses the same few holders' addresses for every transfer it admits); a refusal is not
    kept (it raises)."""
    if not isinstance(address, str):
        raise InvalidInput(f"{address!r} is not a 0x-prefixed 20-byte hex address")
    return _parse_evm_address(address)


@lru_cache(maxsize=4096)
def _parse_evm_address(address: str) -> bytes:
    from eth_utils.address import is_checksum_address

    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
        raise InvalidInput(f"{address!r} is not a 0x-prefixed 20-byte hex address")
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise InvalidInput(f"{address!r} has an invalid EIP-55 checksum")
    return bytes.fromhex(body)


@lru_cache(maxsize=4096)
def word_to_evm_address(word: bytes) -> str:
    """Inverse of :func:`evm_address_word`, returning the EIP-55 checksummed address.

    A pure function of its argument, so the last 4,096 answers are kept: the checksum is a
    keccak per call, and a coordinator formats the same holders' and endpoints' addresses
    for every transfer (issue 14: 6 % of its busy time under the batched soak). A refusal
    is not kept (it raises)."""
    from eth_utils.address import to_checksum_address

    if len(word) != 32 or any(word[:12]):
        raise InvalidInput("word does not hold an EVM address")
    return str(to_checksum_address(word[12:]))
