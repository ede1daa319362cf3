"""Flow limits (ADR 0010) as the coordinator applies them: admission's capacity check, the
queue before the lock, the large-transfer hold before COMMIT, and the lanes' status.

The decisions themselves are pure (``flow_queue.py``); this layer reads their inputs (both
ledgers' buckets through the relayers, the lane's backlog from the store) and records the
outcome (state, wait reason, not-before).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.context import EngineContext
from bridge.coordinator.flow_queue import AHEAD_AT_SOURCE, AHEAD_AT_TARGET, admit, never_fits
from bridge.coordinator.lane_backlogs import lane_of
from bridge.coordinator.lane_wakes import LaneWakes
from bridge.coordinator.records import Decision, TransferRecord, TransferRequest
from bridge.coordinator.wording import NOT_LOCKED_PAST_DEADLINE, generic_refusal, iso
from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import BridgeError, LedgerRejected, PreconditionFailed, Unavailable
from bridge.domain.flow import FlowStatus, WaitReason
from bridge.domain.legs import LegStatus
from bridge.domain.transfer import NextStep, StepKind, TransferState

_MAX_SHARED_READS = 10_000
"""Most callers one coalesced lane read answers (they share one answer: no per-item cost)."""

OPEN_LANES_MAX = 100_000
"""Most new transfers held as having an open lane (:meth:`FlowLimits.note_open`); past it
a new one's gate simply reads (each entry is used by its transfer's first gate)."""


# ---- flow limits (ADR 0010)
class FlowQueued(Exception):
    """The transfer was (re)queued on a lane's limit, or is held by a ledger's delay; its
    driver checks again later.

    ``deadline``: the transfer's, when the wait is before its lock (the driver never sleeps
    past it: :func:`~bridge.coordinator.flow_queue.recheck_in`); None for a locked
    transfer held by a delay, which waits past it."""

    def __init__(self, detail: str, retry_in: int, deadline: int | None = None) -> None:
        super().__init__(detail)
        self.retry_in = retry_in
        self.deadline = deadline


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


FlowKey = tuple[str, str, str]
"""(ledger, security, counterpart ledger): one lane's limit as one ledger keeps it."""


class FlowLimits:
    """The coordinator's side of the lanes' limits.

    Guarantees: level-triggered (every input is re-read on each call, so a restarted
    coordinator resumes its queue in the same order), and a transfer is never let through
    to the lock past its deadline nor to COMMIT inside a ledger's large-transfer delay.

    With ``max_in_flight`` (batched steps on, issue 14) the lane reads of many transfers
    are coalesced per (ledger, security, counterpart): a read with none of its key in flight
    goes out at once; reads arriving while one is in flight share the next ``GetFlowStatus``,
    which starts after every one of them was asked (never an answer read before its caller
    asked: the level-triggered guarantee holds per call), after ``linger_ms`` for more.
    """

    def __init__(
        self,
        ctx: EngineContext,
        max_in_flight: int | None = None,
        linger_ms: float = 0.0,
        wake: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._ctx = ctx
        # ---- a lane's queued transfers, woken when one ahead leaves without its capacity
        self._wakes = LaneWakes(wake or (lambda _: False), ctx.max_backoff)
        self._reads: Coalescer[FlowKey, None, FlowStatus] | None = (
            Coalescer(self._flush_reads, _MAX_SHARED_READS, max_in_flight, linger_ms)
            if max_in_flight is not None
            else None
        )
        # ---- lanes read open at admission (note_open): transfer id -> usable until
        self._open: dict[bytes, float] = {}

    async def lane_status(self, request: TransferRequest) -> tuple[FlowStatus, FlowStatus]:
        """The source's limit towards the target and the target's from the source, read
        together; when both fail, the source's failure is raised (whichever came first)."""
        src, dst, security = request.source_ledger, request.target_ledger, request.security
        reading: tuple[Awaitable[FlowStatus], Awaitable[FlowStatus]]
        if self._reads is not None:  # a future each, no task each
            reading = (
                self._reads.enqueue((src, security, dst), None),
                self._reads.enqueue((dst, security, src), None),
            )
        else:
            ends = self._ctx.relayers[src], self._ctx.relayers[dst]  # both before any read
            reading = (ends[0].flow_status(security, dst), ends[1].flow_status(security, src))
        source, target = await asyncio.gather(*reading, return_exceptions=True)
        if isinstance(source, BaseException):
            raise source
        if isinstance(target, BaseException):
            raise target
        return source, target

    async def _flush_reads(
        self, key: FlowKey, items: Sequence[None]
    ) -> Sequence[FlowStatus | BaseException]:
        """One read answers every caller that asked before it started."""
        ledger, security, counterpart = key
        status = await self._ctx.relayers[ledger].flow_status(security, counterpart)
        return [status] * len(items)

    async def close(self) -> None:
        """Answer (with an error) any read still waiting; stop the flushes in flight; forget
        the lanes held as open (another coordinator may act while this one is stopped)
        and the queued transfers (their drivers are stopped)."""
        self._open.clear()
        self._wakes.close()
        if self._reads is not None:
            await self._reads.close()

    async def precheck(self, request: TransferRequest) -> bool:
        """Refuse (PreconditionFailed) an amount above a lane capacity: it could never go.
        Returns whether the lane is open: neither its source's outbound nor its target's
        inbound rate is limited, so :meth:`gate` would let any transfer go."""
        try:
            source, target = await self.lane_status(request)
        except LedgerRejected as exc:
            raise generic_refusal(exc) from exc
        except Unavailable as exc:
            # SECURITY (review helper-108 L4): the target's relayer may be another
            # organisation's; its text (node errors, addresses) stays in this log.
            lane = f"{request.source_ledger} -> {request.target_ledger}"
            self._ctx.log.warning("lane flow limits not read", lane=lane, error=str(exc)[:500])
            raise Unavailable(f"the flow limits of {lane} could not be read now; retry") from exc
        refusal = never_fits(request.amount, source, target)
        if refusal is not None:
            raise PreconditionFailed(refusal)
        return not (source.outbound.limited or target.inbound.limited)

    # ---- an open lane known without a read (issue 14 item 4) -------------------------------
    def note_open(self, transfer_id: bytes, until: float) -> None:
        """``transfer_id`` was just recorded after :meth:`precheck` found its lane open:
        its first :meth:`gate` lets it go without reading the lane again, if it comes by
        ``until`` (``time.monotonic()``; admission allows 2 s after its read).

        SECURITY: the limits are the ledgers' own. A rate limit set on the lane in that
        moment is still enforced: by the source on the lock (``FlowLimitExceeded``; the
        next gate reads and queues) and by the target on the prepare (the transfer waits
        there, in escrow, until it fits or its deadline aborts it). What is lost in that
        moment is only the coordinator's queue order for that one transfer, as it was
        before when a limit was set between the gate's read and the lock."""
        now = time.monotonic()
        if len(self._open) >= OPEN_LANES_MAX:  # entries whose first gate never came
            self._open = {t: u for t, u in self._open.items() if u >= now}
        if len(self._open) < OPEN_LANES_MAX:
            self._open[transfer_id] = until

    def forget_open(self) -> None:
        """Drop every lane held as open (the engine starts or stops)."""
        self._open.clear()

    # ---- a deep queue sleeps toward its estimate (issue 14, ADR 0010 amendment) ----------
    def released(self, record: TransferRecord) -> None:
        """``record`` ended FAILED before its prepare (``EngineContext.set_state``): the
        transfers queued behind it on its lane are woken (:class:`LaneWakes`; review
        helper-122 M1, helper-123 M-a: each slept toward an estimate that counted it)."""
        self._wakes.freed(lane_of(record.request), record.transfer_id, record.created_at)

    async def gate(self, record: TransferRecord) -> bool:
        """Before the lock: go (False), queue (raises FlowQueued), or FAILED (True).

        Level-triggered: everything it needs is re-read each time (both ledgers' buckets
        through the relayers, the lane's earlier transfers from the store, whose reads of
        a whole lane are kept for up to a second and never count less than a read now,
        ADR 0010 amendment; once per transfer an open lane admission has just read stands
        in, :meth:`note_open`), so a restarted coordinator finds its queue in the store and
        resumes it in the same order. A queued
        transfer is never locked after its deadline: it ends FAILED with the reason and
        nothing moved (the deadline is the instructor's signed term; the bridge cannot
        extend it, and a lock that late could only expire and be released).
        """
        ctx = self._ctx
        tid = record.transfer_id
        until = self._open.pop(tid, None)  # admission has just read this lane open
        if until is not None and time.monotonic() <= until:
            await self._leave_queue(record)
            return False
        source, target = await self.lane_status(record.request)
        if not (source.outbound.limited or target.inbound.limited):
            await self._leave_queue(record)
            return False
        amount = record.request.amount
        refusal = never_fits(amount, source, target)
        if refusal is not None:  # the admin lowered a capacity after the submission
            await self._fail(record, f"not locked: {refusal}")
            return True
        verdict = admit(
            amount,
            await ctx.store.lane_backlog(tid, AHEAD_AT_SOURCE),
            await ctx.store.lane_backlog(tid, AHEAD_AT_TARGET),
            source,
            target,
        )
        # SECURITY (review helper-122 H1): the deadline first, room or not. A gate after
        # it would send a lock the instructor's term no longer covers (every ledger now
        # refuses it too, but a Fabric envelope endorsed in time can still be ordered).
        if time.time() > record.terms.deadline:
            if verdict.go and record.state is not TransferState.QUEUED:
                reason = NOT_LOCKED_PAST_DEADLINE
            else:  # the room came too late, or not at all
                detail = verdict.detail or "room on the lane came after it"
                reason = f"queued until its deadline passed, nothing moved: {detail}"
            await self._fail(record, reason)
            return True
        if verdict.go:
            await self._leave_queue(record)
            return False
        not_before = time.time() + verdict.retry_in
        if record.wait_reason is not verdict.reason or record.state is not TransferState.QUEUED:
            await ctx.store.set_wait(tid, verdict.reason, not_before)
        await ctx.set_state(record, TransferState.QUEUED, f"queued: {verdict.detail}")
        self._wakes.sleeps(lane_of(record.request), tid, record.created_at)
        raise FlowQueued(verdict.detail, verdict.retry_in, record.terms.deadline)

    async def _fail(self, record: TransferRecord, reason: str) -> None:
        """End ``record`` FAILED before its lock (nothing moved; the state change wakes the
        lane's queue behind it: :meth:`released`), its wait cleared."""
        await self._ctx.set_state(record, TransferState.FAILED, reason)
        await self.clear_wait(record)

    async def hold_for_delay(
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
        ctx = self._ctx
        committing = (step.step is StepKind.CERTIFY and step.claim is ClaimKind.COMMIT) or (
            step.step is StepKind.APPLY and decision is not None
            and decision.kind is ClaimKind.COMMIT
        )  # fmt: skip
        held = max(source.not_before, target.not_before) if committing else 0
        now = time.time()
        if held <= now:
            if record.wait_reason is WaitReason.LARGE_TRANSFER_DELAY:
                await ctx.store.set_wait(record.transfer_id, WaitReason.NONE, 0.0)
            return
        reason = (
            f"large transfer: held by the ledgers' delay until {iso(held)}"
            " (above the lane's large-transfer allowance); it commits then"
        )
        await ctx.set_state(record, step.state, reason)
        if record.wait_reason is not WaitReason.LARGE_TRANSFER_DELAY or record.not_before != held:
            await ctx.store.set_wait(
                record.transfer_id, WaitReason.LARGE_TRANSFER_DELAY, float(held)
            )
        raise FlowQueued(reason, max(1, int(held - now)))

    async def _leave_queue(self, record: TransferRecord) -> None:
        """The lock may go: a QUEUED transfer keeps its wait until the driver's next state
        (SUBMITTED, "locking") ends it in the same store transaction, so no reader sees
        QUEUED without its wait reason and ``not_before`` (a separate clear first left such
        a window; ``tests/e2e/test_flow_limits.py`` failed on it once); any other
        transfer's stale wait is cleared now."""
        self._wakes.leaves(lane_of(record.request), record.transfer_id)
        if record.state is not TransferState.QUEUED:
            await self.clear_wait(record)

    async def clear_wait(self, record: TransferRecord) -> None:
        """Clear ``record``'s recorded wait, if it has one."""
        if record.wait_reason is not WaitReason.NONE:
            await self._ctx.store.set_wait(record.transfer_id, WaitReason.NONE, 0.0)

    async def note_flow_wait(self, tid: bytes, exc: BaseException) -> None:
        """Make a ledger's large-transfer delay readable: wait reason and not-before."""
        if isinstance(exc, LedgerRejected) and exc.reason == ErrorReason.TOO_EARLY:
            at = exc.not_before  # the ledger's typed figure (ADR 0015), never message text
            await self._ctx.store.set_wait(tid, WaitReason.LARGE_TRANSFER_DELAY, float(at or 0))

    async def lane_flows(self, security: str) -> list[LaneFlow]:
        """Every lane (source -> target) of ``security`` between the connected ledgers: both
        ledgers' flow status (or why it could not be read) and what is queued on it."""
        names = sorted(self._ctx.relayers)
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
                    source, target = await self.lane_status(request)
                except BridgeError as exc:
                    error = str(exc)
                count, units, oldest = await self._ctx.store.queued_on_lane(security, src, dst)
                lanes.append(
                    LaneFlow(security, src, dst, source, target, count, units, oldest, error)
                )
        return lanes
