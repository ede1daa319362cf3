"""The batch API (ADR 0023): many transfers in one call, each with its own result.

A batch is a list of ordinary submissions from one source ledger under a batch id (the
batch's idempotency key, scoped per source ledger like the items' keys). Each item goes
through exactly the path a single ``SubmitTransfer`` takes and gets its own outcome:
CREATED, EXISTING (its key matched a recorded transfer) or REFUSED with the structured
error that call would have failed with. A refused item records nothing and never affects
another item. The batch itself (its request fingerprint and every item's outcome) is
recorded before the response, so a retried batch returns the same per-item results and the
same batch id with other items is a Conflict.

Hardening (issue 14, batchfix): a batch id is reserved (a ``pending`` row owned by the call
running it) before any item is submitted, so of two concurrent copies exactly one runs the
items and a batch id taken with other items submits nothing; an item refused for a transient
reason (``retryable``) is RETRYABLE, not a final result, and a replay of the batch
re-evaluates those items only.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from bridge.coordinator.batch_retention import DAY_S
from bridge.coordinator.db import Conn, Database, as_database
from bridge.coordinator.records import TransferUpdate
from bridge.coordinator.store import UnreadableRecord
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    Conflict,
    InvalidInput,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from bridge.domain.transfer import TransferState
from bridge.logfields import TRANSFER, get_logger


class ItemOutcome(enum.IntEnum):
    """What happened to one item (the values are ``BatchItemOutcome``'s)."""

    CREATED = 1
    EXISTING = 2
    REFUSED = 3
    RETRYABLE = 4
    """---- batchfix: nothing recorded, for a transient reason (the error's ``retryable``
    metadata is true: a ledger or the store could not answer, a halt, a full flow limit);
    a replay of the batch re-evaluates this item. REFUSED is final."""


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why an item was refused: the gRPC code name, the ErrorInfo reason, message and
    metadata ``SubmitTransfer`` would have answered with (ADR 0015)."""

    code: str
    reason: str
    message: str
    metadata: Mapping[str, str]


def is_retryable(error: ItemError) -> bool:
    """True when the error says the same request may succeed later unchanged (the
    ``retryable`` metadata of ADR 0015, from ``bridge.rpc.errors.RETRYABLE_REASONS``)."""
    return error.metadata.get("retryable") == "true"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item's result. GUARANTEES: ``transfer_id`` is set exactly when the outcome is
    CREATED or EXISTING, ``error`` exactly when it is REFUSED or RETRYABLE."""

    index: int
    idempotency_key: str
    outcome: ItemOutcome
    transfer_id: bytes | None = None
    error: ItemError | None = None
    on_input: bool = False
    """Refused on the caller's own input, by this coordinator alone: the batch's own
    rules, or an error marked :attr:`~bridge.domain.errors.BridgeError.on_input` (a
    malformed field, an instruction that does not authenticate, a deadline, a key or
    transfer id already used). What a caller's TLS certificate alone, with one signed
    instruction seen, can make the coordinator store; counted by :class:`BatchQuota`.
    Never set for a refusal that depends on a ledger, a peer or an outage."""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A recorded batch: its id, scope, request fingerprint and every item's result.

    ``pending``: a call is running (some of) its items now, or one that did died or lost
    its lease before finishing (its ``owner``); the results are then the last finished
    ones (none for a batch never finished)."""

    source_ledger: str
    batch_id: str
    fingerprint: bytes
    results: tuple[ItemResult, ...]
    created_at: float
    pending: bool = False
    owner: str = ""

    @property
    def to_retry(self) -> tuple[int, ...]:
        """The indexes of the items a replay re-evaluates (outcome RETRYABLE)."""
        return tuple(r.index for r in self.results if r.outcome is ItemOutcome.RETRYABLE)


class SubmitItem(Protocol):
    """What the batch runner needs of an item (a ``SubmitTransferRequest`` has it)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def source_ledger(self) -> str: ...


SubmitOne = Callable[[Any], Awaitable[Any]]
"""Checks one item exactly as SubmitTransfer would, or raises. Without a ``record_many``
it also records it and returns (transfer id, created); with one it returns what
``record_many`` takes (it may run concurrently with other items' checks)."""
RecordMany = Callable[[Sequence[Any]], Awaitable[Sequence[tuple[bytes, bool] | BridgeError]]]
"""Records what ``submit_one`` accepted for consecutive items, in item order, at once (one
store transaction): per item (transfer id, created) or its refusal; raises when nothing
could be recorded (the error then reaches each of those items)."""
ErrorOf = Callable[[BridgeError], ItemError]
"""The structured error an exception reports at the API."""


YIELD_EVERY = 64
"""Items refused by the batch's own rules (:func:`_batch_refusal`, no await) between two
yields of the event loop in :func:`run_items`."""


def fingerprint(serialized_request: bytes) -> bytes:
    """SHA-256 of the batch request's deterministic serialisation: equal exactly when the
    batch id, source ledger and every item (with its instruction) are equal."""
    return hashlib.sha256(b"KSTB/batch/v1\x00" + serialized_request).digest()


def _batch_refusal(item: Any, counts: Mapping[str, int], source_ledger: str) -> BridgeError | None:
    """Why ``item`` is refused by the batch's own rules before it is checked, or None."""
    key = str(item.idempotency_key)
    if counts[key] > 1:
        return InvalidInput(f"idempotency_key {key!r} occurs {counts[key]} times in this batch")
    # SECURITY: the batch's source ledger is the caller's own (rules.py checks it); an item
    # may not move units held on another ledger.
    if item.source_ledger != source_ledger:
        return PermissionDenied(
            f"item source_ledger {str(item.source_ledger)[:64]!r} is not the batch's"
            f" source_ledger {source_ledger!r}"
        )
    return None


async def run_items(
    source_ledger: str,
    items: Sequence[Any],
    submit_one: SubmitOne,
    error_of: ErrorOf,
    indexes: Collection[int] | None = None,
    *,
    record_many: RecordMany | None = None,
    parallel: int = 1,
) -> tuple[ItemResult, ...]:
    """Submit every item (or only those at ``indexes``) in order; one result per item run.

    GUARANTEES: a refusal (any BridgeError) is confined to its item; an item whose key
    occurs more than once in the batch is refused (INVALID_ARGUMENT) without being
    submitted, every occurrence of it (which one the client meant is not ours to guess);
    an item naming another source ledger than the batch's is refused PERMISSION_DENIED
    without being submitted; those two, and refusals marked ``on_input`` (from
    ``submit_one`` or ``record_many``), are marked ``on_input`` in their result. An error
    whose ``retryable`` metadata is true is RETRYABLE, not REFUSED: nothing was decided
    about the item. NOT_LEADER (NotLeader, or the store's
    Fenced: this coordinator lost its lease) is not an item's refusal, from a check or
    from ``record_many``: it propagates and the whole batch is answered NOT_LEADER (items
    already submitted are found again by their keys when the client retries on the leader).

    Concurrency (issue 14): with ``record_many``, up to ``parallel`` items are checked at
    once (``submit_one``: the instruction, the ledgers' reads, the feed's holds: I/O that
    dominates an item's admission), while items are recorded (``record_many``) strictly in
    item order, each only after every earlier item was recorded or refused: the next item
    once its check ends, together with every item after it whose check has already ended
    (up to the first refused or unfinished one), in one call. So the store's sequence,
    which orders a lane's flow-limit queue, follows the batch's order exactly as
    sequential submission did, and no item is checked more than ``parallel`` positions
    ahead of the last one recorded. On NOT_LEADER (or cancellation) the checks still
    running are cancelled and nothing after the failing item is recorded. With
    ``parallel`` 1 this is sequential submission, one item per call.
    """
    counts = Counter(str(item.idempotency_key) for item in items)
    chosen = [
        (index, item) for index, item in enumerate(items) if indexes is None or index in indexes
    ]
    window: list[tuple[int, Any, asyncio.Future[Any] | BridgeError]] = []
    upcoming = iter(chosen)

    def fill() -> None:
        while len(window) < max(1, parallel):
            nxt = next(upcoming, None)
            if nxt is None:
                return
            index, item = nxt
            refusal = _batch_refusal(item, counts, source_ledger)
            window.append(
                (
                    index,
                    item,
                    refusal if refusal is not None else asyncio.ensure_future(submit_one(item)),
                )
            )

    results: list[ItemResult] = []
    refused_unchecked = 0

    def settle(
        index: int,
        item: Any,
        outcome: tuple[bytes, bool] | BridgeError,
        own_rules: bool = False,
    ) -> None:
        key = str(item.idempotency_key)
        if isinstance(outcome, BridgeError):
            error = error_of(outcome)
            kind = ItemOutcome.RETRYABLE if is_retryable(error) else ItemOutcome.REFUSED
            # A RETRYABLE item is never counted: nothing was decided about it.
            marked = kind is ItemOutcome.REFUSED and (own_rules or outcome.on_input)
            results.append(ItemResult(index, key, kind, error=error, on_input=marked))
        else:
            tid, created = outcome
            kind = ItemOutcome.CREATED if created else ItemOutcome.EXISTING
            results.append(ItemResult(index, key, kind, transfer_id=tid))

    def checked(entry: tuple[int, Any, asyncio.Future[Any] | BridgeError]) -> bool:
        """The entry's check has ended and accepted its item."""
        f = entry[2]
        return (
            isinstance(f, asyncio.Future)
            and f.done()
            and not f.cancelled()
            and f.exception() is None
        )

    try:
        fill()
        while window:
            index, item, checking = window.pop(0)
            try:
                if isinstance(checking, BridgeError):
                    refused_unchecked += 1
                    if refused_unchecked % YIELD_EVERY == 0:
                        # Review helper-106 L1: items refused by the batch's own rules never
                        # await; thousands of them would hold the event loop.
                        await asyncio.sleep(0)
                    settle(index, item, checking, own_rules=True)
                    fill()
                    continue
                accepted = await checking
            except BridgeError as exc:
                if _not_leader(exc):
                    raise
                settle(index, item, exc)
                fill()  # the next check starts once this item is settled
                continue
            if record_many is None:
                settle(index, item, accepted)
                fill()
                continue
            # The items right behind it whose checks have already accepted them are
            # recorded with it, in item order, in one call.
            group = [(index, item, accepted)]
            while window and checked(window[0]):
                nxt_index, nxt_item, done = window.pop(0)
                assert isinstance(done, asyncio.Future)
                group.append((nxt_index, nxt_item, done.result()))
            outcomes: Sequence[tuple[bytes, bool] | BridgeError]
            try:
                outcomes = await record_many([a for _, _, a in group])
            except BridgeError as exc:
                if _not_leader(exc):
                    raise
                outcomes = [exc] * len(group)
            for (i, it, _), outcome in zip(group, outcomes, strict=True):  # one per item
                settle(i, it, outcome)
            fill()  # the next checks start once these items are settled
    finally:
        running = [f for _, _, f in window if isinstance(f, asyncio.Future)]
        for f in running:
            f.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return tuple(results)


def _not_leader(exc: BridgeError) -> bool:
    """Whether ``exc`` says this coordinator may not serve (NOT_LEADER: a standby's
    NotLeader, or a leader fenced out of its lease by the store, ``lease.Fenced``): the
    whole batch is answered so, never one item (the client goes to another coordinator)."""
    return exc.kind is BridgeReason.NOT_LEADER


def merge_results(
    previous: Sequence[ItemResult], fresh: Sequence[ItemResult]
) -> tuple[ItemResult, ...]:
    """``previous`` with the items re-evaluated in ``fresh`` replaced (by index)."""
    by_index = {r.index: r for r in fresh}
    return tuple(by_index.get(r.index, r) for r in previous)


def same_batch(stored: BatchRecord, fp: bytes) -> BatchRecord:
    """``stored`` if it was recorded from the same request, else Conflict (ALREADY_EXISTS)."""
    if stored.fingerprint != fp:
        raise Conflict(f"batch_id {stored.batch_id!r} was already used with other items or terms")
    return stored


# ---- persistence


def _results_json(results: Sequence[ItemResult]) -> str:
    out = []
    for r in results:
        entry: dict[str, Any] = {"i": r.index, "k": r.idempotency_key, "o": int(r.outcome)}
        if r.on_input:
            entry["u"] = 1
        if r.transfer_id is not None:
            entry["t"] = r.transfer_id.hex()
        if r.error is not None:
            e = r.error
            entry["e"] = [e.code, e.reason, e.message, dict(e.metadata)]
        out.append(entry)
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def _results_from_json(text: str) -> tuple[ItemResult, ...]:
    out = []
    for entry in json.loads(text):
        error = None
        if "e" in entry:
            code, reason, message, meta = entry["e"]
            error = ItemError(code, reason, message, MappingProxyType(dict(meta)))
        out.append(
            ItemResult(
                index=int(entry["i"]),
                idempotency_key=str(entry["k"]),
                outcome=ItemOutcome(int(entry["o"])),
                transfer_id=bytes.fromhex(entry["t"]) if "t" in entry else None,
                error=error,
                on_input=bool(entry.get("u", 0)),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`BatchStore.claim` found. ``claimed``: this call now owns the batch (its
    row is pending under the caller's owner token) and must run its items (all of them when
    ``record`` is None or has no results, else ``record.to_retry``) and then ``finish``.
    Not claimed: ``record`` is the stored batch, as it is (finished with nothing to retry,
    or pending under an owner that just took it), or, for another request's fingerprint,
    the stored batch without its results (the caller answers Conflict from the
    fingerprint alone)."""

    record: BatchRecord | None
    claimed: bool


class BatchStore(Protocol):
    """Where batches are recorded (the coordinator's database)."""

    async def claim(
        self,
        source_ledger: str,
        batch_id: str,
        fp: bytes,
        owner: str,
        now: float,
        *,
        items: int,
    ) -> Claim:
        """Reserve the batch id for ``owner`` before any item is submitted (one
        transaction): a new id (of ``items`` items) is inserted pending, or refused
        ResourceExhausted by the store's quota; a stored batch with the same
        fingerprint is taken over when it is pending (its owner died or lost its lease:
        this process runs one call per batch, see BatchRunner) or has RETRYABLE items; a
        stored batch with another fingerprint is returned untouched. Durable when it
        returns."""
        ...

    async def finish(self, batch: BatchRecord, owner: str) -> tuple[BatchRecord, bool]:
        """Record ``batch``'s results and end the reservation, only while ``owner`` still
        holds it; return the stored batch and whether this call wrote it."""
        ...

    async def get(self, source_ledger: str, batch_id: str) -> BatchRecord | None:
        """The recorded batch, or None."""
        ...

    async def prune(
        self, created_before: float, limit: int = 1000, live: Collection[str] | None = None
    ) -> int:
        """Delete at most ``limit`` batch records created before ``created_before``: the
        finished ones, and with ``live`` the reservations whose owner is not in it (see
        ``SqlBatchStore.prune``); return how many."""
        ...

    async def updates(
        self, cursors: Sequence[tuple[bytes, int]], limit: int
    ) -> list[TransferUpdate | UnreadableUpdate]:
        """History rows of the given transfers after each one's sequence, ordered by
        (transfer id, sequence), at most ``limit`` rows (one page of a WatchBatch). A row
        this release cannot parse (a state it does not know: damaged, or written by a newer
        release) is an :class:`UnreadableUpdate` in its place, so it fails that transfer's
        reports only, never the page."""
        ...


_COLUMNS = "fingerprint, results, created_at, pending, owner"


@dataclass(frozen=True, slots=True)
class BatchQuota:
    """How much one source ledger's batches may record in a rolling day (schema version 8).

    SECURITY (the threat model's "batch rows" limitation): a batch row keeps every item's
    result for ``batch_retention_days``, and items refused on their own input (the list is
    ADR 0023's last amendment: another ledger, a key repeated in the batch, a malformed
    field, an instruction that does not authenticate, a deadline passed or too far, a key
    already used, a signed instruction replayed under a new key) are stored too, so a
    brokerage's TLS certificate alone could grow the coordinator's database without bound.
    A new batch id is refused RESOURCE_EXHAUSTED, nothing reserved, when the ledger's
    batches recorded in the last ``window`` seconds hold ``refused_per_day`` such items
    (``ItemResult.on_input``) or more, or when their items and the new batch's would exceed
    ``items_per_day``. Refusals that depend on a ledger, a peer or an outage (RETRYABLE
    items, a frozen holder, a relayer's answer) are not counted: no other organisation can
    spend a brokerage's quota. Replays of a recorded batch id are never refused by it.
    Running batches count their items but none of their refusals until they finish, so
    the count can end at most ``max_running_batches`` x ``max_batch_items`` above its
    bound."""

    items_per_day: int
    refused_per_day: int
    window: float = float(DAY_S)

    def __post_init__(self) -> None:
        if self.items_per_day <= 0 or self.refused_per_day <= 0 or self.window <= 0:
            raise ValueError("a batch quota's bounds and window must be positive")


class SqlBatchStore:
    """BatchStore on the coordinator's database (SQLite or PostgreSQL; schema version 8).
    With a ``quota``, new batch ids are held to it (:class:`BatchQuota`)."""

    def __init__(self, db: Database, quota: BatchQuota | None = None) -> None:
        self._db = as_database(db)
        self._quota = quota

    @property
    def quota(self) -> BatchQuota | None:
        """The quota new batch ids are held to (None: none)."""
        return self._quota

    def close(self) -> None:
        """Release the database (closed with its last store)."""
        self._db.close()

    async def claim(
        self,
        source_ledger: str,
        batch_id: str,
        fp: bytes,
        owner: str,
        now: float,
        *,
        items: int,
    ) -> Claim:
        """See BatchStore.claim. A new batch id of ``items`` items is held to the quota
        (ResourceExhausted, nothing reserved).

        SECURITY (review helper-106 M1): a request under another request's batch id is
        answered from the stored fingerprint alone, in a read: neither the stored results
        (up to thousands of items) are parsed nor a write transaction taken for it, so a
        brokerage replaying small conflicting requests under its large batches' ids does
        not hold the coordinator's one database thread. A new id past the quota is refused
        from a read too, and checked again in the write that reserves it."""

        def look(db: Conn) -> BatchRecord | None:
            head = _head(db, source_ledger, batch_id)
            if head is None:
                self._check_quota(db, source_ledger, items, now)
            return head

        head = await self._db.read(look)
        if head is not None and head.fingerprint != fp:
            return Claim(head, False)

        def run(db: Conn) -> Claim:
            stored = _get(db, source_ledger, batch_id, lock=True)
            if stored is None:
                self._check_quota(db, source_ledger, items, now)
                cur = db.execute(
                    "INSERT INTO transfer_batches (source_ledger, batch_id, fingerprint,"
                    " results, created_at, pending, owner, items) VALUES (?,?,?,'[]',?,1,?,?)"
                    " ON CONFLICT DO NOTHING",
                    (source_ledger, batch_id, fp, now, owner, items),
                )
                if cur.rowcount == 1:
                    return Claim(None, True)
                # PostgreSQL: another transaction inserted it meanwhile (committed now).
                return Claim(_get(db, source_ledger, batch_id), False)
            if stored.fingerprint != fp or not (stored.pending or stored.to_retry):
                return Claim(stored, False)
            # SECURITY: compare-and-set on the owner we read: of two takers, one wins.
            cur = db.execute(
                "UPDATE transfer_batches SET pending = 1, owner = ? WHERE source_ledger = ?"
                " AND batch_id = ? AND owner = ? AND pending = ?",
                (owner, source_ledger, batch_id, stored.owner, int(stored.pending)),
            )
            if cur.rowcount == 1:
                return Claim(stored, True)
            return Claim(_get(db, source_ledger, batch_id), False)

        return await self._db.write(run)

    async def finish(self, batch: BatchRecord, owner: str) -> tuple[BatchRecord, bool]:
        """See BatchStore.finish."""

        refused = sum(1 for r in batch.results if r.on_input)

        def run(db: Conn) -> tuple[BatchRecord | None, bool]:
            cur = db.execute(
                "UPDATE transfer_batches SET results = ?, refused = ?, pending = 0,"
                " owner = '' WHERE source_ledger = ? AND batch_id = ? AND owner = ?"
                " AND pending = 1",
                (_results_json(batch.results), refused, batch.source_ledger,
                 batch.batch_id, owner),
            )  # fmt: skip
            return _get(db, batch.source_ledger, batch.batch_id), cur.rowcount == 1

        stored, written = await self._db.write(run)
        if stored is None:  # reserved before the items ran, read in the same transaction
            raise RuntimeError(f"batch {batch.batch_id!r} vanished while it was recorded")
        return stored, written

    def _check_quota(self, db: Conn, source_ledger: str, items: int, now: float) -> None:
        """Raise ResourceExhausted when a new batch of ``items`` items from
        ``source_ledger`` would break the quota (:class:`BatchQuota`); one read of the
        covering index ``transfer_batches_recent``."""
        quota = self._quota
        if quota is None:
            return
        recorded, refused = db.execute(
            "SELECT COALESCE(SUM(items), 0), COALESCE(SUM(refused), 0)"
            " FROM transfer_batches WHERE source_ledger = ? AND created_at > ?",
            (source_ledger, now - quota.window),
        ).fetchone()
        hours = f"{quota.window / 3600:g} h"
        if int(refused) >= quota.refused_per_day:
            raise ResourceExhausted(
                f"batches from {source_ledger} recorded {int(refused)} items refused on their"
                f" own input in the last {hours}, the most allowed"
                f" (max_refused_batch_items_per_day {quota.refused_per_day}); new batch ids"
                " are refused until older ones leave the window"
            )
        if int(recorded) + items > quota.items_per_day:
            raise ResourceExhausted(
                f"batches from {source_ledger} recorded {int(recorded)} items in the last"
                f" {hours}; {items} more would pass max_batch_items_per_day"
                f" ({quota.items_per_day})"
            )

    async def prune(
        self, created_before: float, limit: int = 1000, live: Collection[str] | None = None
    ) -> int:
        """Delete at most ``limit`` finished batch records created before
        ``created_before``; return how many. Without ``live`` a reserved (pending) batch
        is never deleted. With ``live``, the owners of the attempts this process runs now
        (:meth:`BatchRunner.prune` reads them just before this call, and this call queues
        its statement before it suspends), a reservation created before the cut-off whose
        owner is not among them is deleted too: its attempt ended without finishing (the
        process died or lost its lease) and no replay took it over since. A replay that
        takes it over now either was queued before this statement, under an owner in
        ``live`` (kept), or is queued after it and reserves the id afresh.

        What remains true: every transfer and its history stay (this deletes only the
        batch's request fingerprint and per-item results), so a later SubmitTransfers with
        a pruned batch id runs as a new batch in which each item's idempotency key still
        answers its existing transfer; an item refused back then is evaluated again (its
        instruction's deadline has long passed, so it is refused again)."""

        owners = sorted(live) if live is not None else []
        if live is None:
            ended = "pending = 0"
        elif owners:  # SECURITY: a reservation whose attempt runs here is never deleted
            ended = f"(pending = 0 OR owner NOT IN ({','.join('?' for _ in owners)}))"
        else:
            ended = "1 = 1"

        def run(db: Conn) -> int:
            cur = db.execute(
                "DELETE FROM transfer_batches WHERE (source_ledger, batch_id) IN"  # noqa: S608
                " (SELECT source_ledger, batch_id FROM transfer_batches"
                f" WHERE created_at < ? AND {ended} LIMIT ?)",
                (created_before, *owners, limit),
            )
            return int(cur.rowcount)

        return await self._db.write(run)

    async def get(self, source_ledger: str, batch_id: str) -> BatchRecord | None:
        """See BatchStore.get."""
        return await self._db.read(lambda db: _get(db, source_ledger, batch_id))

    async def updates(
        self, cursors: Sequence[tuple[bytes, int]], limit: int
    ) -> list[TransferUpdate | UnreadableUpdate]:
        """See BatchStore.updates (one statement; ``cursors`` is one page, a few hundred)."""
        if not cursors:
            return []
        # Only a constant placeholder clause per transfer is formatted in, never a value.
        where = " OR ".join("(transfer_id = ? AND sequence > ?)" for _ in cursors)
        sql = f"SELECT transfer_id, sequence, state, detail, at FROM transfer_updates WHERE {where}"  # noqa: S608
        args: list[object] = [v for pair in cursors for v in pair]

        def run(db: Conn) -> list[TransferUpdate | UnreadableUpdate]:
            rows = db.execute(
                sql + " ORDER BY transfer_id, sequence LIMIT ?", (*args, limit)
            ).fetchall()
            return [_update(tuple(row)) for row in rows]

        return await self._db.read(run)


@dataclass(frozen=True, slots=True)
class UnreadableUpdate:
    """A ``transfer_updates`` row this release cannot parse, in its place in a page."""

    transfer_id: bytes
    sequence: int
    error: UnreadableRecord


def _update(row: tuple[Any, ...]) -> TransferUpdate | UnreadableUpdate:
    """One ``transfer_updates`` row, or an UnreadableUpdate (review helper-116 L5: a state
    this release does not know failed the whole WatchBatch), logged."""
    t, s, st, d, at = row
    try:
        return TransferUpdate(bytes(t), int(s), TransferState(int(st)), str(d), float(at))
    except (TypeError, ValueError) as exc:
        unreadable = UnreadableUpdate(bytes(t), int(s), UnreadableRecord(bytes(t), exc))
        get_logger().error(
            "transfer history row unreadable",
            **{TRANSFER: "0x" + bytes(t).hex()},
            sequence=s,
            error=str(unreadable.error),
        )
        return unreadable


def _head(db: Conn, source_ledger: str, batch_id: str) -> BatchRecord | None:
    """The recorded batch without its results (none read, none parsed), or None."""
    row = db.execute(
        "SELECT fingerprint, created_at, pending, owner FROM transfer_batches"
        " WHERE source_ledger = ? AND batch_id = ?",
        (source_ledger, batch_id),
    ).fetchone()
    if row is None:
        return None
    fp, created_at, pending, owner = row
    return BatchRecord(
        source_ledger, batch_id, bytes(fp), (), float(created_at), bool(pending), str(owner)
    )


def _get(db: Conn, source_ledger: str, batch_id: str, lock: bool = False) -> BatchRecord | None:
    # Only constant column names and the dialect's FOR UPDATE are formatted in.
    sql = f"SELECT {_COLUMNS} FROM transfer_batches WHERE source_ledger = ? AND batch_id = ?"  # noqa: S608
    row = db.execute(
        sql + (db.for_update if lock else ""),
        (source_ledger, batch_id),
    ).fetchone()
    if row is None:
        return None
    fp, results, created_at, pending, owner = row
    return BatchRecord(
        source_ledger,
        batch_id,
        bytes(fp),
        _results_from_json(str(results)),
        float(created_at),
        pending=bool(pending),
        owner=str(owner),
    )


# ---- one call per batch at a time (batchfix)

RunItems = Callable[[Collection[int] | None], Awaitable[tuple[ItemResult, ...]]]
"""Runs the batch's items (None: all; else those indexes) and returns their results."""

CLAIM_ATTEMPTS = 5
"""How often a call re-reads a batch another coordinator call holds before answering
UNAVAILABLE (retryable)."""


class BatchRunner:
    """Runs SubmitTransfers batches so that each batch id is run by one call at a time.

    GUARANTEES: in this process at most one task runs a given request under a given
    (source ledger, batch id); concurrent calls with that request wait for that task and
    answer from the stored batch (its results), calls with another request run their own
    attempt, which answers ALREADY_EXISTS from the stored fingerprint, so the items run once. Across
    processes the database reservation (``BatchStore.claim``, compare-and-set on the
    owner) decides; only the lease holder serves the API and writes are fenced (ADR 0017).
    The task is not cancelled with the call that started it (a client giving up does not
    leave a half-run batch behind); if it fails (NOT_LEADER, database) the reservation
    stays pending and the next call takes it over. Items that were RETRYABLE are run again
    by a replay, the others never. At most ``max_running`` batches of one source ledger run
    at once (a call that would start one more is RESOURCE_EXHAUSTED before anything is
    reserved): since a batch outlives its call, a client cancelling its calls cannot pile
    up work the coordinator keeps doing.
    """

    def __init__(self, store: BatchStore, retry_after: float = 0.2, max_running: int = 8) -> None:
        self._store = store
        self._retry_after = retry_after
        self._max_running = max_running
        # Per (source ledger, batch id, request fingerprint): a request under a batch id
        # never shares the task of another request under it (review helper-108 M1: a
        # replay awaiting a conflicting request's task got its answer, the stored batch
        # without results).
        self._running: dict[tuple[str, str, bytes], asyncio.Task[tuple[BatchRecord, bool]]] = {}
        # The owner token of every attempt running now, from before its claim is queued
        # until it ends (finished or not): the reservations ``prune`` keeps.
        self._owners: set[str] = set()

    @property
    def store(self) -> BatchStore:
        """The batch store."""
        return self._store

    async def submit(
        self,
        source_ledger: str,
        batch_id: str,
        fp: bytes,
        run: RunItems,
        now: float,
        *,
        items: int,
    ) -> tuple[BatchRecord, bool]:
        """The batch's recorded results after running whatever of it is to run; True when
        this call's own task recorded it first. Conflict for another request's batch id;
        ResourceExhausted for a new batch id (of ``items`` items) past the store's quota."""
        key = (source_ledger, batch_id, fp)
        for _ in range(CLAIM_ATTEMPTS):
            task = self._running.get(key)
            mine = task is None
            if task is None:
                # SECURITY: bound the work one source ledger (one brokerage) has running.
                # Batch ids, not requests: another request under a running id answers from
                # the stored fingerprint and takes no slot of its own.
                running = len(
                    {i for ledger, i, _ in self._running if ledger == source_ledger} - {batch_id}
                )
                if running >= self._max_running:
                    raise ResourceExhausted(
                        f"{running} batches from {source_ledger} are running"
                        " (max_running_batches); retry when one has answered"
                    )
                task = asyncio.create_task(self._attempt(key, fp, run, now, items))
                self._running[key] = task
                task.add_done_callback(lambda t: self._forget(key, t))
            record, created = await asyncio.shield(task)
            same_batch(record, fp)  # SECURITY: another request's id: Conflict, nothing run
            if not record.pending:
                return record, created and mine
            await asyncio.sleep(self._retry_after)
        raise Unavailable(f"batch {batch_id!r} is being submitted by another call; retry")

    def _forget(self, key: tuple[str, str, bytes], task: asyncio.Task[Any]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: its callers got it

    async def _attempt(
        self, key: tuple[str, str, bytes], fp: bytes, run: RunItems, now: float, items: int
    ) -> tuple[BatchRecord, bool]:
        source_ledger, batch_id, _ = key
        owner = uuid.uuid4().hex
        self._owners.add(owner)  # before the claim is queued: ``prune`` keeps its row
        try:
            claim = await self._store.claim(source_ledger, batch_id, fp, owner, now, items=items)
            if not claim.claimed:
                if claim.record is None:
                    raise RuntimeError(f"batch {batch_id!r} vanished while it was claimed")
                return claim.record, False
            previous = claim.record
            first = previous is None or not previous.results
            if previous is None or first:
                results = await run(None)
            else:
                results = merge_results(previous.results, await run(set(previous.to_retry)))
            batch = BatchRecord(source_ledger, batch_id, fp, results, now)
            recorded, written = await self._store.finish(batch, owner)
            return recorded, written and first
        finally:
            self._owners.discard(owner)

    async def prune(self, created_before: float, limit: int = 1000) -> int:
        """Delete at most ``limit`` batch records created before ``created_before``: the
        finished ones, and the reservations no attempt of this process runs (an attempt
        that died with its process or lost its lease, never replayed since); return how
        many. The pruning loop's store (``prune_batches``) on the active coordinator.

        SECURITY: the owners are read and the store's statement queued in one step (no
        suspension between), so a replay running here is never deleted mid-run; the
        store's writes are fenced (ADR 0017), so only the lease holder deletes."""
        return await self._store.prune(created_before, limit, live=frozenset(self._owners))
