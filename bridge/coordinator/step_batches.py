"""Batched steps (issue 14): the step engine's ledger transactions and committee
signatures for many transfers at once, transparently to the per-transfer drivers.

Each driver still takes one step of one transfer (:mod:`bridge.coordinator.stepper`); where
the step is batchable it awaits :class:`StepBatcher`, which coalesces the drivers' items
per key (:class:`~bridge.coordinator.coalesce.Coalescer`) and flushes them as one call:

- LOCK, per source ledger: one ``submit_batch(LOCK)`` with each item's instruction;
- PREPARE, per lane (source, target): one ``certify_batch(LOCKED)`` for the target, then
  one ``submit_batch(PREPARE)`` under that batch certificate with each item's proof;
- CERTIFY COMMIT/ABORT, per (kind, source, target): one ``certify_batch`` for both
  ledgers; each transfer's decision is recorded with, per ledger, the batch certificate
  and its own proof (:class:`~bridge.domain.batch_certified.BatchCertified`);
- APPLY COMMIT/ABORT, per (ledger, action, batch certificate): one ``submit_batch``.

Every item gets back exactly what its own single step would have given: a ledger refusal
naming an item is that item's ``LedgerRejected`` (the rest are sent again without it);
members refusing items (``BatchItemsRefused``) refuse those items (the rest are certified
again); Unavailable reaches every item (the drivers re-read the ledgers and try again);
any other doubt (a refusal naming no item, a malformed or foreign answer) is
:class:`RunSingle` for the items concerned: the driver takes today's single step, which is
always safe because every step is idempotent. MARK_EXPIRED and re-certification under a
new epoch are never batched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bridge.config import BatchingConfig
from bridge.coordinator.batch_certs import BatchItemsRefused
from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.context import EngineContext
from bridge.coordinator.epochs import RECERTIFY_REASONS
from bridge.coordinator.records import Decision, TransferOrigin, TransferRecord
from bridge.core.batch import BatchCertificate
from bridge.core.reasons import ErrorReason
from bridge.domain.batch_certified import BatchCertified
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    InvalidInput,
    LedgerRejected,
    PreconditionFailed,
    Unavailable,
    reason_name,
    with_public,
)
from bridge.domain.ledger_batches import (
    BatchAnswerMismatch,
    BatchItem,
    BatchOutcome,
    refused_item,
)
from bridge.domain.legs import Action, Leg, TxOutcome
from bridge.logfields import COUNT, LEDGER, STATE, TX

LIMIT_RECHECK_S = 60.0
"""How long a relayer that reported no batched step is believed before it is asked again."""

__all__ = [
    "BATCH_LIMITS",
    "STEP_NAMES",
    "BatchSubmitter",
    "NoBatches",
    "RunSingle",
    "StepBatcher",
    "submit_alone",
]

STEP_NAMES: Mapping[tuple[Action, Leg], str] = {
    (Action.LOCK, Leg.OUTBOUND): "lock",
    (Action.PREPARE, Leg.INBOUND): "prepare",
    (Action.MARK_EXPIRED, Leg.INBOUND): "expire",
    (Action.COMMIT, Leg.OUTBOUND): "burn",
    (Action.COMMIT, Leg.INBOUND): "mint",
    (Action.ABORT, Leg.OUTBOUND): "release",
    (Action.ABORT, Leg.INBOUND): "abort",
}
"""The name a transfer's record gives the transaction of each step (``Transfer.transactions``)."""

BATCH_LIMITS: Mapping[str, int] = {"evm": 100, "fabric": 200, "cometbft": 50}
"""Most items the coordinator puts in one batched invocation per ledger kind: the EVM
adapter's ``MAX_EVM_BATCH_ITEMS`` (a 100-item lockBatch is under 40% of a 30M-gas block),
the chaincode's 200, and 50 for a CometBFT transaction (its adapter takes 200; kept well
inside a block). A kind not listed is bounded by the configured ``max_items`` alone."""


class RunSingle(Exception):
    """The batch could not say what became of this item: take the single step instead
    (steps are idempotent, so this is always safe)."""


class NoBatches(RunSingle):
    """The ledger's relayer has no batched step (it predates ``SubmitBatch``): a decision
    recorded with a batch certificate is re-certified alone for that ledger."""


@runtime_checkable
class BatchSubmitter(Protocol):
    """The relayer gateway's batched step (``RelayerGateway.submit_batch``)."""

    async def submit_batch(
        self, action: Action, items: Sequence[BatchItem], certificate: BatchCertificate | None
    ) -> BatchOutcome:
        """Apply ``action`` to every item in one invocation (LedgerRejected, Unavailable,
        InvalidInput as the relayer answers)."""
        ...

    async def max_batch_items(self) -> int:
        """The most items one ``submit_batch`` may carry (0: the relayer has none)."""
        ...


@dataclass(frozen=True, slots=True)
class _Item:
    record: TransferRecord
    cause: str = ""
    certified: BatchCertified | None = None


Answer = TxOutcome | BaseException


async def submit_alone(
    gateway: object, action: Action, record: TransferRecord, certified: BatchCertified
) -> TxOutcome:
    """Apply ``action`` to one transfer under its share of a batch certificate: the single
    step of a decision recorded from a batch. Raises what the relayer raises; NoBatches
    when the relayer has no batched step; Unavailable when it answers about another
    transfer."""
    if not isinstance(gateway, BatchSubmitter) or await gateway.max_batch_items() < 1:
        raise NoBatches()
    item = BatchItem(record.terms, proof=certified.proof)
    outcome = await gateway.submit_batch(action, [item], certified.certificate)
    answers = _read(outcome, [item])
    if answers is None:
        raise Unavailable("the relayer answered about other transfers than it was sent")
    return answers[0]


def _not_leader(answer: Answer) -> bool:
    """Whether ``answer`` says this coordinator may no longer lead (NOT_LEADER: a store
    write fenced out of its lease, ``lease.Fenced``)."""
    return isinstance(answer, BridgeError) and answer.kind is BridgeReason.NOT_LEADER


def _step_name(action: Action, outbound: bool) -> str:
    """The name of ``action``'s step on a transfer's outbound (source) or inbound leg."""
    return STEP_NAMES[(action, Leg.OUTBOUND if outbound else Leg.INBOUND)]


def _read(outcome: BatchOutcome, items: Sequence[BatchItem]) -> list[TxOutcome] | None:
    """Each item's outcome, or None when the answer is not about exactly ``items`` in
    order. SECURITY: nothing a relayer answers about transfers it was not sent is
    believed; an item the invocation skipped (already applied) gets no transaction id, so
    the records never name a transaction that did not move it."""
    if len(outcome.items) != len(items):
        return None
    out: list[TxOutcome] = []
    for result, item in zip(outcome.items, items, strict=True):
        if result.transfer_id != item.terms.transfer_id:
            return None
        tx_id = "" if result.skipped else outcome.tx_id
        out.append(TxOutcome(tx_id=tx_id, height=outcome.height, already_applied=result.skipped))
    return out


class StepBatcher:
    """Coalesces the drivers' batchable steps into batched ledger and committee calls.

    Guarantees: each call answers exactly what its transfer's single step would have
    (its outcome, its own refusal, Unavailable), or raises :class:`RunSingle` when the
    batch left its item in doubt; no item is ever dropped or answered for another.
    SECURITY: the stepper applies every per-transfer gate (origin, instruction, halts,
    flow limits, deadline) before an item joins a batch; a LOCK item of a transfer the
    bridge did not receive from a brokerage is refused here again; a decision is recorded
    (durably, with each ledger's batch certificate and the transfer's proof) before the
    call returns, so before any leg is asked to apply it.
    """

    def __init__(self, ctx: EngineContext, settings: BatchingConfig) -> None:
        self._ctx = ctx
        self._limits: dict[str, tuple[int, float]] = {}
        kinds = {lc.kind for lc in ctx.network.ledgers.values()}
        limit = min([settings.max_items, *(BATCH_LIMITS.get(k, settings.max_items) for k in kinds)])
        self.max_items = limit

        bounds = (limit, settings.max_in_flight, settings.linger_ms)
        self._locks: Coalescer[str, _Item, TxOutcome] = Coalescer(self._flush_locks, *bounds)
        self._prepares: Coalescer[tuple[str, str], _Item, TxOutcome] = Coalescer(
            self._flush_prepares, *bounds
        )
        self._decisions: Coalescer[tuple[ClaimKind, str, str], _Item, Decision] = Coalescer(
            self._flush_decisions, *bounds
        )
        self._applies: Coalescer[tuple[str, Action, BatchCertificate], _Item, TxOutcome] = (
            Coalescer(self._flush_applies, *bounds)
        )

    # ---- what the stepper calls -------------------------------------------------------
    async def lock(self, record: TransferRecord) -> TxOutcome:
        """LOCK ``record`` on its source ledger in a batch (its instruction carried). Like
        ``prepare`` and ``apply``: the outcome's transaction is already recorded in the
        transfer's record (with the batch's other items, in one store write)."""
        if record.origin is not TransferOrigin.SUBMITTED:
            # SECURITY: the bridge locks only for a transfer a brokerage submitted.
            raise PreconditionFailed("the bridge never locks for an adopted transfer")
        return await self._locks.call(record.request.source_ledger, _Item(record))

    async def prepare(self, record: TransferRecord) -> TxOutcome:
        """Certify LOCKED for the target and PREPARE ``record`` there, in a batch of its
        lane. The caller has checked that the lock was instructed."""
        lane = (record.request.source_ledger, record.request.target_ledger)
        return await self._prepares.call(lane, _Item(record))

    async def decide(self, kind: ClaimKind, record: TransferRecord, cause: str) -> Decision:
        """Certify ``kind`` for ``record`` on both its ledgers in a batch and record the
        decision; returns the recorded one (an earlier one if there was: never replaced)."""
        key = (kind, record.request.source_ledger, record.request.target_ledger)
        return await self._decisions.call(key, _Item(record, cause))

    async def apply(
        self, ledger: str, action: Action, record: TransferRecord, certified: BatchCertified
    ) -> TxOutcome:
        """Apply ``action`` to ``record`` on ``ledger`` under its recorded batch
        certificate, in one invocation with the other transfers of that certificate."""
        key = (ledger, action, certified.certificate)
        return await self._applies.call(key, _Item(record, certified=certified))

    async def close(self) -> None:
        """Cancel every running flush (their drivers are cancelled too on stop)."""
        for c in (self._locks, self._prepares, self._decisions, self._applies):
            await c.close()

    # ---- flushes ------------------------------------------------------------------------
    async def _flush_locks(self, ledger: str, items: Sequence[_Item]) -> list[Answer]:
        batch = [BatchItem(i.record.terms, instruction=i.record.instruction) for i in items]
        return await self._submit(ledger, Action.LOCK, batch, None)

    async def _flush_applies(
        self, key: tuple[str, Action, BatchCertificate], items: Sequence[_Item]
    ) -> list[Answer]:
        ledger, action, certificate = key
        batch = [
            BatchItem(i.record.terms, proof=i.certified.proof if i.certified else ()) for i in items
        ]
        return await self._submit(ledger, action, batch, certificate)

    async def _flush_prepares(self, lane: tuple[str, str], items: Sequence[_Item]) -> list[Answer]:
        _, dst = lane
        if not await self._takes_batches(dst):
            return [NoBatches() for _ in items]  # no LOCKED batch for a ledger without them
        certified = await self._certify(ClaimKind.LOCKED, [i.record for i in items], [dst])
        answers: list[Answer | None] = [None] * len(items)
        sendable: list[int] = []
        for n, got in enumerate(certified):
            if isinstance(got, BaseException):
                answers[n] = got
            else:
                sendable.append(n)
        if sendable:
            first = certified[sendable[0]]
            assert not isinstance(first, BaseException)
            certificate = first[dst].certificate
            batch: list[BatchItem] = []
            for n in sendable:
                mine = certified[n]
                assert not isinstance(mine, BaseException)
                batch.append(BatchItem(items[n].record.terms, proof=mine[dst].proof))
            prepared = await self._submit(dst, Action.PREPARE, batch, certificate)
            for n, answer in zip(sendable, prepared, strict=True):
                answers[n] = answer
        return [a if a is not None else RunSingle() for a in answers]

    async def _flush_decisions(
        self, key: tuple[ClaimKind, str, str], items: Sequence[_Item]
    ) -> list[Decision | BaseException]:
        kind, src, dst = key
        certified = await self._certify(kind, [i.record for i in items], [src, dst])
        decided = {
            n: Decision(kind, got, item.cause)
            for n, (item, got) in enumerate(zip(items, certified, strict=True))
            if not isinstance(got, BaseException)
        }
        # SECURITY: recorded (first one wins, never replaced) before any leg is asked to
        # apply it: the drivers read it back from the store for the APPLY step. One
        # transaction for the batch: a failed write records none and reaches every
        # certified item (each item the members refused keeps its own refusal).
        stored: Sequence[Decision | BaseException]
        try:
            stored = await self._ctx.store.record_decisions(
                [(items[n].record.transfer_id, d) for n, d in decided.items()]
            )
        except Exception as exc:
            stored = [exc] * len(decided)
        recorded = dict(zip(decided, stored, strict=True))
        return [
            got if isinstance(got, BaseException) else recorded[n]
            for n, got in enumerate(certified)
        ]

    # ---- the committee ------------------------------------------------------------------
    async def _certify(
        self, kind: ClaimKind, records: Sequence[TransferRecord], ledgers: Sequence[str]
    ) -> list[dict[str, BatchCertified] | BaseException]:
        """Per record, its share of a batch certificate of ``kind`` for each of ``ledgers``
        (all from one ``certify_batch``), or what it gets instead: the members' refusal of
        it, Unavailable, or RunSingle. Items the members refuse are dropped and the rest
        certified again."""
        ctx = self._ctx
        answers: list[dict[str, BatchCertified] | BaseException | None] = [None] * len(records)
        live = list(range(len(records)))
        domains = [ctx.domains[n] for n in ledgers]
        while live:
            terms = [records[n].terms for n in live]
            try:
                certs = await ctx.committee.certify_batch(
                    kind, terms, domains, await self._epochs_of(ledgers)
                )
            except BatchItemsRefused as exc:
                refused = {i.index: i for i in exc.items if 0 <= i.index < len(live)}
                if not refused:
                    break  # nothing named among ours: RunSingle for the rest
                for index, item in refused.items():
                    reason = item.reason if isinstance(item.reason, ErrorReason) else None
                    # SECURITY: the member's words stay in this log; a brokerage reads
                    # the item's typed reason only (MemberRefusal).
                    answers[live[index]] = with_public(
                        PreconditionFailed(
                            f"committee refused {kind.name}: {item.message}", reason
                        ),
                        f"committee refused {kind.name}: {reason_name(item.reason)}",
                    )
                live = [n for j, n in enumerate(live) if j not in refused]
                continue
            except Unavailable as exc:
                for n in live:
                    answers[n] = exc
                break
            except BridgeError as exc:
                ctx.log.warning(
                    "batched certification failed; certifying one by one",
                    **{STATE: kind.name},
                    error=f"{type(exc).__name__}: {str(exc)[:500]}",
                    items=len(live),
                )
                break
            for j, n in enumerate(live):
                answers[n] = {
                    name: BatchCertified(certs[name].certificate, certs[name].items[j].proof)
                    for name in ledgers
                }
            break
        return [a if a is not None else RunSingle() for a in answers]

    async def _epochs_of(self, ledgers: Sequence[str]) -> dict[str, tuple[Committee, ...]] | None:
        if self._ctx.epochs is None:
            return None
        return await self._ctx.epochs.accepted(list(ledgers))

    # ---- the relayer --------------------------------------------------------------------
    async def _limit(self, ledger: str, gateway: BatchSubmitter) -> int:
        """The most items one ``submit_batch`` may carry on ``ledger`` as its relayer
        reports it, asked once (a relayer without batches, 0, is asked again after
        :data:`LIMIT_RECHECK_S`: it may have been upgraded). Raises Unavailable."""
        known = self._limits.get(ledger)
        now = time.monotonic()
        if known is not None and (known[0] > 0 or now - known[1] < LIMIT_RECHECK_S):
            return known[0]
        limit = max(0, await gateway.max_batch_items())
        self._limits[ledger] = (limit, now)
        return limit

    async def _takes_batches(self, ledger: str) -> bool:
        """Whether ``ledger``'s relayer takes batched steps (True while it cannot be asked:
        the batch then meets the same Unavailable as its items would)."""
        gateway = self._ctx.relayers[ledger]
        if not isinstance(gateway, BatchSubmitter):
            return False
        try:
            return await self._limit(ledger, gateway) > 0
        except Unavailable:
            return True

    async def _submit(
        self,
        ledger: str,
        action: Action,
        items: Sequence[BatchItem],
        certificate: BatchCertificate | None,
    ) -> list[Answer]:
        """Submit ``items`` in as few invocations as the relayer takes (its
        ``max_batch_items`` a call; single steps when it takes none)."""
        gateway = self._ctx.relayers[ledger]
        if not isinstance(gateway, BatchSubmitter):
            return [NoBatches() for _ in items]
        try:
            limit = await self._limit(ledger, gateway)
        except Unavailable as exc:
            return [exc for _ in items]
        if limit == 0:
            return [NoBatches() for _ in items]  # a relayer before SubmitBatch
        out: list[Answer] = []
        for lo in range(0, len(items), limit):
            chunk = items[lo : lo + limit]
            out.extend(await self._submit_chunk(gateway, ledger, action, chunk, certificate))
            deposed = next((a for a in out if _not_leader(a)), None)
            if deposed is not None:
                # This coordinator may no longer lead (its store write was fenced): the
                # chunks not yet sent are not sent; their drivers stop with the same answer.
                out.extend(deposed for _ in items[lo + limit :])
                break
        return out

    async def _submit_chunk(
        self,
        gateway: BatchSubmitter,
        ledger: str,
        action: Action,
        items: Sequence[BatchItem],
        certificate: BatchCertificate | None,
    ) -> list[Answer]:
        """One batch: an item the ledger refuses by index gets that refusal and the rest go
        again without it; any other outcome reaches every item still in it. The
        transactions of the items it moved are recorded in one store write before they are
        answered (a failed write reaches each of them as that error, as a failed record of
        a single step reaches its driver; a skipped item keeps its answer)."""
        answers: list[Answer | None] = [None] * len(items)
        live = list(range(len(items)))
        while live:
            sent = [items[n] for n in live]
            try:
                outcome = await gateway.submit_batch(action, sent, certificate)
            except LedgerRejected as exc:
                index = refused_item(exc)
                if index is not None and 0 <= index < len(live):
                    answers[live.pop(index)] = exc
                    continue
                if exc.reason in RECERTIFY_REASONS and self._ctx.epochs is not None:
                    self._ctx.epochs.invalidate(ledger)  # the single steps re-read them
                self._doubt(ledger, action, exc, len(live))
                break
            except BatchAnswerMismatch as exc:
                # SECURITY (review s19 finding 2): a relayer answering about other transfers
                # is believed in nothing, and its items are not sent back into the same
                # batch for ever either: each goes its own single step.
                self._doubt(ledger, action, exc, len(live))
                break
            except Unavailable as exc:
                for n in live:
                    answers[n] = exc
                break
            except BridgeError as exc:
                if isinstance(exc, InvalidInput):
                    # Review s19 finding 3: the relayer now takes fewer items than it said
                    # (replaced or reconfigured): ask it again before the next batch.
                    self._limits.pop(ledger, None)
                self._doubt(ledger, action, exc, len(live))
                break
            read = _read(outcome, sent)
            if read is None:
                self._doubt(ledger, action, None, len(live))
                break
            settled: list[Answer] = list(read)
            try:
                await self._record_transactions(ledger, action, sent, read)
            except Exception as exc:
                # Each item the transaction moved gets the error (its driver reads its legs
                # again, as after a single step's failed record); a skipped one had nothing
                # to record and keeps its answer.
                settled = [exc if out.tx_id else out for out in read]
                self._ctx.log.warning(
                    "steps applied but not recorded",
                    **{LEDGER: ledger, STATE: action.name, TX: outcome.tx_id},
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                    transfer_ids=[
                        "0x" + item.terms.transfer_id.hex()
                        for item, out in zip(sent, read, strict=True)
                        if out.tx_id
                    ],
                )
            for n, answer in zip(live, settled, strict=True):
                answers[n] = answer
            break
        return [a if a is not None else RunSingle() for a in answers]

    async def _record_transactions(
        self,
        ledger: str,
        action: Action,
        items: Sequence[BatchItem],
        outcomes: Sequence[TxOutcome],
    ) -> None:
        """Record the batch's transaction for every item it moved, under the name of that
        item's step (its leg read from its own terms: outbound where ``ledger`` is its
        source); a skipped item has none: the records never name a transaction that did not
        move it. Logged once for the batch."""
        word = self._ctx.domains[ledger].ledger_word
        moved = [
            (item.terms.transfer_id, _step_name(action, item.terms.src_ledger == word), out.tx_id)
            for item, out in zip(items, outcomes, strict=True)
            if out.tx_id
        ]
        if not moved:
            return
        await self._ctx.store.add_transactions(moved)
        self._ctx.log.info(
            "steps applied",
            **{LEDGER: ledger, STATE: action.name, TX: moved[0][2], COUNT: len(moved)},
            items=len(items),
        )

    def _doubt(self, ledger: str, action: Action, exc: BaseException | None, items: int) -> None:
        self._ctx.log.warning(
            "batched step not settled; stepping its items one by one",
            **{LEDGER: ledger, STATE: action.name},
            error=(
                f"{type(exc).__name__}: {str(exc)[:500]}"
                if exc is not None
                else "the relayer answered about other transfers than it was sent"
            ),
            items=items,
        )
