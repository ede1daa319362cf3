"""Holder address formats per ledger kind, usable without a ledger connection."""

from __future__ import annotations

from typing import Protocol

from bridge.ledgers.evm.addresses import EvmAddressCodec

__all__ = ["AddressCodec", "EvmAddressCodec", "codec_for"]


class AddressCodec(Protocol):
    """Parses and formats one ledger kind's native holder addresses as 32-byte words."""

    def parse(self, text: str) -> bytes:
        """Native text to word; InvalidInput naming the problem when malformed."""
        ...

    def format(self, word: bytes) -> str:
        """Word to native text."""
        ...


def codec_for(kind: str) -> AddressCodec:
    """The codec of a registered ledger kind; InvalidInput for an unknown kind."""
    from bridge.ledgers.kinds import get_kind

    return get_kind(kind).address_codec()
