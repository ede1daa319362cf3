"""Holder addresses on EVM ledgers: ``0x`` + 20 bytes, EIP-55 checksummed when mixed case."""

from __future__ import annotations

from bridge.domain.ids import evm_address_word, word_to_evm_address


class EvmAddressCodec:
    """0x-prefixed 20-byte addresses; mixed case must be a valid EIP-55 checksum."""

    def parse(self, text: str) -> bytes:
        """Native text to word."""
        return evm_address_word(text)

    def format(self, word: bytes) -> str:
        """Word to EIP-55 text."""
        return word_to_evm_address(word)
