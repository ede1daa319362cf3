"""Ledger event intake: relayer-delivered events, the adoption of holder-direct locks, and
the confirmation of every lock on its ledger before the coordinator acts on it.

An event is a hint, never an authority: it wakes the transfer it names, and a lock it
reports is read on the source ledger (at finality, through that ledger's relayer) before
it is adopted or resumes a FAILED transfer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bridge.coordinator.context import EngineContext
from bridge.coordinator.records import TransferOrigin, TransferRecord, TransferRequest
from bridge.coordinator.requests import ADOPTED_KEY_PREFIX
from bridge.coordinator.store import ManyRecords, UnreadableRecord
from bridge.coordinator.supervision import Supervisor
from bridge.domain.errors import (
    BridgeError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.ids import SecurityId
from bridge.domain.legs import LedgerEvent, Leg, LegState, LegStatus
from bridge.domain.transfer import TransferState
from bridge.ledgers.addresses import codec_for
from bridge.logfields import COUNT, ERROR, LEDGER, REASON, STATE, TRANSFER, TRANSFERS, TX

# Outbound leg states that prove a lock with the leg's terms hash happened (a leg leaves
# LOCKED only for BURNED or RELEASED, keeping its terms hash).
_LOCKED_OR_AFTER = frozenset({LegState.LOCKED, LegState.BURNED, LegState.RELEASED})


class EventNotConfirmed(PreconditionFailed):
    """A LOCKED event that the source ledger, read at finality, does not confirm."""


class Intake:
    """Acts on ledger events and on locks found after a transfer FAILED.

    Guarantees: an event is acted on before it is recorded as seen (acting is idempotent);
    a transfer is adopted, or a FAILED one resumed, only for a lock its source ledger shows
    with the same terms hash; a resume is a compare-and-set on FAILED.
    """

    def __init__(self, ctx: EngineContext, drivers: Supervisor) -> None:
        self._ctx = ctx
        self._drivers = drivers
        # One delivery of a ledger at a time (review helper-118 #2: the adoption bound is
        # counted per delivery; concurrent deliveries each counted the same room).
        self._delivering: dict[str, asyncio.Lock] = {}
        # Deliveries of a ledger waiting for its lock or holding it: the sweep takes the
        # lock only when none is (then it is taken at once; review helper-131 M1).
        self._deliveries: Counter[str] = Counter()

    async def on_events(self, ledger: str, events: list[LedgerEvent], scanned: int) -> int:
        """Record relayer-delivered events (deduplicated) and wake the transfers they touch;
        returns how many were new (see ``Coordinator.on_events``). A ledger's deliveries
        are acted on one at a time."""
        if ledger not in self._ctx.domains:
            raise NotFound(f"ledger {ledger!r} is not connected")
        lock = self._delivering.setdefault(ledger, asyncio.Lock())
        self._deliveries[ledger] += 1
        try:
            async with lock:
                return await self._deliver(ledger, events, scanned)
        finally:
            self._deliveries[ledger] -= 1

    async def _deliver(self, ledger: str, events: list[LedgerEvent], scanned: int) -> int:
        ctx = self._ctx
        # Act first, then record the events as seen: acting is idempotent, so a crash in
        # between only means the relayer's re-delivery is acted on again, never skipped.
        kept: list[LedgerEvent] = []
        adoptions = _Adoptions(ctx, ledger)
        # The batch's transfers in one read per page (issue 14: a delivery of thousands of
        # events was a read per event). A transfer an event has acted on (adopted, resumed,
        # woken) is read again for a later event of the same batch: the snapshot may be
        # older than what that event wrote.
        ids = list(dict.fromkeys(e.transfer_id for e in events))
        read = await ctx.store.get_many(ids) if ids else ManyRecords({}, {})
        acted: set[bytes] = set()
        for e in events:
            try:
                if e.transfer_id in acted:
                    record = await ctx.store.get(e.transfer_id)
                elif (unreadable := read.unreadable.get(e.transfer_id)) is not None:
                    raise unreadable
                else:
                    record = read.found.get(e.transfer_id)
            except UnreadableRecord as exc:
                # SECURITY: an unreadable record is never "no transfer" (nothing adopted);
                # its event is kept as seen and named for the operator, and the batch's
                # other events go on (before, every re-delivery failed on it: the ledger's
                # whole intake stopped).
                ctx.log.error(
                    "ledger event for a transfer whose record cannot be read; not acted on,"
                    " operator attention needed",
                    **{LEDGER: ledger, TRANSFER: "0x" + e.transfer_id.hex(), TX: e.tx_id,
                       STATE: e.state.name, ERROR: str(exc)},
                )  # fmt: skip
                kept.append(e)
                continue
            acted.add(e.transfer_id)
            try:
                known = await self._on_event(ledger, e, record, adoptions)
            except Unavailable:
                raise  # not acted on: the relayer re-delivers the batch
            except EventNotConfirmed as exc:
                ctx.log.error(
                    "ledger event refused: the ledger does not show it; not adopted",
                    **{LEDGER: ledger, TRANSFER: "0x" + e.transfer_id.hex(), TX: e.tx_id,
                       REASON: str(exc)},
                )  # fmt: skip
                continue
            except BridgeError as exc:
                known = record is not None
                ctx.log.error(
                    "ledger event not actionable",
                    **{LEDGER: ledger, TRANSFER: "0x" + e.transfer_id.hex(), ERROR: str(exc)},
                )
            kept.append(e)
            if known and ctx.supply is not None and (security := self._security_of(e, record)):
                ctx.supply.touch(security)
        fresh = await ctx.store.record_events(ledger, kept, scanned)
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
        self,
        ledger: str,
        event: LedgerEvent,
        record: TransferRecord | None,
        adoptions: _Adoptions,
    ) -> bool:
        """Act on one event; True when it concerns a transfer the coordinator drives."""
        if record is None:
            if event.state is LegState.LOCKED and event.terms is not None:
                return await self._adopt(ledger, event, adoptions)
            return False
        if ledger not in (record.request.source_ledger, record.request.target_ledger):
            # SECURITY (review helper-117 #3): a transfer's legs are on its two ledgers
            # only. A relayer of another ledger naming it (compromised, or confused) would
            # wake its driver past its backoff, as often as it delivers.
            raise EventNotConfirmed(
                f"an event from {ledger} for a transfer between"
                f" {record.request.source_ledger} and {record.request.target_ledger}"
            )
        if not record.state.terminal:
            # A wake-up only: the driver reads both legs itself before any step (but those
            # that follow its own steps, ADR 0002 amendment; the ledgers check those).
            self._drivers.spawn(event.transfer_id)  # replaces a driver that died
            self._drivers.wake(event.transfer_id)
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
                self._ctx.log.warning(
                    "LOCKED event for a failed transfer whose lock is no longer held; not resumed",
                    **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id,
                       STATE: source.state.name},
                )  # fmt: skip
                return True
            # SECURITY (review helper-128): a resumed adoption takes room under the ledger's
            # bound (``resume_failed``; Unavailable: re-delivered once some have ended).
            # Checked after the read, unlike a new adoption's: an event for a lock since
            # released is dismissed, not held (review helper-130 L1); the delivery stops at
            # the first one refused, so a relayer at the bound gets one read a delivery.
            await self.resume_failed(record, source.terms_hash, event.tx_id, adoptions)
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
        leg = await self._ctx.relayers[ledger].get_leg(tid, Leg.OUTBOUND)
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

    async def recheck_failed(self) -> None:
        """Re-read the source leg of recently FAILED transfers and resume each whose lock
        landed after all (a sweep's work: the lock's event may have been missed)."""
        ctx = self._ctx
        # A lock can land until the transfer's deadline (later on Fabric: its endorsement
        # is bounded by the deadline, its ordering is not): look back one transfer
        # lifetime and ten minutes more.
        since = time.time() - ctx.ttl - 600
        by_ledger: dict[str, list[TransferRecord]] = {}
        for record in await ctx.store.failed_since(since):
            by_ledger.setdefault(record.request.source_ledger, []).append(record)
        for ledger, records in by_ledger.items():
            # ---- batch (issue 14 item 4): every source leg of a ledger in one GetLegs
            try:
                legs = await ctx.relayers[ledger].get_legs(
                    [r.transfer_id for r in records], Leg.OUTBOUND
                )
            except BridgeError:
                continue  # the ledger is unreachable: the next sweep tries again
            found = [
                (r, s) for r, s in zip(records, legs, strict=True) if s.state is LegState.LOCKED
            ]
            if not found:
                continue
            await self._resume_found(ledger, found)

    async def _resume_found(
        self, ledger: str, found: list[tuple[TransferRecord, LegStatus]]
    ) -> None:
        """Resume each FAILED transfer of ``ledger`` whose lock the sweep found: submitted
        ones at once; adopted ones while the ledger's adoptions are below their bound,
        counted as a delivery counts it and under its lock, so a delivery running meanwhile
        does not count the same room. SECURITY (review helper-130 M1, helper-131 M1): that
        lock is never waited for, since a delivery holds it while its relayer answers (a
        compromised one slowly) and the sweep of every ledger would wait: when a delivery
        of the ledger waits for it or holds it, the adopted ones wait for a later sweep.
        Those passed over are logged, by count and first ids: a later sweep (within
        ``transfer_ttl`` + 600 s of their failure) or the lock's event resumes them."""
        adopted = [(r, s) for r, s in found if r.origin is TransferOrigin.ADOPTED]
        for record, source in found:
            if record.origin is not TransferOrigin.ADOPTED:
                await self.resume_failed(record, source.terms_hash, "")
        if not adopted:
            return
        passed: list[bytes] = []
        lock = self._delivering.setdefault(ledger, asyncio.Lock())
        busy = lock.locked() or self._deliveries[ledger] > 0
        if busy:
            passed = [r.transfer_id for r, _ in adopted]
        else:
            async with lock:  # no delivery holds it or waits for it: taken at once
                adoptions = _Adoptions(self._ctx, ledger)
                for record, source in adopted:
                    if passed:  # the bound is reached: the rest wait too
                        passed.append(record.transfer_id)
                        continue
                    try:
                        await self.resume_failed(record, source.terms_hash, "", adoptions)
                    except AdoptionsAtBound:
                        passed.append(record.transfer_id)
        if passed:
            self._ctx.log.warning(
                "locks found for failed adopted transfers; not resumed this sweep",
                **{LEDGER: ledger, COUNT: len(passed),
                   TRANSFERS: ["0x" + t.hex() for t in passed[:5]],
                   REASON: "a delivery is running" if busy else "adoption bound reached"},
            )  # fmt: skip

    async def resume_failed(
        self,
        record: TransferRecord,
        terms_hash: bytes,
        tx_id: str,
        adoptions: _Adoptions | None = None,
    ) -> None:
        """A lock landed after we concluded it could not: never leave units in escrow.

        An adopted transfer is resumed only while its source ledger's unfinished adoptions
        are below their bound (``adoptions``, the caller's count for this delivery or
        sweep; a new one when None): Unavailable otherwise, nothing moved. SECURITY
        (review helper-128): without it a compromised relayer could grow them past the
        bound, adopting fakes up to it, letting them fail, then "showing" their locks."""
        ctx = self._ctx
        tid = record.transfer_id
        if terms_hash != record.terms.terms_hash:
            ctx.log.error(
                "a lock with other terms holds this transfer id; operator attention needed",
                **{TRANSFER: "0x" + tid.hex(), TX: tx_id},
            )
            return
        if record.origin is TransferOrigin.ADOPTED:
            adoptions = adoptions or _Adoptions(ctx, record.request.source_ledger)
            await adoptions.room()
        # SECURITY: compare-and-set, so a transfer that left FAILED meanwhile stays put.
        reason = "lock found on-chain after failure; resuming"
        try:
            write = await ctx.store.resume_failed(
                tid, TransferState.SOURCE_LOCKED, reason, "resumed"
            )
        except UnreadableRecord:
            # Rolled back, and reported by the store (logged once, counted): the operator
            # repairs the row, and a later sweep resumes it. Neither the delivery nor the
            # sweep's other resumes fail for it (review helper-133 L2).
            return
        if write is None:
            ctx.log.warning(
                "failed transfer changed state meanwhile; not resumed",
                **{TRANSFER: "0x" + tid.hex()},
            )
            return
        if record.origin is TransferOrigin.ADOPTED and adoptions is not None:
            adoptions.take()
        ctx.log.error(
            "lock found for a failed transfer; resuming it", **{TRANSFER: "0x" + tid.hex()}
        )
        if record.origin is TransferOrigin.SUBMITTED:
            # Unfinished again: its next terminal state is counted as an end (review
            # helper-121: without this, each resume left the bound's count one too low).
            ctx.unfinished.resumed(record.request.source_ledger)
        ctx.announce(write, reason)  # counted, logged and announced as every state change
        self._drivers.spawn(tid)

    async def _adopt(self, ledger: str, event: LedgerEvent, adoptions: _Adoptions) -> bool:
        """Record the transfer of a holder-direct lock, origin ADOPTED, if the ledger shows
        it; True when it is (or already was) recorded."""
        ctx = self._ctx
        terms = event.terms
        assert terms is not None
        if terms.transfer_id != event.transfer_id or terms.terms_hash != event.terms_hash:
            raise EventNotConfirmed("the event's terms do not hash to its transfer id and hash")
        dst = ctx.ledger_by_word.get(terms.dst_ledger)
        if (
            dst is None
            or terms.src_ledger != ctx.domains[ledger].ledger_word
            or terms.dst_bridge != ctx.domains[dst].bridge_word
        ):
            # Members would certify only an ABORT on the source alone for it
            # (verifiers/policy.py:check_abort_unknown_target), and nothing asks them: units
            # escrowed towards an endpoint we do not know need an operator (see
            # docs/architecture.md, known limitations).
            ctx.log.error(
                "lock towards an unknown ledger or bridge endpoint; not adopted",
                **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id},
            )
            return False
        await adoptions.room()  # before asking the relayer (review helper-118 #2)
        # SECURITY: adopt only what the source ledger shows (see _confirmed_lock).
        await self._confirmed_lock(ledger, event.transfer_id, event.terms_hash)
        adoptions.take()
        try:
            recipient = codec_for(ctx.network.ledgers[dst].kind).format(terms.recipient)
        except InvalidInput:
            recipient = "0x" + terms.recipient.hex()  # the target will reject it; show it raw
        request = TransferRequest(
            idempotency_key=f"{ADOPTED_KEY_PREFIX}0x{event.transfer_id.hex()}",
            security=SecurityId.from_word(terms.security).isin,
            source_ledger=ledger,
            target_ledger=dst,
            sender=codec_for(ctx.network.ledgers[ledger].kind).format(terms.sender),
            recipient=recipient,
            amount=terms.amount,
        )
        now = time.time()
        record = TransferRecord(
            event.transfer_id, request, terms, TransferState.SOURCE_LOCKED,
            "locked directly on-chain by the holder", now, now,
            origin=TransferOrigin.ADOPTED,
        )  # fmt: skip
        stored, created = await ctx.store.create(record)
        if stored.transfer_id != event.transfer_id:
            # SECURITY: another transfer holds this lock's adoption key (a row written before
            # the "onchain:" prefix was reserved). Never report that as an adoption.
            ctx.log.error(
                "adoption key of a holder-direct lock is held by another transfer; not adopted,"
                " operator attention needed",
                **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id,
                   "holder": "0x" + stored.transfer_id.hex()},
            )  # fmt: skip
            return False
        if created:
            await ctx.store.add_transaction(event.transfer_id, "lock", event.tx_id)
            ctx.log.info(
                "holder-direct lock adopted after reading it on the ledger",
                **{LEDGER: ledger, TRANSFER: "0x" + event.transfer_id.hex(), TX: event.tx_id},
            )
            self._drivers.spawn(event.transfer_id)
        return True


MAX_UNFINISHED_ADOPTED = 1_000
"""Most transfers adopted from one ledger that may be unfinished at once; past it, that
ledger's deliveries are refused Unavailable (re-delivered later) until some end."""


class AdoptionsAtBound(Unavailable):
    """A ledger has ``MAX_UNFINISHED_ADOPTED`` unfinished adopted transfers: no more is
    adopted or resumed from it now (UNAVAILABLE: its relayer delivers again later)."""


class _Adoptions:
    """How many more transfers one delivery of a ledger's events may adopt.

    SECURITY (review helper-117 #3): "the source ledger shows the lock" is its relayer's
    word (``_confirmed_lock``). A compromised relayer could deliver thousands of LOCKED
    events for locks that do not exist; each would be adopted and driven until its
    deadline (the event's own term), the committee refusing it every time: a place in
    every certification batch, leg reads and a driver per fake transfer. The unfinished
    adoptions of a ledger are bounded; past the bound its delivery is refused Unavailable,
    so nothing is lost: an honest relayer re-delivers the batch once some have ended."""

    def __init__(self, ctx: EngineContext, ledger: str) -> None:
        self._ctx = ctx
        self._ledger = ledger
        self._room: int | None = None  # read once per delivery, on its first adoption

    async def room(self) -> None:
        """Raise Unavailable when the ledger has no room for one more adoption."""
        if self._room is None:
            unfinished = await self._ctx.store.unfinished_adopted(self._ledger)
            self._room = MAX_UNFINISHED_ADOPTED - unfinished
        if self._room <= 0:
            self._ctx.log.error(
                "adoptions paused: too many unfinished adopted transfers from this ledger",
                **{LEDGER: self._ledger, "most": MAX_UNFINISHED_ADOPTED},
            )
            raise AdoptionsAtBound(
                f"{MAX_UNFINISHED_ADOPTED} transfers adopted from {self._ledger} are unfinished;"
                " deliver again later"
            )

    def take(self) -> None:
        """Count one adoption (after :meth:`room`)."""
        assert self._room is not None
        self._room -= 1
