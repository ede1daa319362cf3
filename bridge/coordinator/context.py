"""What the coordinator's layers share: their dependencies, the watchers of each transfer,
and the one way a transfer's state is recorded.

Admission (``admission.py``), event intake (``intake.py``), driver supervision
(``supervision.py``), the step engine (``stepper.py``) and the flow limits
(``flow_limits.py``) each hold the same :class:`EngineContext`; nothing else passes between
them but explicit calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from bridge.config import NetworkConfig
from bridge.coordinator.changes import Changes
from bridge.coordinator.clients import CommitteeClient, LedgerDomain, RelayerGateway
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.flow_queue import AHEAD_AT_TARGET
from bridge.coordinator.halts import HaltBook, Halted
from bridge.coordinator.metrics import observe_transition
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.records import StateWrite, TransferOrigin, TransferRecord
from bridge.coordinator.state_writes import StateWrites
from bridge.coordinator.store import TransferStore
from bridge.coordinator.unfinished_counts import UnfinishedCounts
from bridge.domain.ids import SecurityId
from bridge.domain.transfer import TransferState
from bridge.logfields import REASON, STATE, TRANSFER


@dataclass(slots=True, eq=False)
class EngineContext:
    """The coordinator's dependencies and watchers, shared by reference by its layers.

    Guarantees: one instance per coordinator; a replaced field (``relayers``, ``halts``) is
    seen by every layer at once, since each holds this object, never a copy of its fields.
    """

    network: NetworkConfig
    store: TransferStore
    relayers: dict[str, RelayerGateway]
    committee: CommitteeClient
    ttl: int
    max_backoff: float
    queue_recheck_max: float
    supply: SupplyPublisher | None
    sweep_every: float
    # ---- depository halt
    halts: HaltBook | None
    # ---- committee rotation (ADR 0009): the epoch each ledger accepts, read from it
    # through its relayer; None: the network file's committee everywhere (no rotation).
    epochs: EpochTracker | None
    domains: dict[str, LedgerDomain]
    ledger_by_word: dict[bytes, str]
    log: structlog.stdlib.BoundLogger
    watchers: dict[bytes, set[Changes]] = field(default_factory=dict)
    # ---- unfinished transfers per source ledger, and admission's bound on them
    unfinished: UnfinishedCounts = field(default_factory=UnfinishedCounts)
    # ---- flow limits: told of a transfer that ended FAILED before its prepare (it leaves
    # its lane without taking the capacity the transfers behind it counted)
    released: Callable[[TransferRecord], None] | None = None
    # ---- coalesced state writes (issue 14): with batching, the drivers' state changes
    # made at once are one store write (None: each its own)
    state_writes: StateWrites | None = None

    def notify(self, tid: bytes) -> None:
        """Wake every watch of ``tid`` to read its history again, marking ``tid`` as the
        transfer that changed."""
        for changes in self.watchers.get(tid, ()):
            changes.mark(tid)

    async def set_state(
        self, record: TransferRecord, state: TransferState, reason: str
    ) -> TransferRecord:
        """Record ``state`` and ``reason`` for ``record`` (nothing when both are unchanged);
        a new state is logged, counted and announced to the transfer's watchers. Returns the
        record as the store returned it from that write (read in the same transaction), or
        ``record`` itself when nothing was written.

        What counts as new is the state the store held at the write, not ``record``'s (a
        caller's copy can be stale: the stepper ends a transfer FAILED with the record it
        read when its step began), so two writers of one change count, release and
        announce it once (review helper-119 L3). A write whose outcome the caller does not
        see (an error, a cancellation: it may have committed) still marks the transfer for
        its watchers, which read it again (review helper-125). ``record`` must show the
        state the caller last read: when it shows ``state`` and ``reason`` already, nothing
        is written."""
        if record.state is state and record.reason == reason:
            return record
        # ---- flow limits: a new state (but QUEUED) ends the old wait, in the same
        # transaction as the state change (store.set_state), so no reader sees one
        # without the other now that store calls really suspend (ADR 0013).
        try:
            writer = self.state_writes or self.store
            write = await writer.set_state(record.transfer_id, state, reason, reason)
        except BaseException:
            self.notify(record.transfer_id)  # perhaps committed: the watchers read again
            raise
        previous = write.previous
        if previous is not state:
            if (
                state.terminal
                and not previous.terminal
                and record.origin is TransferOrigin.SUBMITTED
            ):
                self.unfinished.ended(record.request.source_ledger)
            # ---- flow limits: a transfer failed before its prepare wakes its lane behind
            # it: the queued transfers' estimates counted it ahead at the source (before
            # its lock) or at the target (SOURCE_LOCKED: an adoption whose source shows no
            # lock fails from there; review helper-128)
            released = self.released
            if released and state is TransferState.FAILED and previous in AHEAD_AT_TARGET:
                released(record)
            self.announce(write, reason)
        return write.record

    def announce(self, write: StateWrite, reason: str) -> None:
        """A new state the store recorded (``write``): observed in the phase metric, logged
        as a "transfer state" line, and announced to the transfer's watchers."""
        tid = write.record.transfer_id
        observe_transition(write)  # ---- observability (ADR 0016)
        self.log.info(
            "transfer state",
            **{TRANSFER: "0x" + tid.hex(), STATE: write.record.state.name, REASON: reason},
        )
        self.notify(tid)

    async def halt_gate(self, ledger: str, record: TransferRecord, what: str) -> None:
        """Raise Halted when the transfer's security is halted on ``ledger`` (the driver
        then waits with that reason and retries); the ledger enforces it regardless."""
        if self.halts is None:
            return
        security = record.request.security
        if await self.halts.halted(ledger, SecurityId(security)):
            raise Halted(ledger, security, what)
