"""The step engine: one step of a transfer through its states, with the relayers and the
committee.

Each step reads both legs at finality and the durable decision, derives the next step
(:func:`bridge.domain.transfer.next_step`), applies it idempotently and records the
outcome, so running the same step again after a crash anywhere is always safe.
Three steps take legs this process already knows instead (ADR 0002 amendment): the first
step of a transfer it has just recorded, the prepare after a lock it has just landed, and
the step applying a decision it has just certified.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, replace

from bridge.coordinator.clients import RelayerGateway
from bridge.coordinator.context import EngineContext
from bridge.coordinator.epochs import RECERTIFY_REASONS
from bridge.coordinator.flow_limits import FlowLimits
from bridge.coordinator.halts import Halted
from bridge.coordinator.leg_reads import LegReads
from bridge.coordinator.records import Decision, TransferOrigin, TransferRecord
from bridge.coordinator.step_batches import (
    STEP_NAMES,
    NoBatches,
    RunSingle,
    StepBatcher,
    submit_alone,
)
from bridge.coordinator.wording import LOCKING, NOT_LOCKED_PAST_DEADLINE, refusal
from bridge.core.reasons import ErrorReason
from bridge.domain.batch_certified import BatchCertified
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee
from bridge.domain.errors import LedgerRejected, PreconditionFailed
from bridge.domain.flow import WaitReason
from bridge.domain.ids import SecurityId
from bridge.domain.instructions import is_instructed
from bridge.domain.legs import (
    Action,
    Leg,
    LegState,
    LegStatus,
    RejectReason,
    SignatureSet,
    TxOutcome,
)
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import NextStep, StepKind, TransferState, next_step
from bridge.ledgers.kinds import holder_direct_locks
from bridge.logfields import LEDGER, STATE, TRANSFER, TX

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

_FIXED_TEXTS = {
    TransferState.SUBMITTED: LOCKING,
    TransferState.TARGET_PREPARED: "target prepared; gathering the COMMIT certificate",
    TransferState.COMMITTING: "COMMIT certified; burning on source, minting on target",
    TransferState.COMMITTED: "minted on the target, burned on the source",
}
"""The reasons :meth:`Stepper._describe` gives that depend on nothing but the state."""

KNOWN_LEGS_MAX = 100_000
"""Most transfers whose legs (and, separately, whose records) a :class:`Stepper` holds as
known without a read; past it a new one is simply read (each entry is used by the very next
step of its transfer)."""

_NO_LEG = LegStatus(state=LegState.NONE, terms_hash=b"", reason=0, height=0)

Legs = tuple[LegStatus, LegStatus]
"""A transfer's source and target legs."""


@dataclass(frozen=True, slots=True)
class _Kept:
    """What a successful step left for the next step of its transfer, instead of reads."""

    record: TransferRecord
    """The record as the step's own state write returned it (or as the step found it, when
    it wrote nothing), with the decision the step recorded."""
    decision: Decision | None
    """The recorded decision (None: there is none, or it is read again)."""


@dataclass(frozen=True, slots=True)
class _Handed:
    """What ``record_for_step`` took for a transfer, for the next ``advance`` of ``record``
    (that very object) only."""

    record: TransferRecord
    kept: _Kept | None
    known: Legs | None


ADOPTED_LOCK_GRACE_S = 120
"""How long past its deadline an adopted transfer whose source shows no lock waits before
it is FAILED (a lock cannot land after the deadline on EVM or CometBFT, nor be endorsed
after it on Fabric; a later one resumes it)."""


class Stepper:
    """Advances one transfer by one step.

    Guarantees: every step is idempotent and re-derived from the ledgers and the durable
    decision; a decision is recorded before any leg is asked to apply it, and never changes
    once recorded; the bridge locks only for a transfer a brokerage submitted, and the
    committee certifies LOCKED only for an instructed lock.
    """

    def __init__(
        self,
        ctx: EngineContext,
        flow: FlowLimits,
        batcher: StepBatcher | None = None,
        reads: LegReads | None = None,
    ) -> None:
        self._ctx = ctx
        self._flow = flow
        # ---- batched steps (issue 14): None steps every transfer alone
        self._batcher = batcher
        # ---- coalesced leg reads (issue 14 item 4): None reads every leg alone
        self._reads = reads
        # ---- legs known without a read (issue 14 item 4), each for the next step only
        self._known: dict[bytes, Legs] = {}
        # ---- records known without a read (issue 14), each for the next step only
        self._kept: dict[bytes, _Kept] = {}
        # what record_for_step handed out (kept entries and known legs), for ``advance``
        self._handed: dict[bytes, _Handed] = {}
        self._recertified = 0  # how many decisions this process has re-certified

    # ---- legs known without a read (issue 14 item 4) --------------------------------------
    def note_new(self, record: TransferRecord) -> None:
        """``record`` was just stored by this process (as the store returned it), so nothing
        was ever submitted for it: its first step takes both legs as NONE instead of reading
        them, and this record instead of reading it.

        SECURITY: a view that is wrong here (the id locked by someone else meanwhile) only
        makes the LOCK one the ledger refuses or reports as already applied, as it checks
        every step against its own state; the driver then reads the legs as after any
        failed step. Nothing is decided from the assumed legs."""
        self._remember(record.transfer_id, _NO_LEG, _NO_LEG)
        self._keep(record, record, None)

    def forget_known(self) -> None:
        """Drop every leg and record held as known (the engine stops: another coordinator
        may move the transfers before this one drives them again)."""
        self._known.clear()
        self._kept.clear()
        self._handed.clear()

    def _remember(self, tid: bytes, source: LegStatus, target: LegStatus) -> None:
        if tid in self._known or len(self._known) < KNOWN_LEGS_MAX:
            self._known[tid] = (source, target)

    # ---- records known without a read (issue 14) -----------------------------------------
    async def record_for_step(self, transfer_id: bytes) -> TransferRecord | None:
        """The record the next step of ``transfer_id`` takes: the one its last step left
        (``_keep``), else read from the store (None: there is no such transfer).

        Guarantees: a kept record equals the stored one in every field the step engine
        reads (state, reason, decision, flow wait, parked reason; the request, terms,
        origin and instruction never change), since while a driver runs only its own steps
        write those fields, and a step keeps a record only when it ended without an error;
        ``transactions`` may lag (a step records its transactions after its state, event
        intake may record a lock's), and the step engine does not read them. Whatever is
        kept for the transfer (record, decision, known legs) is taken here, before anything
        that can fail, and handed to the next ``advance`` of this very record only: a step
        that fails before using it, or never runs, leaves nothing behind.
        """
        kept = self._kept.pop(transfer_id, None)
        known = self._known.pop(transfer_id, None)
        record = kept.record if kept is not None else await self._ctx.store.get(transfer_id)
        if record is not None and (kept is not None or known is not None):
            self._handed[transfer_id] = _Handed(record, kept, known)
        else:
            self._handed.pop(transfer_id, None)
        return record

    def _keep(
        self, before: TransferRecord, after: TransferRecord, decision: Decision | None
    ) -> None:
        """Keep ``after`` (what the step's state write returned, or ``before`` when it
        wrote none) and ``decision`` for the transfer's next step, the record showing the
        decision's kind (a step that recorded one wrote it after its state).

        A step that wrote no state keeps its record only when the record had no flow wait:
        the flow limits clear a stale wait before the state write (``_leave_queue``,
        ``hold_for_delay``), and the record without a state write does not show that clear.
        SECURITY: the same argument as for the known legs (``note_new``): a kept record is
        never a source of authority; each ledger checks every step against its own state
        and the committee's certificates, and a decision kept is the one the store returned
        as recorded (first one wins; its kind never changes, and a step that re-certified,
        replacing a certificate, keeps none)."""
        if after is before and before.wait_reason is not WaitReason.NONE:
            return
        if decision is not None and after.decision is not decision.kind:
            after = replace(after, decision=decision.kind)
        tid = after.transfer_id
        if tid in self._kept or len(self._kept) < KNOWN_LEGS_MAX:
            self._kept[tid] = _Kept(after, decision)

    async def _legs(self, record: TransferRecord) -> tuple[LegStatus, LegStatus]:
        """The source and target legs of ``record``, read at finality (coalesced)."""
        tid = record.transfer_id
        src_name, dst_name = record.request.source_ledger, record.request.target_ledger
        if self._reads is not None:
            return await self._reads.get_both(tid, src_name, dst_name)
        relayers = self._ctx.relayers
        return await asyncio.gather(
            relayers[src_name].get_leg(tid, Leg.OUTBOUND),
            relayers[dst_name].get_leg(tid, Leg.INBOUND),
        )

    async def advance(self, record: TransferRecord) -> bool:
        """Take one step; return True when the transfer is terminal."""
        ctx = self._ctx
        terms, tid = record.terms, record.transfer_id
        src_name, dst_name = record.request.source_ledger, record.request.target_ledger
        handed = self._handed.pop(tid, None)  # first: a failed step never leaves it behind
        if handed is None or handed.record is not record:
            handed = _Handed(record, None, None)
        kept, known = handed.kept, handed.known
        src, dst = ctx.relayers[src_name], ctx.relayers[dst_name]
        # The record was read at this step's start (or kept by the last step) and carries
        # the decision's kind: the decision (with its certificates) is read only once there
        # is one, and not when the last step recorded or used it. SECURITY: only this
        # transfer's own driver records its decision (its CERTIFY step, alone or in a
        # batch), so no decision appears between that read and this step; and a step that
        # certified again anyway would get the recorded decision back (first one wins), with
        # the members' vote logs refusing the other kind.
        decision: Decision | None = None
        if record.decision is not None:
            if kept is not None and kept.decision is not None:
                decision = kept.decision
            else:
                decision = await ctx.store.decision(tid)
        source, target = known if known is not None else await self._legs(record)
        if decision is None:
            for status, ledger in ((source, src_name), (target, dst_name)):
                if status.state is not LegState.NONE and status.terms_hash != terms.terms_hash:
                    # Another lock took this transfer id first: ours never happened.
                    await ctx.set_state(
                        record,
                        TransferState.FAILED,
                        f"transfer id is held on {ledger} by other terms; this request moved "
                        "nothing",
                    )
                    return True
        step = next_step(decision.kind if decision else None, source.state, target.state)
        if step.step is StepKind.LOCK and record.origin is not TransferOrigin.SUBMITTED:
            return await self._no_lock_for_adopted(record)
        if step.step is StepKind.LOCK and await self._flow.gate(record):  # ---- flow limits
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
        await self._flow.hold_for_delay(record, step, decision, source, target)  # ---- flow limits
        after = await ctx.set_state(record, step.state, reason)
        if step.step is StepKind.DONE:
            return True
        if step.step is StepKind.LOCK:
            # ---- depository halt: not yet locked -> queued until released, or FAILED once
            # its deadline passed (nothing moved; on EVM a lock after it is refused anyway).
            if (
                time.time() > terms.deadline
                and ctx.halts is not None
                and await ctx.halts.halted(src_name, SecurityId(record.request.security))
            ):
                await ctx.set_state(
                    record,
                    TransferState.FAILED,
                    f"HALTED: {record.request.security} was halted on {src_name} by the"
                    " depository until the deadline passed; nothing moved",
                )
                return True
            await ctx.halt_gate(src_name, record, "the transfer waits before the lock")
            if time.time() > terms.deadline:
                # SECURITY (review helper-123 L-c): never a lock the instructor's deadline
                # no longer covers, whatever delayed this step (a gate's last look before
                # the deadline, a slow store, a relayer down until after it). EVM and
                # CometBFT revert it, Fabric refuses its endorsement (but an envelope
                # endorsed in time can still be ordered later). An earlier attempt that
                # lands after all resumes the transfer (event intake's resume_failed).
                await ctx.set_state(record, TransferState.FAILED, NOT_LOCKED_PAST_DEADLINE)
                return True
            try:
                out, recorded = await self._lock(src, record)
            except LedgerRejected as exc:
                if exc.reason not in DEFINITIVE_LOCK_REFUSALS:
                    raise  # e.g. a racing duplicate: re-read the leg and go on
                if (await src.get_leg(tid, Leg.OUTBOUND)).state is not LegState.NONE:
                    return False  # an earlier attempt landed after all
                await ctx.set_state(
                    record,
                    TransferState.FAILED,
                    f"source ledger refused the lock ({exc.reason.value})",
                )
                return True
            if not recorded:
                await self._record_tx(tid, Action.LOCK, Leg.OUTBOUND, out.tx_id)
            if not out.already_applied and target.state is LegState.NONE:
                # Our lock landed, final, under these terms (the adapters answer only once
                # it is final), and the target shows no leg: the next step (the prepare)
                # takes these legs; a target that showed one is read again first. Its
                # not_before is not known here; it matters only for COMMIT, and the step
                # before certifying COMMIT reads the legs again.
                # SECURITY: as for note_new; the members read the lock themselves before
                # they certify LOCKED for the prepare.
                locked = LegStatus(LegState.LOCKED, terms.terms_hash, 0, out.height)
                self._remember(tid, locked, target)
            self._keep(record, after, None)
            return False
        if step.step is StepKind.PREPARE:
            action = Action.MARK_EXPIRED if time.time() > terms.deadline else Action.PREPARE
            if action is Action.PREPARE:  # ---- depository halt: the Expired marker still goes
                await ctx.halt_gate(
                    dst_name,
                    record,
                    "units stay in escrow; the transfer aborts at its deadline"
                    " unless released first",
                )
            try:
                out, recorded = await self._prepare(dst, action, record)
            except LedgerRejected as exc:
                self._epoch_refused(exc, dst_name)
                raise
            if not recorded:
                await self._record_tx(tid, action, Leg.INBOUND, out.tx_id)
            self._keep(record, after, None)
            return False
        if step.step is StepKind.CERTIFY:
            assert step.claim is not None
            cause = refusal(target.state, target.reason) if step.claim is ClaimKind.ABORT else ""
            # Certifying writes to no ledger, so the next step (applying the decision) takes
            # the legs just read. SECURITY: as for note_new, each ledger checks the burn,
            # release, mint or abort against its own state and the certificate; a leg that
            # moved meanwhile only makes a step it refuses or skips, and the driver reads.
            stored: Decision | None = None
            if self._batcher is not None:
                with contextlib.suppress(RunSingle):
                    # ---- batched steps: certified in a batch, recorded before it returns
                    stored = await self._batcher.decide(step.claim, record, cause)
            if stored is None:
                certs = await ctx.committee.certify(
                    step.claim,
                    terms,
                    [ctx.domains[src_name], ctx.domains[dst_name]],
                    await self._epochs_of([src_name, dst_name]),
                )
                stored = await ctx.store.record_decision(tid, Decision(step.claim, certs, cause))
            self._remember(tid, source, target)
            self._keep(record, after, stored)  # an earlier one if there was: first one wins
            return False
        assert decision is not None
        assert step.step is StepKind.APPLY
        jobs = []
        recertified = self._recertified
        target_action = step.target_action
        held: Halted | None = None
        if target_action is Action.COMMIT:  # ---- depository halt: the mint waits (COMMIT final)
            try:
                await ctx.halt_gate(dst_name, record, "COMMIT is decided; the mint waits")
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
        # A step that re-certified (this transfer or, meanwhile, another) keeps no decision:
        # the stored one has a new certificate.
        self._keep(record, after, decision if self._recertified == recertified else None)
        return False

    # ---- parking
    async def _parked(self, record: TransferRecord, code: int) -> str:
        """Record that the target parked the committed units and say why (the COMMIT
        decision stands; the issuer releases the units to an eligible holder)."""
        await self._ctx.store.record_parked(record.transfer_id, code)
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
            await self._ctx.set_state(
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
        recorded = False
        try:
            if isinstance(certificate, BatchCertified):
                try:
                    out, recorded = await self._apply_batched(gateway, action, record, certificate)
                except NoBatches:
                    # The relayer takes no batch (batching turned on before it was
                    # upgraded, or it was replaced by an older one): the same claim alone.
                    certificate = await self._recertify(record, decision, gateway.ledger)
                    out = await gateway.submit(action, record.terms, certificate)
            else:
                out = await gateway.submit(action, record.terms, certificate)
        except LedgerRejected as exc:
            if not self._epoch_refused(exc, gateway.ledger):
                raise
            # The ledger no longer accepts the stored certificate's epoch (a rotation and
            # its overlap passed): gather the same claim again under the epoch it accepts.
            certificate = await self._recertify(record, decision, gateway.ledger)
            out, recorded = await gateway.submit(action, record.terms, certificate), False
        if not recorded:
            await self._record_tx(record.transfer_id, action, leg, out.tx_id)

    # ---- batched steps (issue 14) ---------------------------------------------------------
    async def _lock(self, src: RelayerGateway, record: TransferRecord) -> tuple[TxOutcome, bool]:
        """LOCK on the source, in a batch when batching is on (alone when the batch left
        the item in doubt); and whether its transaction is recorded already (a batch
        records its items' together). The caller has applied the origin, flow and halt
        gates."""
        if self._batcher is not None:
            with contextlib.suppress(RunSingle):
                return await self._batcher.lock(record), True
        return await src.submit(Action.LOCK, record.terms, None, record.instruction), False

    async def _prepare(
        self, dst: RelayerGateway, action: Action, record: TransferRecord
    ) -> tuple[TxOutcome, bool]:
        """Certify LOCKED for the target and apply ``action`` there: a PREPARE in a batch
        of its lane when batching is on, MARK_EXPIRED always alone; and whether its
        transaction is recorded already (as ``_lock``).

        SECURITY: the caller has checked that the lock was instructed (``_instructed``) and
        the target's halt gate before the item may join a batch.
        """
        ctx, terms, dst_name = self._ctx, record.terms, dst.ledger
        if self._batcher is not None and action is Action.PREPARE:
            with contextlib.suppress(RunSingle):
                return await self._batcher.prepare(record), True
        certs = await ctx.committee.certify(
            ClaimKind.LOCKED,
            terms,
            [ctx.domains[dst_name]],
            await self._epochs_of([dst_name]),
        )
        return await dst.submit(action, terms, certs[dst_name]), False

    async def _apply_batched(
        self,
        gateway: RelayerGateway,
        action: Action,
        record: TransferRecord,
        certified: BatchCertified,
    ) -> tuple[TxOutcome, bool]:
        """Apply a decision recorded from a batch: with the other transfers of its batch
        certificate when batching is on, else (or when that batch left it in doubt) alone
        under its share of the batch certificate; and whether its transaction is recorded
        already (as ``_lock``)."""
        if self._batcher is not None:
            try:
                return await self._batcher.apply(gateway.ledger, action, record, certified), True
            except NoBatches:
                raise
            except RunSingle:
                pass
        return await submit_alone(gateway, action, record, certified), False

    # ---- committee rotation (ADR 0009) ------------------------------------------------
    async def _epochs_of(self, ledgers: list[str]) -> dict[str, tuple[Committee, ...]] | None:
        """The committee epochs each of ``ledgers`` accepts now, preferred first (None: the
        network file's)."""
        if self._ctx.epochs is None:
            return None
        return await self._ctx.epochs.accepted(ledgers)

    def _epoch_refused(self, exc: LedgerRejected, ledger: str) -> bool:
        """True when ``exc`` is a ledger refusing a certificate's epoch or signers (typed
        reason); the ledger's epochs are then read again."""
        if exc.reason not in RECERTIFY_REASONS:
            return False
        if self._ctx.epochs is not None:
            self._ctx.epochs.invalidate(ledger)
        return self._ctx.epochs is not None

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
        ctx = self._ctx
        tid = record.transfer_id
        epochs = await self._epochs_of([ledger])
        certs = await ctx.committee.certify(
            decision.kind, record.terms, [ctx.domains[ledger]], epochs
        )
        certificate = certs[ledger]
        self._recertified += 1
        if not await ctx.store.recertify(tid, decision.kind, ledger, certificate):
            raise PreconditionFailed("the recorded decision changed meanwhile; re-reading")
        ctx.log.warning(
            "decision re-certified under the ledger's current epoch",
            **{TRANSFER: "0x" + tid.hex(), LEDGER: ledger, STATE: decision.kind.name},
            epoch=certificate.epoch,
        )
        return certificate

    async def _record_tx(self, tid: bytes, action: Action, leg: Leg, tx_id: str) -> None:
        if tx_id:
            await self._ctx.store.add_transaction(tid, STEP_NAMES[(action, leg)], tx_id)
            self._ctx.log.info(
                "step applied", **{TRANSFER: "0x" + tid.hex(), TX: tx_id, STATE: action.name}
            )

    @staticmethod
    def _describe(
        step: NextStep, target: LegState, reason_code: int, decision: Decision | None
    ) -> str:
        """What the transfer is doing in ``step.state``, as a brokerage reads it (only the
        text of that state is built: this runs at every step of every transfer)."""
        state = step.state
        if state in _FIXED_TEXTS:
            return _FIXED_TEXTS[state]
        why = decision.cause if decision is not None else refusal(target, reason_code)
        if state is TransferState.SOURCE_LOCKED:
            refused = target in (LegState.REJECTED, LegState.EXPIRED, LegState.ABORTED)
            if refused:
                return f"{why}; gathering the ABORT certificate"
            return "units in escrow; preparing the target ledger"
        if state is TransferState.ABORTING:
            return f"ABORT certified{' (' + why + ')' if why else ''}; releasing"
        if state is TransferState.ABORTED:
            return f"units released to the sender{' (' + why + ')' if why else ''}"
        return ""

    def _instructed(self, source_ledger: str, terms: TransferTerms) -> bool:
        """Whether ``terms``' instructor has authority over the source ledger's accounts."""
        network = self._ctx.network
        return is_instructed(
            network.instruction_keys.get(source_ledger, frozenset()),
            holder_direct_locks(network.ledgers[source_ledger].kind),
            terms.sender,
            terms.instructor,
        )
