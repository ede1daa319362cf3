"""Holder addresses on the Fabric bridge chaincode: ``0x`` + 20 bytes of hex.

The chaincode keys holders by a 20-byte account id (the same shape as an EVM address, so one
person can use one id on every ledger), without a checksum: input is case-insensitive and
output is always lowercase. The 32-byte word is 12 zero bytes followed by the 20 bytes.
"""

from __future__ import annotations

import re

from bridge.domain.errors import InvalidInput

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_PAD = bytes(12)


class FabricAddressCodec:
    """Parses and formats Fabric holder addresses; a round trip is the identity on words."""

    def parse(self, text: str) -> bytes:
        """``0x`` + 40 hex digits (any case) to its 32-byte word; InvalidInput otherwise."""
        if not isinstance(text, str) or not _ADDRESS_RE.fullmatch(text):
            raise InvalidInput(
                f"fabric address {text!r} must be 0x followed by 40 hexadecimal digits"
            )
        return _PAD + bytes.fromhex(text[2:])

    def format(self, word: bytes) -> str:
        """A 32-byte word whose first 12 bytes are zero to lowercase ``0x`` + 40 hex."""
        if not isinstance(word, bytes | bytearray) or len(word) != 32:
            raise InvalidInput("an address word is 32 bytes")
        if bytes(word[:12]) != _PAD:
            raise InvalidInput("word does not hold a 20-byte fabric address")
        return "0x" + bytes(word[12:]).hex()
