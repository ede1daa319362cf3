"""Holder address formats per ledger kind, usable without a ledger connection."""

from __future__ import annotations

from typing import Protocol

from bridge.domain.errors import InvalidInput
from bridge.domain.ids import evm_address_word, word_to_evm_address


class AddressCodec(Protocol):
    """Parses and formats one ledger kind's native holder addresses as 32-byte words."""

    def parse(self, text: str) -> bytes:
        """Native text to word; InvalidInput naming the problem when malformed."""
        ...

    def format(self, word: bytes) -> str:
        """Word to native text."""
        ...


class EvmAddressCodec:
    """0x-prefixed 20-byte addresses; mixed case must be a valid EIP-55 checksum."""

    def parse(self, text: str) -> bytes:
        """Native text to word."""
        return evm_address_word(text)

    def format(self, word: bytes) -> str:
        """Word to EIP-55 text."""
        return word_to_evm_address(word)


def _codecs() -> dict[str, AddressCodec]:
    from bridge.ledgers.fabric.addresses import FabricAddressCodec

    return {"evm": EvmAddressCodec(), "fabric": FabricAddressCodec()}


_CODECS = _codecs()


def codec_for(kind: str) -> AddressCodec:
    """The codec for a ledger kind."""
    try:
        return _CODECS[kind]
    except KeyError:
        raise InvalidInput(f"no address format for ledger kind {kind!r}") from None
