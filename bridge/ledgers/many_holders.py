"""Many holders of one security on one ledger in few calls (issue 14 item 4).

A kind whose reads coalesce (EVM with a lens: one ``holdersOf`` per 256 holders)
implements :class:`ManyHoldersReader`; for any other :func:`read_holders` falls back to
single :meth:`LedgerReader.holder_status` reads, a bounded number at a time. The relayer's
``GetHolders`` goes through :func:`read_holders`, so a kind that gains a many-holder read is
used without touching it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from bridge.domain.ids import SecurityId
from bridge.domain.legs import HolderStatus
from bridge.ledgers.adapter import LedgerReader
from bridge.ledgers.bounded import READ_CONCURRENCY, gather_bounded

__all__ = ["READ_CONCURRENCY", "ManyHoldersReader", "read_holders"]


@runtime_checkable
class ManyHoldersReader(Protocol):
    """A reader that answers many holders of one security at once."""

    async def holder_statuses(
        self, security: SecurityId, holders: Sequence[bytes]
    ) -> list[HolderStatus]:
        """Each of ``holders`` on ``security``, in order, as ``holder_status`` reads it."""
        ...


async def read_holders(
    reader: LedgerReader, security: SecurityId, holders: Sequence[bytes]
) -> list[HolderStatus]:
    """Every holder in ``holders`` (address words) on ``security``, in order, each at (at
    least) the ledger's finalized height as :meth:`LedgerReader.holder_status` reads it.
    Few calls where the kind supports it (:class:`ManyHoldersReader`), otherwise at most
    READ_CONCURRENCY single reads at a time. Raises what the reads raise (no partial
    answer)."""
    if isinstance(reader, ManyHoldersReader):
        return await reader.holder_statuses(security, holders)
    return await gather_bounded(lambda h: reader.holder_status(security, h), holders)
