"""The two-phase-commit driver: one supervised task per unfinished transfer.

Each task loops: read both legs at finality and the durable decision, derive the next
step (:func:`bridge.domain.transfer.next_step`), apply it idempotently, record the
outcome. A crash anywhere is recovered by running the same loop again on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.config import NetworkConfig
from bridge.coordinator.clients import CommitteeClient, LedgerDomain, RelayerGateway
from bridge.coordinator.epochs import RECERTIFY_REASONS, EpochTracker
from bridge.coordinator.flow_queue import AHEAD_AT_SOURCE, AHEAD_AT_TARGET, admit, never_fits
from bridge.coordinator.halts import HaltBook, Halted
from bridge.coordinator.metrics import observe_transition
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.records import (
    Decision,
    TransferOrigin,
    TransferRecord,
    TransferRequest,
    TransferUpdate,
)
from bridge.coordinator.requests import (
    ADOPTED_KEY_PREFIX,
    authorise_instruction,
    check_deadline,
)
from bridge.coordinator.store import TransferStore
from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee
from bridge.domain.errors import (
    BridgeError,
    Conflict,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.flow import FlowStatus, WaitReason
from bridge.domain.ids import SecurityId
from bridge.domain.instructions import Instruction, is_instructed
from bridge.domain.legs import (
    Action,
    LedgerEvent,
    Leg,
    LegState,
    LegStatus,
    RejectReason,
    SignatureSet,
)
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import NextStep, StepKind, TransferState, next_step
from bridge.ledgers.addresses import codec_for
from bridge.ledgers.factory import bridge_word_of
from bridge.ledgers.kinds import holder_direct_locks
from bridge.logfields import ERROR, LEDGER, REASON, STATE, TRANSFER, TX, get_logger
from bridge.obs.tracing import step_span

_STEP_NAMES = {
    (Action.LOCK, Leg.OUTBOUND): "lock",
    (Action.PREPARE, Leg.INBOUND): "prepare",
    (Action.MARK_EXPIRED, Leg.INBOUND): "expire",
    (Action.COMMIT, Leg.OUTBOUND): "burn",
    (Action.COMMIT, Leg.INBOUND): "mint",
    (Action.ABORT, Leg.OUTBOUND): "release",
    (Action.ABORT, Leg.INBOUND): "abort",
}


# Contract refusals that prove the lock did not and cannot happen for these terms.
DEFINITIVE_LOCK_REFUSALS: frozenset[ErrorReason] = frozenset(
    {
        ErrorReason.INSUFFICIENT_BALANCE,
        ErrorReason.MISSING_INSTRUCTION,
        ErrorReason.INVALID_INSTRUCTION,
        ErrorReason.HOLDER_FROZEN,
        ErrorReason.HOLDER_NOT_ELIGIBLE,
        ErrorReason.TOKEN_PAUSED,
        ErrorReason.DEADLINE_PASSED,
        ErrorReason.UNKNOWN_SECURITY,
        ErrorReason.ZERO_AMOUNT,
        # Not WrongLedger: our terms come from configuration, so it means a configuration
        # mismatch, which an operator fixes; the transfer waits with the reason.
    }
)


# Outbound leg states that prove a lock with the leg's terms hash happened (a leg leaves
# LOCKED only for BURNED or RELEASED, keeping its terms hash).
_LOCKED_OR_AFTER = frozenset({LegState.LOCKED, LegState.BURNED, LegState.RELEASED})

ADOPTED_LOCK_GRACE_S = 120
"""How long past its deadline an adopted transfer whose source shows no lock waits before
it is FAILED (a lock cannot land after the deadline on EVM; a later one resumes it)."""


class EventNotConfirmed(PreconditionFailed):
    """A LOCKED event that the source ledger, read at finality, does not confirm."""


# ---- flow limits (ADR 0010)
class FlowQueued(Exception):
    """The transfer was (re)queued on a lane's limit; its driver checks again later."""

    def __init__(self, detail: str, retry_in: int) -> None:
        super().__init__(detail)
        self.retry_in = retry_in


@dataclass(frozen=True, slots=True)
class LaneFlow:
    """One direction of travel of a security: both ledgers' limits and its queue."""

    security: str
    source_ledger: str
    target_ledger: str
    source: FlowStatus | None
    target: FlowStatus | None
    queued: int
    queued_units: int
    oldest_queued_at: float | None
    error: str = ""


def _refusal(target: LegState, reason_code: int) -> str:
    """Why a target leg refused, in words ('' when it did not)."""
    if target is LegState.REJECTED or reason_code:
        return f"target rejected: {RejectReason.describe(reason_code)}"
    if target is LegState.EXPIRED:
        return "target did not prepare before the deadline"
    return ""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    ) -> None:
        self._network = network
        # ---- committee rotation (ADR 0009): the epoch each ledger accepts, read from it
        # through its relayer; None: the network file's committee everywhere (no rotation).
        self._epochs = epochs
        self._store = store
        self._relayers = dict(relayers)
        self._committee = committee
        self._ttl = transfer_ttl
        self._max_backoff = max_backoff
        self._supply = supply
        self._sweep_every = sweep_every
        self._halts = halts  # ---- depository halt
        self._domains = {
            name: LedgerDomain(name, lc.id.word, bridge_word_of(lc), lc.network_word)
            for name, lc in network.ledgers.items()
        }
        self._ledger_by_word = {d.ledger_word: name for name, d in self._domains.items()}
        self._tasks: dict[bytes, asyncio.Task[None]] = {}
        self._wakeups: dict[bytes, asyncio.Event] = {}
        self._watchers: dict[bytes, set[asyncio.Event]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._log = get_logger()

    @property
    def domains(self) -> Mapping[str, LedgerDomain]:
        """Per ledger, the words its claims and rotations are bound to."""
        return self._domains

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> int:
        """Resume every unfinished transfer from the log; returns how many.

        A supervisor then re-checks the log periodically and restarts any driver that is
        missing, so no unfinished transfer is left without one. It also re-reads the source
        leg of recently FAILED transfers, so a lock that lands after the coordinator
        concluded it could not (and whose event was missed) is still driven to an end.
        """
        resumed = await self._respawn_unfinished()
        self._log.info("coordinator resumed unfinished transfers", count=resumed)
        self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")
        return resumed

    async def _respawn_unfinished(self) -> int:
        unfinished = await self._store.unfinished()
        for record in unfinished:
            self._spawn(record.transfer_id)
        return len(unfinished)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            try:
                await self._respawn_unfinished()
                await self._recheck_failed()
            except Exception:
                self._log.exception("supervisor sweep failed")

    async def _recheck_failed(self) -> None:
        # A lock can land until the transfer's deadline (later on Fabric, which has no clock):
        # look back one transfer lifetime and ten minutes more.
        since = time.time() - self._ttl - 600
        for record in await self._store.failed_since(since):
            relayer = self._relayers[record.request.source_ledger]
            try:
                source = await relayer.get_leg(record.transfer_id, Leg.OUTBOUND)
            except BridgeError:
                continue  # the ledger is unreachable: the next sweep tries again
            if source.state is LegState.LOCKED:
                await self._resume_failed(record, source.terms_hash, "")

    async def stop(self) -> None:
        """Cancel the drivers (their work is durable and resumes on the next start)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _spawn(self, tid: bytes) -> None:
        task = self._tasks.get(tid)
        if task is None or task.done():
            self._wakeups[tid] = asyncio.Event()
            self._tasks[tid] = asyncio.create_task(
                self._drive(tid), name=f"transfer-{tid.hex()[:12]}"
            )

    def wake(self, tid: bytes) -> None:
        """Make the transfer's driver re-read the ledgers now."""
        ev = self._wakeups.get(tid)
        if ev is not None:
            ev.set()

    # ---- depository halt
    def set_halts(self, halts: HaltBook) -> None:
        """Consult ``halts`` before locking, preparing and minting (see :meth:`_halt_gate`)."""
        self._halts = halts

    def wake_all(self) -> None:
        """Make every driver re-read the ledgers now (a depository order changed the halts)."""
        for ev in self._wakeups.values():
            ev.set()

    async def halted_on(self, record: TransferRecord) -> list[str]:
        """The ledgers of ``record`` where its security is halted now (none when terminal)."""
        if self._halts is None or record.state.terminal:
            return []
        security = SecurityId(record.request.security)
        ledgers = (record.request.source_ledger, record.request.target_ledger)
        return [name for name in ledgers if await self._halts.halted(name, security)]

    async def _halt_gate(self, ledger: str, record: TransferRecord, what: str) -> None:
        """Raise Halted when the transfer's security is halted on ``ledger`` (the driver
        then waits with that reason and retries); the ledger enforces it regardless."""
        if self._halts is None:
            return
        security = record.request.security
        if await self._halts.halted(ledger, SecurityId(security)):
            raise Halted(ledger, security, what)

    # -- the brokerage API -----------------------------------------------------------------
    async def submit(
        self, request: TransferRequest, instruction: Instruction
    ) -> tuple[TransferRecord, bool]:
        """Record a new transfer (or return the one with the same idempotency key from the
        same source ledger).

        SECURITY: the brokerage's instruction is checked first (registered instructor for
        the source ledger, its signature over exactly these terms), before any recorded key
        is looked up; then, for a new transfer, its deadline bounds (a retry of a recorded
        one may come after its deadline). Keys are scoped per source ledger, so one
        brokerage can neither probe nor squat another's. Nothing is recorded for a refused
        instruction; the same instruction under a new key is a Conflict. The coordinator
        chooses no term: the nonce and the deadline are the instructor's. Pre-checks the
        sender's balance and standing and that both tokens are registered and not paused;
        the recipient's eligibility is decided on the target ledger.
        """
        # SECURITY: authenticate the instruction (registered instructor, signature) before
        # any recorded key is read: a caller without one learns nothing about keys in use.
        terms = authorise_instruction(self._network, request, instruction)
        existing = await self._existing(request)
        if existing is not None:
            # A retry: the same signed terms as recorded (its deadline may have passed since).
            if existing.terms != terms:
                raise Conflict("idempotency_key was already used with other instructed terms")
            return existing, False
        now = time.time()
        check_deadline(instruction, now=now, ttl=self._ttl)
        if self._supply is not None:
            refusal = await self._supply.refusal(
                request.security, (request.source_ledger, request.target_ledger)
            )
            if refusal is not None:
                raise PreconditionFailed(refusal)
        await self._precheck(request)
        await self._flow_precheck(request)
        record = TransferRecord(
            transfer_id=terms.transfer_id,
            request=request,
            terms=terms,
            state=TransferState.SUBMITTED,
            reason="locking units on the source ledger",
            created_at=now,
            updated_at=now,
            instruction=instruction.signature,
        )
        stored, created = await self._store.create(record)
        if not created:
            if stored.request.fingerprint() != request.fingerprint() or stored.terms != terms:
                raise Conflict("idempotency_key was already used for a different transfer")
            return stored, False
        self._log.info("transfer accepted", **{TRANSFER: "0x" + stored.transfer_id.hex()})
        self._spawn(stored.transfer_id)
        return stored, True

    async def _existing(self, request: TransferRequest) -> TransferRecord | None:
        record = await self._store.get_by_key(request.source_ledger, request.idempotency_key)
        if record is not None and record.request.fingerprint() != request.fingerprint():
            raise Conflict("idempotency_key was already used for a different transfer")
        return record

    async def _precheck(self, request: TransferRequest) -> None:
        src = self._relayers[request.source_ledger]
        dst = self._relayers[request.target_ledger]
        try:
            sender, target = await asyncio.gather(
                src.holder(request.security, request.sender),
                dst.holder(request.security, request.recipient),
            )
        except LedgerRejected as exc:
            raise PreconditionFailed(_generic(exc)) from exc
        src_name, dst_name = request.source_ledger, request.target_ledger
        # The ledger refusal each failed check predicts travels as the ErrorInfo reason.
        if not sender.security_registered:
            raise PreconditionFailed(
                f"security {request.security} is not issued on ledger {src_name}",
                ErrorReason.UNKNOWN_SECURITY,
                src_name,
            )
        if not target.security_registered:
            raise PreconditionFailed(
                f"security {request.security} is not issued on ledger {dst_name}",
                ErrorReason.UNKNOWN_SECURITY,
                dst_name,
            )
        if sender.paused:
            raise PreconditionFailed(
                f"{request.security} is paused on {src_name}", ErrorReason.TOKEN_PAUSED, src_name
            )
        if target.paused:
            raise PreconditionFailed(
                f"{request.security} is paused on {dst_name}", ErrorReason.TOKEN_PAUSED, dst_name
            )
        if sender.frozen:
            raise PreconditionFailed(
                f"sender is frozen on {src_name}", ErrorReason.HOLDER_FROZEN, src_name
            )
        if not sender.eligible:
            raise PreconditionFailed(
                f"sender is not an eligible holder on {src_name}",
                ErrorReason.HOLDER_NOT_ELIGIBLE,
                src_name,
            )
        if sender.balance < request.amount:
            # SECURITY (review 2 finding 6): the reason only, never the holder's balance
            # (any brokerage may name any sender).
            raise PreconditionFailed(
                f"insufficient balance on {src_name}", ErrorReason.INSUFFICIENT_BALANCE, src_name
            )

    # ---- flow limits (ADR 0010)
    async def _lane_status(self, request: TransferRequest) -> tuple[FlowStatus, FlowStatus]:
        """The source's limit towards the target and the target's from the source."""
        src = self._relayers[request.source_ledger]
        dst = self._relayers[request.target_ledger]
        source, target = await asyncio.gather(
            src.flow_status(request.security, request.target_ledger),
            dst.flow_status(request.security, request.source_ledger),
        )
        return source, target

    async def _flow_precheck(self, request: TransferRequest) -> None:
        """Refuse (PreconditionFailed) an amount above a lane capacity: it could never go."""
        try:
            source, target = await self._lane_status(request)
        except LedgerRejected as exc:
            raise PreconditionFailed(_generic(exc)) from exc
        refusal = never_fits(request.amount, source, target)
        if refusal is not None:
            raise PreconditionFailed(refusal)

    async def _flow_gate(self, record: TransferRecord) -> bool:
        """Before the lock: go (False), queue (raises FlowQueued), or FAILED (True).

        Level-triggered: everything it needs is re-read each time (both ledgers' buckets
        through the relayers, the lane's earlier transfers from the store), so a restarted
        coordinator finds its queue in the store and resumes it in the same order. A queued
        transfer is never locked after its deadline: it ends FAILED with the reason and
        nothing moved (the deadline is the instructor's signed term; the bridge cannot
        extend it, and a lock that late could only expire and be released).
        """
        tid = record.transfer_id
        source, target = await self._lane_status(record.request)
        if not (source.outbound.limited or target.inbound.limited):
            await self._clear_wait(record)
            return False
        amount = record.request.amount
        refusal = never_fits(amount, source, target)
        if refusal is not None:  # the admin lowered a capacity after the submission
            await self._set_state(record, TransferState.FAILED, f"not locked: {refusal}")
            await self._clear_wait(record)
            return True
        verdict = admit(
            amount,
            await self._store.lane_backlog(tid, AHEAD_AT_SOURCE),
            await self._store.lane_backlog(tid, AHEAD_AT_TARGET),
            source,
            target,
        )
        if verdict.go:
            await self._clear_wait(record)
            return False
        if time.time() > record.terms.deadline:
            await self._set_state(
                record,
                TransferState.FAILED,
                f"queued until its deadline passed, nothing moved: {verdict.detail}",
            )
            await self._clear_wait(record)
            return True
        not_before = time.time() + verdict.retry_in
        if record.wait_reason is not verdict.reason or record.state is not TransferState.QUEUED:
            await self._store.set_wait(tid, verdict.reason, not_before)
        await self._set_state(record, TransferState.QUEUED, f"queued: {verdict.detail}")
        raise FlowQueued(verdict.detail, verdict.retry_in)

    async def _hold_for_delay(
        self,
        record: TransferRecord,
        step: NextStep,
        decision: Decision | None,
        source: LegStatus,
        target: LegStatus,
    ) -> None:
        """Before certifying or applying COMMIT: wait (raises FlowQueued) while a leg of a
        large transfer is inside its ledger's delay. Members refuse COMMIT and the ledgers
        refuse the burn and mint until then; asking earlier would only collect refusals."""
        committing = (step.step is StepKind.CERTIFY and step.claim is ClaimKind.COMMIT) or (
            step.step is StepKind.APPLY and decision is not None
            and decision.kind is ClaimKind.COMMIT
        )  # fmt: skip
        held = max(source.not_before, target.not_before) if committing else 0
        now = time.time()
        if held <= now:
            if record.wait_reason is WaitReason.LARGE_TRANSFER_DELAY:
                await self._store.set_wait(record.transfer_id, WaitReason.NONE, 0.0)
            return
        reason = (
            f"large transfer: held by the ledgers' delay until {_iso(held)}"
            " (above the lane's large-transfer allowance); it commits then"
        )
        await self._set_state(record, step.state, reason)
        if record.wait_reason is not WaitReason.LARGE_TRANSFER_DELAY or record.not_before != held:
            await self._store.set_wait(
                record.transfer_id, WaitReason.LARGE_TRANSFER_DELAY, float(held)
            )
        raise FlowQueued(reason, max(1, int(held - now)))

    async def _clear_wait(self, record: TransferRecord) -> None:
        if record.wait_reason is not WaitReason.NONE:
            await self._store.set_wait(record.transfer_id, WaitReason.NONE, 0.0)

    async def _note_flow_wait(self, tid: bytes, exc: BaseException) -> None:
        """Make a ledger's large-transfer delay readable: wait reason and not-before."""
        if isinstance(exc, LedgerRejected) and exc.reason == ErrorReason.TOO_EARLY:
            at = exc.not_before  # the ledger's typed figure (ADR 0015), never message text
            await self._store.set_wait(tid, WaitReason.LARGE_TRANSFER_DELAY, float(at or 0))

    async def lane_flows(self, security: str) -> list[LaneFlow]:
        """Every lane (source -> target) of ``security`` between the connected ledgers: both
        ledgers' flow status (or why it could not be read) and what is queued on it."""
        names = sorted(self._relayers)
        lanes: list[LaneFlow] = []
        for src in names:
            for dst in names:
                if src == dst:
                    continue
                request = TransferRequest("", security, src, dst, "", "", 0)
                source: FlowStatus | None = None
                target: FlowStatus | None = None
                error = ""
                try:
                    source, target = await self._lane_status(request)
                except BridgeError as exc:
                    error = str(exc)
                count, units, oldest = await self._store.queued_on_lane(security, src, dst)
                lanes.append(
                    LaneFlow(security, src, dst, source, target, count, units, oldest, error)
                )
        return lanes

    async def get(self, tid: bytes) -> TransferRecord:
        """The transfer or NotFound."""
        record = await self._store.get(tid)
        if record is None:
            raise NotFound(f"transfer 0x{tid.hex()} does not exist")
        return record

    async def watch(self, tid: bytes) -> AsyncIterator[TransferUpdate]:
        """Every update of the transfer from the first, ending after the terminal one."""
        await self.get(tid)
        changed = asyncio.Event()
        self._watchers.setdefault(tid, set()).add(changed)
        try:
            last = 0
            while True:
                changed.clear()
                for update in await self._store.history(tid, last):
                    last = update.sequence
                    yield update
                    if update.state.terminal:
                        return
                # The timeout only bounds the wait should a notification ever be missed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=5.0)
        finally:
            waiting = self._watchers.get(tid)
            if waiting is not None:
                waiting.discard(changed)
                if not waiting:
                    del self._watchers[tid]

    def _notify(self, tid: bytes) -> None:
        for event in self._watchers.get(tid, ()):
            event.set()

    # -- operator tooling --------------------------------------------------------------------
    async def stuck(self, min_age: float, limit: int) -> list[TransferRecord]:
        """Unfinished transfers older than ``min_age`` seconds, oldest first (each record's
        ``reason`` says why it waits)."""
        return await self._store.stuck(time.time() - min_age, limit)

    async def retry(self, tid: bytes) -> TransferRecord:
        """Re-read the ledgers and try the next step of an unfinished transfer now."""
        record = await self.get(tid)
        if record.state.terminal:
            raise PreconditionFailed(f"transfer is {record.state.name}; nothing to retry")
        self._spawn(tid)
        self.wake(tid)
        self._log.warning("operator retry", **{TRANSFER: "0x" + tid.hex()})
        return record

    async def abort(self, tid: bytes) -> TransferRecord:
        """Abort through a certified ABORT where the ledgers allow one; otherwise raise
        PreconditionFailed saying when (or that) they will.

        Never moves units itself: the driver gathers the ABORT certificate (members sign it
        only when the target refused or expired, or the source was released) and applies it.
        """
        record = await self.get(tid)
        if record.state is TransferState.ABORTED or record.state is TransferState.ABORTING:
            return record
        if record.state.terminal:
            raise PreconditionFailed(f"transfer is {record.state.name}; it cannot be aborted")
        decision = await self._store.decision(tid)
        if decision is not None and decision.kind is ClaimKind.COMMIT:
            raise PreconditionFailed("COMMIT is certified: the transfer completes")
        src = self._relayers[record.request.source_ledger]
        dst = self._relayers[record.request.target_ledger]
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
                    f" {_iso(record.terms.deadline)}; after it the transfer aborts by itself"
                )
        self._log.warning("operator abort", **{TRANSFER: "0x" + tid.hex()})
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
        if ledger not in self._domains:
            raise NotFound(f"ledger {ledger!r} is not connected")
        # Act first, then record the events as seen: acting is idempotent, so a crash in
        # between only means the relayer's re-delivery is acted on again, never skipped.
        kept: list[LedgerEvent] = []
        for e in events:
            record = await self._store.get(e.transfer_id)
            try:
                known = await self._on_event(ledger, e, record)
            except Unavailable:
                raise  # not acted on: the relayer re-delivers the batch
            except EventNotConfirmed as exc:
                self._log.error(
                    "ledger event refused: the ledger does not show it; not adopted",
                    **{LEDGER: ledger, TRANSFER: "0x" + e.transfer_id.hex(), TX: e.tx_id,
                       REASON: str(exc)},
                )  # fmt: skip
                continue
            except BridgeError as exc:
                known = record is not None
                self._log.error(
                    "ledger event not actionable",
                    **{LEDGER: ledger, TRANSFER: "0x" + e.transfer_id.hex(), ERROR: str(exc)},
                )
            kept.append(e)
            if known and self._supply is not None and (security := self._security_of(e, record)):
                self._supply.touch(security)
        fresh = await self._store.record_events(ledger, kept, scanned)
        return len(fresh)

    @staticmethod
    def _security_of(event: LedgerEvent, record: TransferRecord | None) -> str | None:
        if record is not None:
            return record.request.security
        if event.terms is not None:
            try:
                return SecurityId.from_word(event.terms.security).isin
            except InvalidInput:
                return None
        return None

    async def _on_event(
        self, ledger: str, event: LedgerEvent, record: TransferRecord | None
    ) -> bool:
        """Act on one event; True when it concerns a transfer the coordinator drives."""
        if record is None:
            if event.state is LegState.LOCKED and event.terms is not None:
                return await self._adopt(ledger, event)
            return False
        if not record.state.terminal:
            # A wake-up only: the driver reads both legs itself before any step.
            self._spawn(event.transfer_id)  # replaces a driver that died
            self.wake(event.transfer_id)
        elif record.state is TransferState.FAILED and event.state is LegState.LOCKED:
            if record.request.source_ledger != ledger:
                raise EventNotConfirmed(
                    f"a LOCKED event from {ledger} for a transfer whose source is"
                    f" {record.request.source_ledger}"
                )
            # SECURITY: the event only says where to look; the resume needs the lock itself,
            # still held: a lock already RELEASED (refunded) or BURNED has nothing to resume.
            source = await self._confirmed_lock(ledger, event.transfer_id, event.terms_hash)
            if source.state is not LegState.LOCKED:
                self._log.warning(
                    "LOCKED event for a failed transfer whose lock is no longer held; not resumed",
                    **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id,
                       STATE: source.state.name},
                )  # fmt: skip
                return True
            await self._resume_failed(record, source.terms_hash, event.tx_id)
        return True

    async def _confirmed_lock(self, ledger: str, tid: bytes, terms_hash: bytes) -> LegStatus:
        """The source leg of ``tid`` read at finality through ``ledger``'s relayer, if it
        shows a lock (LOCKED, or BURNED/RELEASED after one) with ``terms_hash``; else
        EventNotConfirmed. Unavailable when the ledger cannot be read.

        SECURITY: this is what makes an event a hint rather than an authority. A caller
        that reaches LedgerEventSink can claim any lock; only the ledger can confirm one.
        A relayer of ``ledger`` that lies in GetLeg as well could still get a lock that
        does not exist adopted; it gains nothing by it: the driver never locks for an
        adopted transfer, and the verifiers read the ledgers themselves and certify LOCKED
        only for a real lock (``verifiers/policy.py``), so no certificate and no step on
        any ledger follows.
        """
        leg = await self._relayers[ledger].get_leg(tid, Leg.OUTBOUND)
        if leg.state not in _LOCKED_OR_AFTER:
            raise EventNotConfirmed(
                f"the source leg on {ledger} is {leg.state.name} at its finalized height,"
                " not a lock"
            )
        if leg.terms_hash != terms_hash:
            raise EventNotConfirmed(
                f"the lock on {ledger} has terms hash 0x{leg.terms_hash.hex()}, the event"
                f" claims 0x{terms_hash.hex()}"
            )
        return leg

    async def _resume_failed(self, record: TransferRecord, terms_hash: bytes, tx_id: str) -> None:
        """A lock landed after we concluded it could not: never leave units in escrow."""
        tid = record.transfer_id
        if terms_hash != record.terms.terms_hash:
            self._log.error(
                "a lock with other terms holds this transfer id; operator attention needed",
                **{TRANSFER: "0x" + tid.hex(), TX: tx_id},
            )
            return
        # SECURITY: compare-and-set, so a transfer that left FAILED meanwhile stays put.
        moved = await self._store.resume_failed(
            tid,
            TransferState.SOURCE_LOCKED,
            "lock found on-chain after failure; resuming",
            "resumed",
        )
        if not moved:
            self._log.warning(
                "failed transfer changed state meanwhile; not resumed",
                **{TRANSFER: "0x" + tid.hex()},
            )
            return
        self._log.error(
            "lock found for a failed transfer; resuming it", **{TRANSFER: "0x" + tid.hex()}
        )
        self._notify(tid)
        self._spawn(tid)

    async def _adopt(self, ledger: str, event: LedgerEvent) -> bool:
        """Record the transfer of a holder-direct lock, origin ADOPTED, if the ledger shows
        it; True when it is (or already was) recorded."""
        terms = event.terms
        assert terms is not None
        if terms.transfer_id != event.transfer_id or terms.terms_hash != event.terms_hash:
            raise EventNotConfirmed("the event's terms do not hash to its transfer id and hash")
        dst = self._ledger_by_word.get(terms.dst_ledger)
        if (
            dst is None
            or terms.src_ledger != self._domains[ledger].ledger_word
            or terms.dst_bridge != self._domains[dst].bridge_word
        ):
            # The committee cannot certify it either: units escrowed towards an endpoint we
            # do not know need an operator (see docs/architecture.md, known limitations).
            self._log.error(
                "lock towards an unknown ledger or bridge endpoint; not adopted",
                **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id},
            )
            return False
        # SECURITY: adopt only what the source ledger shows (see _confirmed_lock).
        await self._confirmed_lock(ledger, event.transfer_id, event.terms_hash)
        try:
            recipient = codec_for(self._network.ledgers[dst].kind).format(terms.recipient)
        except InvalidInput:
            recipient = "0x" + terms.recipient.hex()  # the target will reject it; show it raw
        request = TransferRequest(
            idempotency_key=f"{ADOPTED_KEY_PREFIX}0x{event.transfer_id.hex()}",
            security=SecurityId.from_word(terms.security).isin,
            source_ledger=ledger,
            target_ledger=dst,
            sender=codec_for(self._network.ledgers[ledger].kind).format(terms.sender),
            recipient=recipient,
            amount=terms.amount,
        )
        now = time.time()
        record = TransferRecord(
            event.transfer_id, request, terms, TransferState.SOURCE_LOCKED,
            "locked directly on-chain by the holder", now, now,
            origin=TransferOrigin.ADOPTED,
        )  # fmt: skip
        stored, created = await self._store.create(record)
        if stored.transfer_id != event.transfer_id:
            # SECURITY: another transfer holds this lock's adoption key (a row written before
            # the "onchain:" prefix was reserved). Never report that as an adoption.
            self._log.error(
                "adoption key of a holder-direct lock is held by another transfer; not adopted,"
                " operator attention needed",
                **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id,
                   "holder": "0x" + stored.transfer_id.hex()},
            )  # fmt: skip
            return False
        if created:
            await self._store.add_transaction(event.transfer_id, "lock", event.tx_id)
            self._log.info(
                "holder-direct lock adopted after reading it on the ledger",
                **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id},
            )
            self._spawn(event.transfer_id)
        return True

    def _instructed(self, source_ledger: str, terms: TransferTerms) -> bool:
        """Whether ``terms``' instructor has authority over the source ledger's accounts."""
        return is_instructed(
            self._network.instruction_keys.get(source_ledger, frozenset()),
            holder_direct_locks(self._network.ledgers[source_ledger].kind),
            terms.sender,
            terms.instructor,
        )

    # -- the driver ------------------------------------------------------------------------
    async def _drive(self, tid: bytes) -> None:
        failures = 0
        since: float | None = None
        wakeup = self._wakeups[tid]
        log = self._log.bind(**{TRANSFER: "0x" + tid.hex()})
        while True:
            try:
                record = await self._store.get(tid)
                if record is None or record.state.terminal:
                    break
                if await step_span(self._advance, record):  # ---- observability: a span
                    break
                failures, since = 0, None
                continue
            except asyncio.CancelledError:
                raise
            except FlowQueued as queued:  # ---- flow limits: waiting is not a failure
                failures, since = 0, None
                delay = min(self._max_backoff, max(0.5, float(queued.retry_in)))
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=delay)
                continue
            except (Unavailable, LedgerRejected, PreconditionFailed, BridgeError) as exc:
                failures += 1
                since = since or time.time()
                reason = self._waiting_reason(exc, since)
                log.warning(
                    "transfer waiting",
                    **{REASON: reason, ERROR: f"{type(exc).__name__}: {str(exc)[:2000]}"},
                )
                with contextlib.suppress(Exception):
                    await self._store.set_reason(tid, reason)
                    await self._note_flow_wait(tid, exc)
            except Exception as exc:
                failures += 1
                since = since or time.time()
                log.exception("driver error")
                with contextlib.suppress(Exception):
                    await self._store.set_reason(
                        tid, f"internal error, retrying: {type(exc).__name__}"
                    )
            delay = min(self._max_backoff, 0.25 * 2 ** min(failures, 8))
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
        self._tasks.pop(tid, None)
        self._wakeups.pop(tid, None)

    @staticmethod
    def _waiting_reason(exc: BaseException, since: float) -> str:
        if isinstance(exc, Halted):  # ---- depository halt
            return f"{_bounded(str(exc))} (since {_iso(since)})"
        if isinstance(exc, Unavailable):
            return f"waiting since {_iso(since)}: {_bounded(str(exc))}"
        if isinstance(exc, LedgerRejected):
            return f"waiting since {_iso(since)}: {_generic(exc)}"
        return f"waiting since {_iso(since)}: {_bounded(str(exc))}"

    async def _advance(self, record: TransferRecord) -> bool:
        """Take one step; return True when the transfer is terminal."""
        terms, tid = record.terms, record.transfer_id
        src_name, dst_name = record.request.source_ledger, record.request.target_ledger
        src, dst = self._relayers[src_name], self._relayers[dst_name]
        decision = await self._store.decision(tid)
        source, target = await asyncio.gather(
            src.get_leg(tid, Leg.OUTBOUND), dst.get_leg(tid, Leg.INBOUND)
        )
        if decision is None:
            for status, ledger in ((source, src_name), (target, dst_name)):
                if status.state is not LegState.NONE and status.terms_hash != terms.terms_hash:
                    # Another lock took this transfer id first: ours never happened.
                    await self._set_state(
                        record,
                        TransferState.FAILED,
                        f"transfer id is held on {ledger} by other terms; this request moved "
                        "nothing",
                    )
                    return True
        step = next_step(decision.kind if decision else None, source.state, target.state)
        if step.step is StepKind.LOCK and record.origin is not TransferOrigin.SUBMITTED:
            return await self._no_lock_for_adopted(record)
        if step.step is StepKind.LOCK and await self._flow_gate(record):  # ---- flow limits
            return True
        reason = self._describe(step, target.state, target.reason, decision)
        if step.state is TransferState.COMMITTED and target.parked:
            reason = await self._parked(record, target.reason)
        if step.step is StepKind.PREPARE and not self._instructed(src_name, terms):
            # SECURITY: nobody certifies LOCKED for a lock no registered brokerage (nor, on
            # EVM, the holder) instructed; the committee certifies ABORT instead, so the
            # escrow goes back to its holder and the target is closed with a tombstone.
            step = NextStep(TransferState.SOURCE_LOCKED, StepKind.CERTIFY, claim=ClaimKind.ABORT)
            reason = "the lock was not instructed by a registered brokerage key: releasing it"
        await self._hold_for_delay(record, step, decision, source, target)  # ---- flow limits
        await self._set_state(record, step.state, reason)
        if step.step is StepKind.DONE:
            return True
        if step.step is StepKind.LOCK:
            # ---- depository halt: not yet locked -> queued until released, or FAILED once
            # its deadline passed (nothing moved; on EVM a lock after it is refused anyway).
            if (
                time.time() > terms.deadline
                and self._halts is not None
                and await self._halts.halted(src_name, SecurityId(record.request.security))
            ):
                await self._set_state(
                    record,
                    TransferState.FAILED,
                    f"HALTED: {record.request.security} was halted on {src_name} by the"
                    " depository until the deadline passed; nothing moved",
                )
                return True
            await self._halt_gate(src_name, record, "the transfer waits before the lock")
            try:
                out = await src.submit(Action.LOCK, terms, None, record.instruction)
            except LedgerRejected as exc:
                if exc.reason not in DEFINITIVE_LOCK_REFUSALS:
                    raise  # e.g. a racing duplicate: re-read the leg and go on
                if (await src.get_leg(tid, Leg.OUTBOUND)).state is not LegState.NONE:
                    return False  # an earlier attempt landed after all
                await self._set_state(
                    record,
                    TransferState.FAILED,
                    f"source ledger refused the lock ({exc.reason.value})",
                )
                return True
            await self._record_tx(tid, Action.LOCK, Leg.OUTBOUND, out.tx_id)
            return False
        if step.step is StepKind.PREPARE:
            action = Action.MARK_EXPIRED if time.time() > terms.deadline else Action.PREPARE
            if action is Action.PREPARE:  # ---- depository halt: the Expired marker still goes
                await self._halt_gate(
                    dst_name,
                    record,
                    "units stay in escrow; the transfer aborts at its deadline"
                    " unless released first",
                )
            certs = await self._committee.certify(
                ClaimKind.LOCKED,
                terms,
                [self._domains[dst_name]],
                await self._epochs_of([dst_name]),
            )
            try:
                out = await dst.submit(action, terms, certs[dst_name])
            except LedgerRejected as exc:
                self._epoch_refused(exc, dst_name)
                raise
            await self._record_tx(tid, action, Leg.INBOUND, out.tx_id)
            return False
        if step.step is StepKind.CERTIFY:
            assert step.claim is not None
            certs = await self._committee.certify(
                step.claim,
                terms,
                [self._domains[src_name], self._domains[dst_name]],
                await self._epochs_of([src_name, dst_name]),
            )
            cause = _refusal(target.state, target.reason) if step.claim is ClaimKind.ABORT else ""
            await self._store.record_decision(tid, Decision(step.claim, certs, cause))
            return False
        assert decision is not None
        assert step.step is StepKind.APPLY
        jobs = []
        target_action = step.target_action
        held: Halted | None = None
        if target_action is Action.COMMIT:  # ---- depository halt: the mint waits (COMMIT final)
            try:
                await self._halt_gate(dst_name, record, "COMMIT is decided; the mint waits")
            except Halted as exc:
                held, target_action = exc, None
        if step.source_action is not None:
            jobs.append(self._apply(src, step.source_action, Leg.OUTBOUND, record, decision))
        if target_action is not None:
            jobs.append(self._apply(dst, target_action, Leg.INBOUND, record, decision))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if held is not None:
            raise held
        return False

    # ---- parking
    async def _parked(self, record: TransferRecord, code: int) -> str:
        """Record that the target parked the committed units and say why (the COMMIT
        decision stands; the issuer releases the units to an eligible holder)."""
        await self._store.record_parked(record.transfer_id, code)
        return (
            f"committed, but the target parked the units ({RejectReason.describe(code)} since"
            " prepare); the issuer releases them to an eligible holder; burned on the source"
        )

    async def _no_lock_for_adopted(self, record: TransferRecord) -> bool:
        """An adopted transfer whose source shows no lock: wait, then fail; never lock.

        SECURITY: the terms of an adopted transfer came from a ledger event, not from a
        brokerage, so the bridge must never be the one to escrow units under them. The lock
        was read on the ledger before adoption; seeing none now means the relayer's view
        went back (or lied). Past the deadline no lock can land any more: FAILED (a lock
        that does show up later resumes it, after being read on the ledger again).
        """
        if time.time() > record.terms.deadline + ADOPTED_LOCK_GRACE_S:
            await self._set_state(
                record,
                TransferState.FAILED,
                "adopted from a ledger event, but the source ledger shows no lock with its"
                " terms, and its deadline has passed; the bridge never locks for it",
            )
            return True
        raise PreconditionFailed(
            "adopted from a ledger event, but the source ledger shows no lock with its terms;"
            " the bridge never locks for an adopted transfer"
        )

    async def _apply(
        self,
        gateway: RelayerGateway,
        action: Action,
        leg: Leg,
        record: TransferRecord,
        decision: Decision,
    ) -> None:
        certificate = decision.certificates[gateway.ledger]
        try:
            out = await gateway.submit(action, record.terms, certificate)
        except LedgerRejected as exc:
            if not self._epoch_refused(exc, gateway.ledger):
                raise
            # The ledger no longer accepts the stored certificate's epoch (a rotation and
            # its overlap passed): gather the same claim again under the epoch it accepts.
            certificate = await self._recertify(record, decision, gateway.ledger)
            out = await gateway.submit(action, record.terms, certificate)
        await self._record_tx(record.transfer_id, action, leg, out.tx_id)

    # ---- committee rotation (ADR 0009) ------------------------------------------------
    async def _epochs_of(self, ledgers: list[str]) -> dict[str, tuple[Committee, ...]] | None:
        """The committee epochs each of ``ledgers`` accepts now, preferred first (None: the
        network file's)."""
        if self._epochs is None:
            return None
        return await self._epochs.accepted(ledgers)

    def _epoch_refused(self, exc: LedgerRejected, ledger: str) -> bool:
        """True when ``exc`` is a ledger refusing a certificate's epoch or signers (typed
        reason); the ledger's epochs are then read again."""
        if exc.reason not in RECERTIFY_REASONS:
            return False
        if self._epochs is not None:
            self._epochs.invalidate(ledger)
        return self._epochs is not None

    async def _recertify(
        self, record: TransferRecord, decision: Decision, ledger: str
    ) -> SignatureSet:
        """A certificate of the recorded decision for ``ledger`` under the epoch it accepts
        now, stored in place of the refused one.

        SECURITY: the claim is the recorded decision's kind, never re-derived: members sign
        it only if the ledgers still support it (a decision is final on the ledgers before
        it is recorded), and the store swaps the certificate only while the recorded kind
        is that same kind, so a decision never changes.
        """
        tid = record.transfer_id
        epochs = await self._epochs_of([ledger])
        certs = await self._committee.certify(
            decision.kind, record.terms, [self._domains[ledger]], epochs
        )
        certificate = certs[ledger]
        if not await self._store.recertify(tid, decision.kind, ledger, certificate):
            raise PreconditionFailed("the recorded decision changed meanwhile; re-reading")
        self._log.warning(
            "decision re-certified under the ledger's current epoch",
            **{TRANSFER: "0x" + tid.hex(), LEDGER: ledger, STATE: decision.kind.name},
            epoch=certificate.epoch,
        )
        return certificate

    async def _record_tx(self, tid: bytes, action: Action, leg: Leg, tx_id: str) -> None:
        if tx_id:
            await self._store.add_transaction(tid, _STEP_NAMES[(action, leg)], tx_id)
            self._log.info(
                "step applied", **{TRANSFER: "0x" + tid.hex(), TX: tx_id, STATE: action.name}
            )

    @staticmethod
    def _describe(
        step: NextStep, target: LegState, reason_code: int, decision: Decision | None
    ) -> str:
        refused = target in (LegState.REJECTED, LegState.EXPIRED, LegState.ABORTED)
        why = decision.cause if decision is not None else _refusal(target, reason_code)
        texts = {
            TransferState.SUBMITTED: "locking units on the source ledger",
            TransferState.SOURCE_LOCKED: (
                f"{why}; gathering the ABORT certificate" if refused
                else "units in escrow; preparing the target ledger"
            ),
            TransferState.TARGET_PREPARED: "target prepared; gathering the COMMIT certificate",
            TransferState.COMMITTING: "COMMIT certified; burning on source, minting on target",
            TransferState.COMMITTED: "minted on the target, burned on the source",
            TransferState.ABORTING: f"ABORT certified{' (' + why + ')' if why else ''}; releasing",
            TransferState.ABORTED: f"units released to the sender{' (' + why + ')' if why else ''}",
        }  # fmt: skip
        return texts.get(step.state, "")

    async def _set_state(self, record: TransferRecord, state: TransferState, reason: str) -> None:
        if record.state is state and record.reason == reason:
            return
        # ---- flow limits: a new state (but QUEUED) ends the old wait, in the same
        # transaction as the state change (store.set_state), so no reader sees one
        # without the other now that store calls really suspend (ADR 0013).
        await self._store.set_state(record.transfer_id, state, reason, reason)
        if record.state is not state:
            observe_transition(record, state)  # ---- observability (ADR 0016)
            self._log.info(
                "transfer state",
                **{TRANSFER: "0x" + record.transfer_id.hex(), STATE: state.name, REASON: reason},
            )
            self._notify(record.transfer_id)


# SECURITY (review 2 finding 6): a transfer's ``reason`` is read by brokerages. A ledger's
# refusal is reported by its typed reason and ledger only, never its free text (a Fabric
# peer's MSP and address, a chaincode exception's message); any other text is bounded.
# The full detail is in the coordinator's log.
_REASON_MAX = 240


def _generic(exc: LedgerRejected) -> str:
    """``exc`` as a brokerage may read it: the ledger and the typed reason."""
    where = exc.ledger or "the ledger"
    return f"{where} refused the step ({exc.reason.value})"


def _bounded(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."
