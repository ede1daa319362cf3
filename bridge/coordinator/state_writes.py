"""Coalesced state writes (issue 14): the drivers' per-transfer state changes become one
store write per batch of them.

With step batching, a flushed step answers many drivers in the same loop turn, and each
then records its transfer's new state (``EngineContext.set_state``). :class:`StateWrites`
coalesces those writes with the step batcher's
:class:`~bridge.coordinator.coalesce.Coalescer` into ``TransferStore.set_states``: one
write job with a handful of multi-row statements, where each change took a job, a
savepoint and four statements. A write arriving with none in flight goes out at once (a
lone transfer's step is recorded as fast as before); those arriving meanwhile go out
together next.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.records import StateChange, StateWrite
from bridge.coordinator.store import TransferStore
from bridge.domain.transfer import TransferState

__all__ = ["MAX_CHANGES_PER_WRITE", "StateWrites"]

MAX_CHANGES_PER_WRITE = 500
"""Most state changes one coalesced write carries (one page of the store's statements)."""


class StateWrites:
    """Records many transfers' state changes at once.

    Guarantees: each call is answered what ``TransferStore.set_state`` would have answered
    it (the record as stored after its change, and the state held just before it, read in
    the same transaction), as written by a store write that started after the call was
    made; changes are written in the order they were made, so two changes of one transfer
    are applied in that order. A write that fails fails every change it carried with the
    store's error (each caller then treats its change as perhaps made, as after a failed
    single write); an unknown transfer (KeyError) or an unreadable row (UnreadableRecord)
    fails only its own changes. A caller cancelled before its change went out is dropped
    (nothing written for it); one cancelled after leaves the write to run on.
    """

    def __init__(
        self, store: TransferStore, max_in_flight: int, max_items: int = MAX_CHANGES_PER_WRITE
    ) -> None:
        self._store = store
        self._writes: Coalescer[None, StateChange, StateWrite] = Coalescer(
            self._flush, max_items, max_in_flight
        )

    async def set_state(
        self, transfer_id: bytes, state: TransferState, reason: str, detail: str
    ) -> StateWrite:
        """``TransferStore.set_state``, written together with the changes made meanwhile."""
        return await self._writes.call(None, StateChange(transfer_id, state, reason, detail))

    async def _flush(
        self, _: None, changes: Sequence[StateChange]
    ) -> Sequence[StateWrite | BaseException]:
        return await self._store.set_states(changes)

    async def close(self) -> None:
        """Cancel every write in flight (the drivers waiting on them are stopping too; a
        write already handed to the database still commits or rolls back as a whole)."""
        await self._writes.close()
