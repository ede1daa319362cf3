"""Admission: a brokerage's transfer request, from its signed instruction to a recorded
transfer with a driver.

Order of checks: the instruction (registered instructor, signature over exactly these
terms), the idempotency key, the deadline bounds, the source ledger's bound on unfinished
transfers, the supply feed's holds, both ledgers' standing of the sender and the security,
and the lanes' flow capacity; only then is the transfer recorded and its driver spawned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from bridge.coordinator.context import EngineContext
from bridge.coordinator.flow_limits import FlowLimits
from bridge.coordinator.holder_reads import HolderReads
from bridge.coordinator.key_reads import KeyReads
from bridge.coordinator.records import TransferRecord, TransferRequest
from bridge.coordinator.requests import Authorised, authorised, check_deadline
from bridge.coordinator.store import replayed_instruction
from bridge.coordinator.supervision import Supervisor
from bridge.coordinator.wording import LOCKING, generic_refusal
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeError,
    Conflict,
    InvalidInput,
    LedgerRejected,
    PreconditionFailed,
    Unavailable,
    refused_on_input,
)
from bridge.domain.instructions import Instruction
from bridge.domain.legs import HolderStatus
from bridge.domain.transfer import TransferState
from bridge.logfields import LEDGER, TRANSFER

ADMISSION_FRESH_S = 2.0
"""How long after its checks a new transfer's first step may take what they read (both
legs NONE, an open lane) instead of reading again (:meth:`Admission.record`)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """A submission that passed every check of :meth:`Admission.check`: the transfer
    already recorded under its key (``recorded``: a retry) or the record a new transfer is
    to get (not yet stored, no driver)."""

    record: TransferRecord
    recorded: bool
    lane_open: bool = False
    """The lane read open (no rate limit at either end) by this check (FlowLimits.note_open)."""
    checked_at: float = 0.0
    """``time.monotonic()`` just before the checks read both ledgers (0: never fresh)."""


def _key_taken() -> Conflict:
    """The refusal of a key recorded for another transfer (the caller's own input)."""
    return refused_on_input(Conflict("idempotency_key was already used for a different transfer"))


class Admission:
    """Accepts or refuses a brokerage's transfer request (see ``Coordinator.submit``).

    Guarantees: nothing is recorded for a refused request; an instruction is authenticated
    before any recorded key is read; a key is scoped per source ledger and bound to one
    request and one set of signed terms.
    """

    def __init__(
        self,
        ctx: EngineContext,
        flow: FlowLimits,
        drivers: Supervisor,
        holders: HolderReads | None = None,
        on_recorded: Callable[[TransferRecord], None] | None = None,
        keys: KeyReads | None = None,
    ) -> None:
        self._ctx = ctx
        self._flow = flow
        self._drivers = drivers
        self._holders = holders  # ---- batch: coalesced holder reads (issue 14 item 4)
        self._keys = keys  # ---- batch: coalesced idempotency-key reads (issue 14)
        # ---- told of each new transfer before its driver starts (Stepper.note_new)
        self._on_recorded = on_recorded

    async def submit(
        self, request: TransferRequest, instruction: Instruction
    ) -> tuple[TransferRecord, bool]:
        """Record a new transfer, or return the recorded one of a retry; True when new:
        :meth:`check`, then :meth:`record`."""
        return await self.record(await self.check(request, instruction))

    async def check(
        self,
        request: TransferRequest,
        instruction: Instruction,
        auth: Authorised | None = None,
    ) -> Admitted:
        """Every check of a submission, recording nothing: the recorded transfer of a retry,
        or the record a new transfer would get (Conflict, PreconditionFailed, ... if refused).

        SECURITY: the brokerage's instruction is checked first (registered instructor for
        the source ledger, its signature over exactly these terms), before any recorded key
        is looked up; then, for a new transfer, its deadline bounds (a retry of a recorded
        one may come after its deadline). Keys are scoped per source ledger, so one
        brokerage can neither probe nor squat another's. Nothing is recorded for a refused
        instruction; the same instruction under a new key is a Conflict. The coordinator
        chooses no term: the nonce and the deadline are the instructor's. Pre-checks the
        sender's balance and standing and that both tokens are registered and not paused;
        the recipient's eligibility is decided on the target ledger. ``auth``: this
        request's instruction as :func:`~bridge.coordinator.requests.authorised` already
        authenticated it (used only if it is of exactly this request and instruction).
        """
        ctx = self._ctx
        # SECURITY: authenticate the instruction (registered instructor, signature) before
        # any recorded key is read: a caller without one learns nothing about keys in use.
        # An authentication handed in counts only for the very request and instruction it
        # was made of (compared by value), never for another.
        if auth is None or auth.request != request or auth.instruction != instruction:
            auth = authorised(ctx.network, request, instruction)
        terms = auth.terms
        existing = await self._existing(request)
        if existing is not None:
            # A retry: the same signed terms as recorded (its deadline may have passed since).
            if existing.terms != terms:
                raise refused_on_input(
                    Conflict("idempotency_key was already used with other instructed terms")
                )
            return Admitted(existing, recorded=True)
        now = time.time()
        try:
            check_deadline(instruction, now=now, ttl=ctx.ttl)
        except InvalidInput as exc:
            raise refused_on_input(exc) from None
        # SECURITY (review helper-112): a signed instruction already recorded under another
        # key (replayed under a new one) is refused from this coordinator's own records
        # before any ledger is read, so it counts against the batch quota whatever the
        # ledgers would answer (the original may hold the sender's units by now) and costs
        # no relayer a read. The store refuses it again at recording (a concurrent copy).
        if await ctx.store.recorded(terms.transfer_id):
            raise replayed_instruction(terms.transfer_id)
        # SECURITY: one source ledger's unfinished transfers are bounded, so one brokerage's
        # submissions cannot hold an unbounded share of the coordinator every institution
        # shares (drivers, ledger reads, a lane's queue); a retry of a recorded transfer was
        # answered above. Here early, before any ledger is read; record_many decides.
        ctx.unfinished.check(request.source_ledger)
        if ctx.supply is not None:
            refusal = await ctx.supply.refusal(
                request.security, (request.source_ledger, request.target_ledger)
            )
            if refusal is not None:
                raise refusal
        checked_at = time.monotonic()  # before the reads: the freshness of the oldest
        await self._precheck(request)
        lane_open = await self._flow.precheck(request)
        record = TransferRecord(
            transfer_id=terms.transfer_id,
            request=request,
            terms=terms,
            state=TransferState.SUBMITTED,
            reason=LOCKING,
            created_at=now,
            updated_at=now,
            instruction=instruction.signature,
        )
        return Admitted(record, recorded=False, lane_open=lane_open, checked_at=checked_at)

    async def record(self, admitted: Admitted) -> tuple[TransferRecord, bool]:
        """Record a checked submission (:meth:`check`) and spawn its driver; True when new.
        A retry's recorded transfer is returned as it is (False). The record is stamped now,
        so transfers recorded one after the other (a batch's items, in item order) have
        non-decreasing ``created_at`` as well as increasing store sequence: the order the
        flow-limit queue of a lane serves them in (ADR 0010)."""
        (outcome,) = await self.record_many([admitted])
        if isinstance(outcome, BridgeError):
            raise outcome
        return outcome

    async def record_many(
        self, admitted: Sequence[Admitted]
    ) -> list[tuple[TransferRecord, bool] | BridgeError]:
        """:meth:`record` for many checked submissions at once (a batch's items, in item
        order), in one store transaction: per item, in order, the record and whether it is
        new, or its error confined to its item (Conflict; ResourceExhausted when its source
        ledger has no room left for an unfinished transfer). Every new record is stamped
        with one time and stored in item order, so the store sequence and ``created_at``
        order them as recording them one after the other would. Raises what the store
        raises (nothing is recorded then)."""
        ctx = self._ctx
        now = time.time()
        new = [i for i, a in enumerate(admitted) if not a.recorded]
        # SECURITY (review helper-120 H1): room is taken here, with no await before the
        # write is counted in flight, so concurrent submissions cannot pass the bound
        # together; the check in :meth:`check` only refuses early.
        fits = ctx.unfinished.begin_writes([admitted[i].record.request.source_ledger for i in new])
        room = {i for i, fit in zip(new, fits, strict=True) if fit}
        writing = [admitted[i] for i in new if i in room]
        written = [a.record.request.source_ledger for a in writing]
        try:
            fresh = [replace(a.record, created_at=now, updated_at=now) for a in writing]
            stored = await ctx.store.create_many(fresh) if fresh else []
            if len(stored) != len(fresh):
                raise Unavailable(f"the store answered {len(stored)} writes for {len(fresh)}")
        except BaseException:
            ctx.unfinished.end_writes(written, None)  # perhaps committed: counted till the sweep
            raise
        ctx.unfinished.end_writes(written, [isinstance(o, tuple) and o[1] for o in stored])
        created_iter = iter(stored)
        out: list[tuple[TransferRecord, bool] | BridgeError] = []
        for i, a in enumerate(admitted):
            if a.recorded:
                out.append((a.record, False))
            elif i not in room:
                out.append(ctx.unfinished.refusal(a.record.request.source_ledger))
            else:
                out.append(self._recorded(a, next(created_iter)))
        return out

    def _recorded(
        self, admitted: Admitted, outcome: tuple[TransferRecord, bool] | Conflict
    ) -> tuple[TransferRecord, bool] | Conflict:
        """What storing ``admitted`` gave, with its driver spawned when it is new."""
        if isinstance(outcome, Conflict):
            return outcome  # replayed_instruction: recorded under another key since checked
        stored, created = outcome
        request = admitted.record.request
        if not created:
            if (
                stored.request.fingerprint() != request.fingerprint()
                or stored.terms != admitted.record.terms
            ):
                return _key_taken()
            return stored, False
        self._ctx.log.info("transfer accepted", **{TRANSFER: "0x" + stored.transfer_id.hex()})
        # SECURITY: what the checks read stands in for the first step's reads only while it
        # is fresh: a batch item recorded after a slow sibling's check (a relayer timing
        # out) reads both ledgers again before its lock, so no units are escrowed towards
        # a target that stopped answering after this item was checked.
        until = admitted.checked_at + ADMISSION_FRESH_S
        fresh = time.monotonic() <= until
        if fresh and admitted.lane_open:
            self._flow.note_open(stored.transfer_id, until)
        # The stored record stands in for the first step's read only when this call starts
        # the transfer's driver (the sweep may have started one since the record committed,
        # and that driver may have stepped already); it runs at our next await at the
        # earliest, so it is told before its first step.
        if self._drivers.spawn(stored.transfer_id) and fresh and self._on_recorded is not None:
            self._on_recorded(stored)
        return stored, True

    async def _existing(self, request: TransferRequest) -> TransferRecord | None:
        if self._keys is not None:
            record = await self._keys.get(request.source_ledger, request.idempotency_key)
        else:
            record = await self._ctx.store.get_by_key(
                request.source_ledger, request.idempotency_key
            )
        if record is not None and record.request.fingerprint() != request.fingerprint():
            raise _key_taken()
        return record

    async def _standings(self, request: TransferRequest) -> tuple[HolderStatus, HolderStatus]:
        """The sender's standing on the source ledger and the recipient's on the target,
        read together (through the coalesced holder reads, a future each: no task each);
        a failure as the brokerage may read it, the sender's first.

        SECURITY (review helper-106 L2): the recipient's ledger may be another
        organisation's, and its relayer's own text (node errors, addresses, URLs) stays in
        this coordinator's log: the caller gets the ledger and the typed reason of a refusal
        (as the error's reason, :func:`generic_refusal`), or that the ledger could not be
        read now."""
        security = request.security
        reads = (
            (request.source_ledger, request.sender),
            (request.target_ledger, request.recipient),
        )
        reading: list[Awaitable[HolderStatus]]
        if self._holders is not None:
            reading = [self._holders.holder_later(ledger, security, h) for ledger, h in reads]
        else:
            relayers = [self._ctx.relayers[ledger] for ledger, _ in reads]  # before any read
            reading = [r.holder(security, h) for r, (_, h) in zip(relayers, reads, strict=True)]
        got = await asyncio.gather(*reading, return_exceptions=True)
        standings: list[HolderStatus] = []
        for (ledger, _), answer in zip(reads, got, strict=True):
            if isinstance(answer, LedgerRejected):
                raise generic_refusal(answer, ledger) from answer
            if isinstance(answer, Unavailable):
                self._ctx.log.warning(
                    "holder standing not read", **{LEDGER: ledger}, error=str(answer)[:500]
                )
                raise Unavailable(f"{ledger} could not be read now; retry") from answer
            if isinstance(answer, BaseException):
                raise answer
            standings.append(answer)
        return standings[0], standings[1]

    async def _precheck(self, request: TransferRequest) -> None:
        sender, target = await self._standings(request)
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
