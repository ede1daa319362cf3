"""The batch API (ADR 0023): many transfers in one call, each with its own result.

A batch is a list of ordinary submissions from one source ledger under a batch id (the
batch's idempotency key, scoped per source ledger like the items' keys). Each item goes
through exactly the path a single ``SubmitTransfer`` takes and gets its own outcome:
CREATED, EXISTING (its key matched a recorded transfer) or REFUSED with the structured
error that call would have failed with. A refused item records nothing and never affects
another item. The batch itself (its request fingerprint and every item's outcome) is
recorded before the response, so a retried batch returns the same per-item results and the
same batch id with other items is a Conflict.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from bridge.coordinator.db import Conn, Database, as_database
from bridge.domain.errors import BridgeError, Conflict, InvalidInput, NotLeader, PermissionDenied


class ItemOutcome(enum.IntEnum):
    """What happened to one item (the values are ``BatchItemOutcome``'s)."""

    CREATED = 1
    EXISTING = 2
    REFUSED = 3


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why an item was refused: the gRPC code name, the ErrorInfo reason, message and
    metadata ``SubmitTransfer`` would have answered with (ADR 0015)."""

    code: str
    reason: str
    message: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item's result. GUARANTEES: ``transfer_id`` is set exactly when the outcome is
    not REFUSED, ``error`` exactly when it is."""

    index: int
    idempotency_key: str
    outcome: ItemOutcome
    transfer_id: bytes | None = None
    error: ItemError | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A recorded batch: its id, scope, request fingerprint and every item's result."""

    source_ledger: str
    batch_id: str
    fingerprint: bytes
    results: tuple[ItemResult, ...]
    created_at: float


class SubmitItem(Protocol):
    """What the batch runner needs of an item (a ``SubmitTransferRequest`` has it)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def source_ledger(self) -> str: ...


SubmitOne = Callable[[Any], Awaitable[tuple[bytes, bool]]]
"""Submits one item exactly as SubmitTransfer would: (transfer id, created), or raises."""
ErrorOf = Callable[[BridgeError], ItemError]
"""The structured error an exception reports at the API."""


def fingerprint(serialized_request: bytes) -> bytes:
    """SHA-256 of the batch request's deterministic serialisation: equal exactly when the
    batch id, source ledger and every item (with its instruction) are equal."""
    return hashlib.sha256(b"KSTB/batch/v1\x00" + serialized_request).digest()


async def run_items(
    source_ledger: str,
    items: Sequence[Any],
    submit_one: SubmitOne,
    error_of: ErrorOf,
) -> tuple[ItemResult, ...]:
    """Submit every item in order and return one result per item.

    GUARANTEES: a refusal (any BridgeError) is confined to its item; an item whose key
    occurs more than once in the batch is refused (INVALID_ARGUMENT) without being
    submitted, every occurrence of it (which one the client meant is not ours to guess);
    an item naming another source ledger than the batch's is refused PERMISSION_DENIED
    without being submitted. NotLeader is not an item's refusal: it propagates and the
    whole batch is answered NOT_LEADER (nothing of the batch is recorded; items already
    submitted are found again by their keys when the client retries on the leader).
    """
    counts = Counter(str(item.idempotency_key) for item in items)
    results: list[ItemResult] = []
    for index, item in enumerate(items):
        key = str(item.idempotency_key)
        try:
            if counts[key] > 1:
                raise InvalidInput(
                    f"idempotency_key {key!r} occurs {counts[key]} times in this batch"
                )
            # SECURITY: the batch's source ledger is the caller's own (rules.py checks it);
            # an item may not move units held on another ledger.
            if item.source_ledger != source_ledger:
                raise PermissionDenied(
                    f"item source_ledger {item.source_ledger!r} is not the batch's"
                    f" source_ledger {source_ledger!r}"
                )
            tid, created = await submit_one(item)
        except NotLeader:
            raise
        except BridgeError as exc:
            results.append(ItemResult(index, key, ItemOutcome.REFUSED, error=error_of(exc)))
            continue
        outcome = ItemOutcome.CREATED if created else ItemOutcome.EXISTING
        results.append(ItemResult(index, key, outcome, transfer_id=tid))
    return tuple(results)


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
            )
        )
    return tuple(out)


class BatchStore(Protocol):
    """Where batches are recorded (the coordinator's database)."""

    async def create(self, batch: BatchRecord) -> tuple[BatchRecord, bool]:
        """Record ``batch`` unless one with its (source ledger, batch id) exists; return
        the recorded one and whether it was this. Durable when it returns."""
        ...

    async def get(self, source_ledger: str, batch_id: str) -> BatchRecord | None:
        """The recorded batch, or None."""
        ...


class SqlBatchStore:
    """BatchStore on the coordinator's database (SQLite or PostgreSQL; schema version 5)."""

    def __init__(self, db: Database) -> None:
        self._db = as_database(db)

    def close(self) -> None:
        """Release the database (closed with its last store)."""
        self._db.close()

    async def create(self, batch: BatchRecord) -> tuple[BatchRecord, bool]:
        """See BatchStore.create (one transaction: insert-or-keep, then read back)."""

        def run(db: Conn) -> tuple[BatchRecord | None, bool]:
            cur = db.execute(
                "INSERT INTO transfer_batches (source_ledger, batch_id, fingerprint, results,"
                " created_at) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (
                    batch.source_ledger,
                    batch.batch_id,
                    batch.fingerprint,
                    _results_json(batch.results),
                    batch.created_at,
                ),
            )
            return _get(db, batch.source_ledger, batch.batch_id), cur.rowcount == 1

        stored, created = await self._db.write(run)
        if stored is None:  # inserted or already there, read in the same transaction
            raise RuntimeError(f"batch {batch.batch_id!r} vanished while it was recorded")
        return stored, created

    async def get(self, source_ledger: str, batch_id: str) -> BatchRecord | None:
        """See BatchStore.get."""
        return await self._db.read(lambda db: _get(db, source_ledger, batch_id))


def _get(db: Conn, source_ledger: str, batch_id: str) -> BatchRecord | None:
    row = db.execute(
        "SELECT fingerprint, results, created_at FROM transfer_batches"
        " WHERE source_ledger = ? AND batch_id = ?",
        (source_ledger, batch_id),
    ).fetchone()
    if row is None:
        return None
    fp, results, created_at = row
    return BatchRecord(
        source_ledger, batch_id, bytes(fp), _results_from_json(str(results)), float(created_at)
    )
