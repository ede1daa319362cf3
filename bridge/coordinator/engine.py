"""The coordinator: accepts transfers and drives each to exactly one terminal state.

:class:`Coordinator` is a thin facade over one layer per module, sharing one
:class:`~bridge.coordinator.context.EngineContext`:

- ``admission.py``: a brokerage's request, from its signed instruction to a recorded
  transfer (idempotency, deadline bounds, supply holds, standing, flow capacity);
- ``intake.py``: relayer-delivered ledger events, the adoption of holder-direct locks and
  the confirmation of every lock on its ledger;
- ``supervision.py``: one supervised, level-triggered driver task per unfinished transfer;
- ``stepper.py``: the step engine (read both legs at finality and the durable decision,
  derive the next step, apply it idempotently, record the outcome);
- ``flow_limits.py``: the lanes' limits (ADR 0010) as the other layers apply them.

A crash anywhere is recovered by running the same loops again on start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

from bridge.aio import wait_event
from bridge.config import BatchingConfig, NetworkConfig
from bridge.coordinator.admission import Admission, Admitted
from bridge.coordinator.changes import Changes
from bridge.coordinator.clients import CommitteeClient, LedgerDomain, RelayerGateway
from bridge.coordinator.context import EngineContext
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.flow_limits import FlowLimits, FlowQueued, LaneFlow
from bridge.coordinator.flow_queue import QUEUE_RECHECK_MAX_S
from bridge.coordinator.halts import HaltBook
from bridge.coordinator.holder_reads import ALONE_BUDGET_S, HolderReads
from bridge.coordinator.intake import EventNotConfirmed, Intake
from bridge.coordinator.key_reads import KeyReads
from bridge.coordinator.leg_reads import LegReads
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.records import TransferRecord, TransferRequest, TransferUpdate
from bridge.coordinator.requests import Authorised, authorised
from bridge.coordinator.state_writes import StateWrites
from bridge.coordinator.step_batches import StepBatcher
from bridge.coordinator.stepper import ADOPTED_LOCK_GRACE_S, DEFINITIVE_LOCK_REFUSALS, Stepper
from bridge.coordinator.store import TransferStore
from bridge.coordinator.supervision import Supervisor, waiting_reason
from bridge.coordinator.unfinished_counts import UnfinishedCounts
from bridge.coordinator.wording import iso
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import BridgeError, NotFound, PreconditionFailed
from bridge.domain.ids import SecurityId
from bridge.domain.instructions import Instruction
from bridge.domain.legs import LedgerEvent, Leg, LegState
from bridge.domain.transfer import TransferState
from bridge.ledgers.factory import bridge_word_of
from bridge.logfields import TRANSFER, get_logger

__all__ = [
    "ADOPTED_LOCK_GRACE_S",
    "DEFINITIVE_LOCK_REFUSALS",
    "Coordinator",
    "EventNotConfirmed",
    "FlowQueued",
    "LaneFlow",
]


class Coordinator:
    """Accepts transfers and drives each to exactly one terminal state."""

    def __init__(
        self,
        network: NetworkConfig,
        store: TransferStore,
        relayers: Mapping[str, RelayerGateway],
        committee: CommitteeClient,
        transfer_ttl: int,
        max_backoff: float = 10.0,
        supply: SupplyPublisher | None = None,
        sweep_every: float = 15.0,
        halts: HaltBook | None = None,
        epochs: EpochTracker | None = None,
        batching: BatchingConfig | None = None,
        max_unfinished_per_ledger: int | None = None,
        rpc_timeout: float = ALONE_BUDGET_S,
        queue_recheck_max: float = QUEUE_RECHECK_MAX_S,
    ) -> None:
        domains = {
            name: LedgerDomain(name, lc.id.word, bridge_word_of(lc), lc.network_word)
            for name, lc in network.ledgers.items()
        }
        self._ctx = EngineContext(
            network=network,
            store=store,
            relayers=dict(relayers),
            committee=committee,
            ttl=transfer_ttl,
            max_backoff=max_backoff,
            queue_recheck_max=queue_recheck_max,
            supply=supply,
            sweep_every=sweep_every,
            halts=halts,  # ---- depository halt
            epochs=epochs,  # ---- committee rotation (ADR 0009)
            domains=domains,
            ledger_by_word={d.ledger_word: name for name, d in domains.items()},
            log=get_logger(),
            unfinished=UnfinishedCounts(max_unfinished_per_ledger),
        )
        # ---- coalesced lane reads (issue 14): with batching, many transfers share a read
        batched = batching if batching is not None and batching.enabled else None
        self._flow = FlowLimits(
            self._ctx,
            batched.max_in_flight if batched is not None else None,
            batched.read_linger_ms if batched is not None else 0.0,
            wake=self.wake,  # a queued transfer's driver (built below)
        )
        self._ctx.released = self._flow.released  # ---- flow limits: a departure wakes
        # ---- batched steps (issue 14): off unless configured
        self._batcher = StepBatcher(self._ctx, batched) if batched is not None else None
        # ---- coalesced leg reads (issue 14 item 4): with batching, the drivers' reads too
        self._reads = (
            LegReads(self._ctx, batched.max_in_flight, linger_ms=batched.read_linger_ms)
            if batched is not None
            else None
        )
        self._stepper = Stepper(self._ctx, self._flow, self._batcher, self._reads)
        self._drivers = Supervisor(
            self._ctx,
            self._stepper.advance,
            self._flow.note_flow_wait,
            self._recheck_failed,
            self._stepper.record_for_step,
        )
        self._intake = Intake(self._ctx, self._drivers)
        # ---- coalesced holder reads (issue 14 item 4): with batching, admission's too
        self._holders = (
            HolderReads(
                self._ctx,
                batched.max_in_flight,
                linger_ms=batched.read_linger_ms,
                alone_budget_s=rpc_timeout,  # one call's timeout for the whole split
            )
            if batched is not None
            else None
        )
        # ---- coalesced idempotency-key reads (issue 14): with batching, one store read
        # per source ledger for the keys of every admission waiting at once (no linger: a
        # store read is short, the keys that arrive during one go out together next)
        self._keys = KeyReads(self._ctx.store, batched.max_in_flight) if batched else None
        # ---- coalesced state writes (issue 14): with batching, the state changes of every
        # driver a flushed step answered are one store write
        if batched is not None:
            self._ctx.state_writes = StateWrites(self._ctx.store, batched.max_in_flight)
        self._admission = Admission(
            self._ctx,
            self._flow,
            self._drivers,
            self._holders,
            self._stepper.note_new,
            self._keys,
        )

    @property
    def unfinished(self) -> UnfinishedCounts:
        """Each source ledger's unfinished submissions as admission counts them, and the
        bound it holds them to (``max_unfinished_per_ledger``; the metrics read it)."""
        return self._ctx.unfinished

    @property
    def domains(self) -> Mapping[str, LedgerDomain]:
        """Per ledger, the words its claims and rotations are bound to."""
        return self._ctx.domains

    # The collaborators tests and tools reach (the context is the one copy of each).
    @property
    def _network(self) -> NetworkConfig:
        return self._ctx.network

    @property
    def _store(self) -> TransferStore:
        return self._ctx.store

    @property
    def _committee(self) -> CommitteeClient:
        return self._ctx.committee

    @property
    def _relayers(self) -> dict[str, RelayerGateway]:
        return self._ctx.relayers

    @_relayers.setter
    def _relayers(self, relayers: Mapping[str, RelayerGateway]) -> None:
        self._ctx.relayers = dict(relayers)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> int:
        """Resume every unfinished transfer from the log; returns how many.

        A supervisor then re-checks the log periodically and restarts any driver that is
        missing, so no unfinished transfer is left without one. It also re-reads the source
        leg of recently FAILED transfers, so a lock that lands after the coordinator
        concluded it could not (and whose event was missed) is still driven to an end.
        """
        self._stepper.forget_known()  # nothing assumed before a stop is used after it
        self._flow.forget_open()
        return await self._drivers.start()

    async def stop(self) -> None:
        """Cancel the drivers (their work is durable and resumes on the next start). Every
        part is stopped even when the caller is cancelled meanwhile."""
        self._stepper.forget_known()
        try:
            await self._drivers.stop()
        finally:  # the coalescers are closed even when the caller is cancelled meanwhile
            if self._batcher is not None:
                await self._batcher.close()
            if self._reads is not None:
                await self._reads.close()
            if self._holders is not None:
                await self._holders.close()
            if self._keys is not None:
                await self._keys.close()
            if self._ctx.state_writes is not None:
                await self._ctx.state_writes.close()
            await self._flow.close()

    def _spawn(self, tid: bytes) -> None:
        self._drivers.spawn(tid)

    async def _recheck_failed(self) -> None:
        await self._intake.recheck_failed()

    async def _resume_failed(self, record: TransferRecord, terms_hash: bytes, tx_id: str) -> None:
        await self._intake.resume_failed(record, terms_hash, tx_id)

    _waiting_reason = staticmethod(waiting_reason)

    def wake(self, tid: bytes) -> bool:
        """Make the transfer's driver re-read the ledgers now; False when it has none."""
        return self._drivers.wake(tid)

    # ---- depository halt
    def set_halts(self, halts: HaltBook) -> None:
        """Consult ``halts`` before locking, preparing and minting (see
        :meth:`EngineContext.halt_gate`)."""
        self._ctx.halts = halts

    def wake_all(self) -> None:
        """Make every driver re-read the ledgers now (a depository order changed the halts)."""
        self._drivers.wake_all()

    async def halted_on(self, record: TransferRecord) -> list[str]:
        """The ledgers of ``record`` where its security is halted now (none when terminal)."""
        halts = self._ctx.halts
        if halts is None or record.state.terminal:
            return []
        security = SecurityId(record.request.security)
        ledgers = (record.request.source_ledger, record.request.target_ledger)
        return [name for name in ledgers if await halts.halted(name, security)]

    # -- the brokerage API -----------------------------------------------------------------
    async def submit(
        self, request: TransferRequest, instruction: Instruction
    ) -> tuple[TransferRecord, bool]:
        """Record a new transfer (or return the one with the same idempotency key from the
        same source ledger); True when it is new.

        Nothing is recorded for a refused request; the instruction is authenticated before
        any recorded key is read (the checks, in order, and their SECURITY notes are on
        :meth:`Admission.submit <bridge.coordinator.admission.Admission.submit>`).
        Pre-checks the sender's balance and standing and that both tokens are registered
        and not paused; the recipient's eligibility is decided on the target ledger.
        """
        return await self._admission.submit(request, instruction)

    async def check_submit(
        self,
        request: TransferRequest,
        instruction: Instruction,
        auth: Authorised | None = None,
    ) -> Admitted:
        """Every check of :meth:`submit`, recording nothing (the first half of it, for a
        batch whose items are checked concurrently and recorded in item order); ``auth``:
        the instruction as :meth:`authorise_submit` authenticated it."""
        return await self._admission.check(request, instruction, auth)

    def authorise_submit(self, request: TransferRequest, instruction: Instruction) -> Authorised:
        """Authenticate ``request``'s instruction (registered instructor, signature over
        exactly its terms) without reading anything: the first check of :meth:`submit`."""
        return authorised(self._ctx.network, request, instruction)

    async def record_submit(self, admitted: Admitted) -> tuple[TransferRecord, bool]:
        """Record what :meth:`check_submit` accepted and spawn its driver (the second half
        of :meth:`submit`); True when new."""
        return await self._admission.record(admitted)

    async def record_submits(
        self, admitted: Sequence[Admitted]
    ) -> list[tuple[TransferRecord, bool] | BridgeError]:
        """:meth:`record_submit` for many, in order, in one store transaction
        (:meth:`Admission.record_many`): per item its record and whether it is new, or its
        own error (Conflict, ResourceExhausted)."""
        return await self._admission.record_many(admitted)

    # ---- flow limits (ADR 0010)
    async def lane_flows(self, security: str) -> list[LaneFlow]:
        """Every lane (source -> target) of ``security`` between the connected ledgers: both
        ledgers' flow status (or why it could not be read) and what is queued on it."""
        return await self._flow.lane_flows(security)

    async def get(self, tid: bytes) -> TransferRecord:
        """The transfer or NotFound."""
        record = await self._ctx.store.get(tid)
        if record is None:
            raise NotFound(f"transfer 0x{tid.hex()} does not exist")
        return record

    async def watch(self, tid: bytes) -> AsyncIterator[TransferUpdate]:
        """Every update of the transfer from the first, ending after the terminal one."""
        await self.get(tid)
        changed = Changes()
        self.subscribe([tid], changed)
        try:
            last = 0
            while True:
                changed.take()
                for update in await self._ctx.store.history(tid, last):
                    last = update.sequence
                    yield update
                    if update.state.terminal:
                        return
                # The timeout only bounds the wait should a notification ever be missed.
                await wait_event(changed.event, 5.0)
        finally:
            self.unsubscribe([tid], changed)

    # ---- batch API (batchfix): one subscription for many transfers (WatchBatch)
    def subscribe(self, tids: Iterable[bytes], changes: Changes) -> None:
        """Mark in ``changes`` each of ``tids`` that changes state (until unsubscribed)."""
        for tid in tids:
            self._ctx.watchers.setdefault(tid, set()).add(changes)

    def unsubscribe(self, tids: Iterable[bytes], changes: Changes) -> None:
        """Stop marking ``tids`` in ``changes`` (a no-op for those it was not marking)."""
        watchers = self._ctx.watchers
        for tid in tids:
            waiting = watchers.get(tid)
            if waiting is not None:
                waiting.discard(changes)
                if not waiting:
                    del watchers[tid]

    # -- operator tooling --------------------------------------------------------------------
    async def stuck(self, min_age: float, limit: int) -> list[TransferRecord]:
        """Unfinished transfers older than ``min_age`` seconds, oldest first (each record's
        ``reason`` says why it waits)."""
        return await self._ctx.store.stuck(time.time() - min_age, limit)

    async def retry(self, tid: bytes) -> TransferRecord:
        """Re-read the ledgers and try the next step of an unfinished transfer now."""
        record = await self.get(tid)
        if record.state.terminal:
            raise PreconditionFailed(f"transfer is {record.state.name}; nothing to retry")
        self._spawn(tid)
        self.wake(tid)
        self._ctx.log.warning("operator retry", **{TRANSFER: "0x" + tid.hex()})
        return record

    async def abort(self, tid: bytes) -> TransferRecord:
        """Abort through a certified ABORT where the ledgers allow one; otherwise raise
        PreconditionFailed saying when (or that) they will.

        Never moves units itself: the driver gathers the ABORT certificate (members sign it
        only when the target refused or expired, or the source was released) and applies it.
        """
        ctx = self._ctx
        record = await self.get(tid)
        if record.state is TransferState.ABORTED or record.state is TransferState.ABORTING:
            return record
        if record.state.terminal:
            raise PreconditionFailed(f"transfer is {record.state.name}; it cannot be aborted")
        decision = await ctx.store.decision(tid)
        if decision is not None and decision.kind is ClaimKind.COMMIT:
            raise PreconditionFailed("COMMIT is certified: the transfer completes")
        src = ctx.relayers[record.request.source_ledger]
        dst = ctx.relayers[record.request.target_ledger]
        source, target = await asyncio.gather(
            src.get_leg(tid, Leg.OUTBOUND), dst.get_leg(tid, Leg.INBOUND)
        )
        if target.state in (LegState.PREPARED, LegState.MINTED) or source.state is (
            LegState.BURNED
        ):
            raise PreconditionFailed(
                f"the target leg is {target.state.name}: a prepared transfer always commits"
            )
        refused = target.state in (LegState.REJECTED, LegState.EXPIRED, LegState.ABORTED)
        if not refused and source.state is not LegState.RELEASED:
            if source.state is LegState.NONE:
                raise PreconditionFailed(
                    "nothing is locked on the source yet; the transfer fails by itself if the"
                    " lock is refused"
                )
            if time.time() <= record.terms.deadline:
                raise PreconditionFailed(
                    f"the target may still prepare until the deadline"
                    f" {iso(record.terms.deadline)}; after it the transfer aborts by itself"
                )
        ctx.log.warning("operator abort", **{TRANSFER: "0x" + tid.hex()})
        self._spawn(tid)
        self.wake(tid)
        return record

    # -- ledger events ---------------------------------------------------------------------
    async def on_events(self, ledger: str, events: list[LedgerEvent], scanned: int) -> int:
        """Record relayer-delivered events (deduplicated) and wake the transfers they touch.

        A LOCKED event for an unknown transfer (a holder locking directly on-chain) is
        adopted as a new transfer only after the source ledger, read at finality through
        its relayer, shows that lock with the same terms hash. An event that does not check
        out is logged and neither adopted nor recorded. Raises Unavailable (the relayer
        delivers the batch again) when the ledger cannot be read to check an event.
        """
        return await self._intake.on_events(ledger, events, scanned)
