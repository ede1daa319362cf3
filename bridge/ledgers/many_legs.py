"""Many legs of one ledger in few calls (issue 14 item 4).

A kind whose endpoint answers many legs per call implements :class:`ManyLegsReader`
(Fabric and CometBFT: the protocol's ``Legs`` query, 200 ids per evaluate); for any other
:func:`read_legs` falls back to single :meth:`LedgerReader.get_leg` reads, a bounded number
at a time. Callers that read several legs of one ledger (the relayer's ``GetLegs``, the
coordinator's sweep of failed transfers) go through :func:`read_legs`, so a kind that gains
a many-leg read is used without touching them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from bridge.domain.legs import Leg, LegStatus
from bridge.ledgers.adapter import LedgerReader
from bridge.ledgers.bounded import READ_CONCURRENCY, gather_bounded

__all__ = ["READ_CONCURRENCY", "ManyLegsReader", "read_legs"]


@runtime_checkable
class ManyLegsReader(Protocol):
    """A reader that answers many legs of one side per call."""

    async def get_legs(
        self, transfer_ids: Sequence[bytes], leg: Leg, height: int | None = None
    ) -> list[LegStatus]:
        """The legs of ``transfer_ids``, in order, each as ``get_leg`` would read it."""
        ...


async def read_legs(
    reader: LedgerReader, transfer_ids: Sequence[bytes], leg: Leg
) -> list[LegStatus]:
    """The ``leg`` side of every transfer in ``transfer_ids``, in order, each at (at least)
    the ledger's finalized height, as :meth:`LedgerReader.get_leg` reads it. One call per
    chunk where the kind supports it (:class:`ManyLegsReader`), otherwise at most
    READ_CONCURRENCY single reads at a time. Raises what the reads raise (no partial
    answer)."""
    if isinstance(reader, ManyLegsReader):
        return await reader.get_legs(transfer_ids, leg)
    return await gather_bounded(lambda t: reader.get_leg(t, leg), transfer_ids)
