"""Coalesced idempotency-key reads (issue 14): admission's per-item key lookups become one
store read per source ledger.

Admission looks up every submitted item's idempotency key before anything else it reads
from the store (:mod:`bridge.coordinator.admission`): a batch of thousands of items, or
many brokerages' single submissions at once, is one statement each. :class:`KeyReads`
coalesces them per source ledger with the step batcher's
:class:`~bridge.coordinator.coalesce.Coalescer` into ``TransferStore.get_by_keys``: a
lookup arriving with none of its ledger's in flight goes out at once (a lone submission is
answered as fast as before); lookups arriving meanwhile go out together next.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.records import TransferRecord
from bridge.coordinator.store import TransferStore

__all__ = ["MAX_KEYS_PER_READ", "KeyReads"]

MAX_KEYS_PER_READ = 500
"""Most keys one coalesced read asks for (one statement of the store's pages)."""


class KeyReads:
    """Looks up many admissions' idempotency keys at once.

    Guarantees: each call answers the transfer recorded under exactly its source ledger
    and key (None when there is none), as read by a store read that started after the call
    was made: never an answer from a read already in flight, so a key recorded before the
    call is seen as :meth:`TransferStore.get_by_key` would see it. SECURITY: lookups are
    coalesced per source ledger and the read is scoped to it, so one brokerage's keys never
    answer another's. A failed read fails every lookup it carried with the store's error
    (admission answers each as after a single failed read); an unreadable row
    (UnreadableRecord) fails only its own key's lookups.
    """

    def __init__(
        self,
        store: TransferStore,
        max_in_flight: int,
        max_items: int = MAX_KEYS_PER_READ,
        linger_ms: float = 0.0,
    ) -> None:
        self._store = store
        self._reads: Coalescer[str, str, TransferRecord | None] = Coalescer(
            self._flush, max_items, max_in_flight, linger_ms
        )

    async def get(self, source_ledger: str, idempotency_key: str) -> TransferRecord | None:
        """The transfer from ``source_ledger`` recorded under ``idempotency_key``, or None."""
        return await self._reads.call(source_ledger, idempotency_key)

    async def _flush(
        self, source_ledger: str, keys: Sequence[str]
    ) -> Sequence[TransferRecord | BaseException | None]:
        # A key whose row cannot be parsed is answered its UnreadableRecord by the same
        # read, so only that key's lookups fail and the ledger's other admissions go on.
        found = await self._store.get_by_keys(source_ledger, list(dict.fromkeys(keys)))
        return [found.get(k) for k in keys]

    async def close(self) -> None:
        """Cancel every read in flight (the admissions waiting on them are stopping too)."""
        await self._reads.close()
