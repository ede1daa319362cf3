"""The coordinator's durable log behind an interface (SQLite or PostgreSQL; ADR 0013)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from bridge.coordinator.db import (
    MAX_ROWS_PER_STATEMENT,
    Conn,
    Database,
    as_database,
    values_rows,
)
from bridge.coordinator.lane_backlogs import LaneBacklogs, lane_of
from bridge.coordinator.records import (
    Decision,
    Misbehaviour,
    StateChange,
    StateWrite,
    TransferOrigin,
    TransferRecord,
    TransferRequest,
    TransferUpdate,
)
from bridge.core.batch import BatchCertificate
from bridge.domain.batch_certified import BatchCertified, LedgerCertificate
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    Conflict,
    InvalidInput,
    refused_on_input,
)
from bridge.domain.flow import WaitReason
from bridge.domain.legs import LedgerEvent, SignatureSet
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState
from bridge.logfields import ERROR, TRANSFER, get_logger


class TransferStore(Protocol):
    """Durable, transactional storage of transfers, their history and decisions.

    Every method is atomic; a method that returns has made its effect durable.
    """

    async def create(self, record: TransferRecord) -> tuple[TransferRecord, bool]:
        """Insert ``record`` unless its idempotency key exists for its source ledger; return
        the stored one and whether it was created.

        Raises Conflict when the transfer id is already recorded under another key."""
        ...

    async def create_many(
        self, records: Sequence[TransferRecord]
    ) -> list[tuple[TransferRecord, bool] | Conflict]:
        """``create`` for many records in one transaction, inserted in order (so their store
        sequence follows it): per record, in order, the stored one and whether it was
        created, or the Conflict ``create`` would raise (confined to its record). A failed
        write records none of them."""
        ...

    async def get(self, transfer_id: bytes) -> TransferRecord | None:
        """The transfer, or None."""
        ...

    async def recorded(self, transfer_id: bytes) -> bool:
        """Whether a transfer with this id is recorded (one index read, nothing parsed)."""
        ...

    async def get_many(self, transfer_ids: Sequence[bytes]) -> ManyRecords:
        """---- batchfix: the recorded transfers among ``transfer_ids``, by id (paged reads),
        and apart from them those whose stored row cannot be parsed (UnreadableRecord): one
        damaged row fails no other transfer of the read."""
        ...

    async def get_by_key(self, source_ledger: str, idempotency_key: str) -> TransferRecord | None:
        """The transfer from ``source_ledger`` created with this idempotency key, or None.

        SECURITY: keys are scoped per source ledger (one brokerage's namespace), so no
        brokerage can learn or squat another's keys."""
        ...

    async def get_by_keys(
        self, source_ledger: str, idempotency_keys: Sequence[str]
    ) -> dict[str, TransferRecord | UnreadableRecord]:
        """---- batch: ``get_by_key`` for many keys of one source ledger at once, by key (a
        key with no transfer is absent; a key whose row cannot be parsed maps to its
        UnreadableRecord, so one damaged row fails no other key of the read); one snapshot,
        one statement per 500 keys.

        SECURITY: scoped to ``source_ledger`` exactly as ``get_by_key``."""
        ...

    async def list_transfers(
        self,
        state: TransferState | None,
        security: str | None,
        limit: int,
        after: int,
        ledger: str | None = None,
    ) -> tuple[list[TransferRecord], int]:
        """Transfers in creation order after cursor ``after``; returns the next cursor (0: end).

        With ``ledger``, only transfers whose source or target ledger it is (filtered in
        the query, so a page is never short of matching transfers)."""
        ...

    async def unfinished(self, limit: int | None = None) -> list[TransferRecord]:
        """Every transfer not yet terminal (the first ``limit`` of them, in arrival order)."""
        ...

    async def unfinished_sources(self) -> list[tuple[bytes, str, TransferOrigin]]:
        """The id, source ledger and origin of every transfer not yet terminal, in the order
        ``unfinished`` gives them: the sweep's one read (it spawns the drivers and counts
        each ledger's unfinished submissions; no record is parsed)."""
        ...

    async def unfinished_adopted(self, source_ledger: str) -> int:
        """How many transfers adopted from ``source_ledger`` (origin ADOPTED) are not yet
        terminal (one count; nothing parsed)."""
        ...

    async def set_state(
        self, transfer_id: bytes, state: TransferState, reason: str, detail: str
    ) -> StateWrite:
        """Change state/reason; appends a history entry when the state changes. A change to
        any state but QUEUED also ends the transfer's flow wait, in the same transaction
        (no reader sees the new state with the old wait, nor QUEUED without its wait).
        Returns the stored record and the state it held before, read in that transaction."""
        ...

    async def set_states(self, changes: Sequence[StateChange]) -> list[StateWrite | Exception]:
        """---- batch: ``set_state`` for each change, in order, in one transaction (issue
        14): per change, what ``set_state`` would have returned had the changes been made
        one after the other (a later change of the same transfer sees the earlier one), or
        the error that change alone gets, with nothing of it written: the KeyError of an
        unknown transfer, the UnreadableRecord of a row that cannot be parsed or holds a
        state this release does not know. Any other error fails the whole call, which then
        wrote nothing (or, an outcome the caller cannot see, perhaps all of it)."""
        ...

    async def resume_failed(
        self, transfer_id: bytes, state: TransferState, reason: str, detail: str
    ) -> StateWrite | None:
        """Move the transfer from FAILED to ``state`` if, at that instant, it is FAILED
        (compare-and-set), appending a history entry: what the write recorded (previous
        FAILED, since its ``updated_at``) when it moved, None when it did not."""
        ...

    async def set_reason(self, transfer_id: bytes, reason: str) -> None:
        """Record why the transfer waits, without a history entry."""
        ...

    # ---- parking
    async def record_parked(self, transfer_id: bytes, reason: int) -> None:
        """Remember that the target parked the committed units (``reason`` 2 or 3); once."""
        ...

    async def add_transaction(self, transfer_id: bytes, step: str, tx_id: str) -> None:
        """Remember the ledger transaction that applied ``step``."""
        ...

    async def add_transactions(self, steps: Sequence[tuple[bytes, str, str]]) -> None:
        """``add_transaction`` for each (transfer id, step, transaction) in order, in one
        transaction: all or nothing (a batched step's items are recorded together)."""
        ...

    async def record_decision(self, transfer_id: bytes, decision: Decision) -> Decision:
        """Store the first decision for a transfer; returns the stored one (never replaced)."""
        ...

    async def record_decisions(self, decisions: Sequence[tuple[bytes, Decision]]) -> list[Decision]:
        """``record_decision`` for many transfers in one transaction: per item, in order, the
        stored decision (the item's own, or the one recorded first, never replaced). All or
        nothing: a refused item (ValueError) or a failed write records none of them."""
        ...

    async def decision(self, transfer_id: bytes) -> Decision | None:
        """The recorded decision, if any."""
        ...

    async def history(self, transfer_id: bytes, after: int) -> list[TransferUpdate]:
        """History entries with sequence greater than ``after``."""
        ...

    async def record_events(
        self, ledger: str, events: Sequence[LedgerEvent], scanned: int
    ) -> list[LedgerEvent]:
        """Store events not seen before (dedupe by ledger position); return the new ones."""
        ...

    async def scanned_height(self, ledger: str) -> int | None:
        """The highest height a relayer has reported as scanned."""
        ...

    async def stuck(self, created_before: float, limit: int) -> list[TransferRecord]:
        """Unfinished transfers created before ``created_before``, oldest first."""
        ...

    async def failed_since(self, updated_after: float) -> list[TransferRecord]:
        """FAILED transfers last updated after ``updated_after``."""
        ...

    async def record_misbehaviour(self, incident: Misbehaviour) -> None:
        """Keep evidence of a committee member's misbehaviour."""
        ...

    async def misbehaviour(self, limit: int, member: bytes | None = None) -> list[Misbehaviour]:
        """The most recent incidents, newest first (``member``: only that member's)."""
        ...

    async def recertify(
        self, transfer_id: bytes, kind: ClaimKind, ledger: str, certificate: SignatureSet
    ) -> bool:
        """Replace one ledger's certificate of the recorded decision, only if the recorded
        decision is ``kind``; True when replaced.

        SECURITY: the decision itself (its kind, its cause, the other ledgers'
        certificates) never changes; only a certificate a ledger refuses after a committee
        rotation is swapped for one of the same claim under the epoch it accepts now (a
        batch certificate, too, is replaced by such a single-claim one).
        """
        ...

    # ---- flow limits (ADR 0010)
    async def set_wait(self, transfer_id: bytes, reason: WaitReason, not_before: float) -> None:
        """Record why the transfer waits on a flow limit (``WaitReason.NONE`` clears it)."""
        ...

    async def lane_backlog(self, transfer_id: bytes, states: Sequence[TransferState]) -> int:
        """The units of transfers on the same lane (security, source, target) submitted
        before ``transfer_id`` and now in one of ``states`` (what goes first, FIFO)."""
        ...

    async def queued_on_lane(
        self, security: str, source: str, target: str
    ) -> tuple[int, int, float | None]:
        """QUEUED transfers of the lane: (count, units, creation time of the oldest)."""
        ...


TERMS_FORM = "t1:"
"""The prefix of a ``terms`` column in its compact form (schema version 10): base64 of the
terms' eleven Solidity words in declaration order (amount and deadline as uint256 words),
then the instruction signature's bytes (none for an adopted lock). About 560 characters
where the JSON object of older rows takes about 910 (still read, :func:`_terms_of`)."""

_TERMS_WORDS = 11 * 32
_COMPACT_LENGTHS = frozenset({_TERMS_WORDS, _TERMS_WORDS + 65})
"""The terms alone (an adopted lock) or with a 65-byte instruction signature."""


def _terms_text(t: TransferTerms, instruction: bytes = b"") -> str:
    """The ``terms`` column of ``t`` and the instruction that signed it (compact form)."""
    words = b"".join(v if isinstance(v, bytes) else v.to_bytes(32, "big") for v in t.as_abi_tuple())
    return TERMS_FORM + base64.b64encode(words + instruction).decode("ascii")


_TERMS_FIELDS = (
    "nonce", "security", "amount", "src_ledger", "src_bridge",
    "dst_ledger", "dst_bridge", "sender", "recipient", "instructor", "deadline",
)  # fmt: skip


PARSED_KEPT = 4096
"""Distinct ``request`` and ``terms`` texts whose parsed values are kept (each a few hundred
bytes of text and one frozen value): the transfers being driven, read again at every step."""


@lru_cache(maxsize=PARSED_KEPT)
def _request_of(text: str) -> TransferRequest:
    """The request a ``request`` column holds. A pure function of the text (the values are
    frozen), so the answers for the last texts are kept: a transfer's record is read at
    every step of its driver, and these two columns never change."""
    return TransferRequest(**json.loads(text))


@lru_cache(maxsize=PARSED_KEPT)
def _terms_of(text: str) -> tuple[TransferTerms, bytes]:
    """The terms and the instruction signature a ``terms`` column holds, in either form
    (kept as :func:`_request_of`). ValueError or InvalidInput for a column that is neither
    (UnreadableRecord to the store's callers)."""
    if text.startswith(TERMS_FORM):
        return _terms_from_compact(text)
    raw = json.loads(text)
    return _terms_from_json(raw), _instruction_from_json(raw)


def _terms_from_compact(text: str) -> tuple[TransferTerms, bytes]:
    """The terms and instruction of a compact ``terms`` column (:data:`TERMS_FORM`)."""
    body = text[len(TERMS_FORM) :]
    raw = base64.b64decode(body, validate=True)
    if base64.b64encode(raw).decode("ascii") != body:
        # One text per terms: padding bits set (a text this code never writes) make the
        # row damaged, not a second spelling of the same terms.
        raise ValueError("a compact terms column is not in canonical base64")
    if len(raw) not in _COMPACT_LENGTHS:
        # Review helper-114 L1: a column cut short would otherwise read as a shorter
        # instruction (and drive a LOCK with a bad signature), not as a damaged row.
        raise ValueError(
            f"a compact terms column holds {len(raw)} bytes, not 11 words and an instruction"
        )
    w = [raw[i : i + 32] for i in range(0, _TERMS_WORDS, 32)]
    terms = TransferTerms(
        nonce=w[0], security=w[1], amount=int.from_bytes(w[2], "big"), src_ledger=w[3],
        src_bridge=w[4], dst_ledger=w[5], dst_bridge=w[6], sender=w[7], recipient=w[8],
        instructor=w[9], deadline=int.from_bytes(w[10], "big"),
    )  # fmt: skip
    return terms, raw[_TERMS_WORDS:]


def _terms_from_json(raw: Mapping[str, Any]) -> TransferTerms:
    """The terms of a parsed ``terms`` column."""
    w = {k: bytes.fromhex(raw[k]) for k in _TERMS_FIELDS if k not in ("amount", "deadline")}
    return TransferTerms(
        nonce=w["nonce"],
        security=w["security"],
        amount=int(raw["amount"]),
        src_ledger=w["src_ledger"],
        src_bridge=w["src_bridge"],
        dst_ledger=w["dst_ledger"],
        dst_bridge=w["dst_bridge"],
        sender=w["sender"],
        recipient=w["recipient"],
        instructor=w["instructor"],
        deadline=int(raw["deadline"]),
    )


def _instruction_from_json(raw: Mapping[str, Any]) -> bytes:
    """The instruction signature a parsed ``terms`` column holds (empty for none)."""
    return bytes.fromhex(str(raw.get("instruction", "")))


def _append_update(
    db: Conn, transfer_id: bytes, state: TransferState, detail: str, now: float
) -> None:
    """Append the next update (sequence = last + 1) of ``transfer_id`` inside the caller's
    transaction (which holds the transfer's row lock, so sequences never collide): one
    statement, the sequence computed by the server."""
    db.execute(
        "INSERT INTO transfer_updates"
        " SELECT ?, COALESCE(MAX(sequence), 0) + 1, ?, ?, ? FROM transfer_updates"
        " WHERE transfer_id = ?",
        (transfer_id, int(state), detail, now, transfer_id),
    )


# A transfer's record is one row: its decision kind, parked reason and flow wait come from
# tables keyed by transfer_id (at most one row each), joined in the same statement.
_TRANSFER_COLS = (
    "transfer_id, request, terms, state, reason, created_at, updated_at, transactions, origin"
)
"""The ``transfers`` columns of a record, in the order ``_record`` reads them."""
_COLS = (
    ", ".join(f"t.{c}" for c in _TRANSFER_COLS.split(", "))
    + ", d.kind AS decision_kind, p.reason AS parked_reason,"
    " w.reason AS wait_reason, w.not_before AS wait_not_before"
)
_FROM = (
    "transfers t"
    " LEFT JOIN decisions d ON d.transfer_id = t.transfer_id"
    " LEFT JOIN parked_transfers p ON p.transfer_id = t.transfer_id"
    " LEFT JOIN flow_waits w ON w.transfer_id = t.transfer_id"
)
_TERMINAL = tuple(int(s) for s in TransferState if s.terminal)


@dataclass(frozen=True, slots=True)
class UnfinishedSummary:
    """The unfinished transfers as the coordinator's gauges count them (ADR 0016)."""

    stuck: int
    """How many were created before the time asked about."""
    oldest_created_at: float | None
    """When the oldest was created (None: there is none)."""
    waits: Mapping[WaitReason, int]
    """How many wait for each reason (``NONE``: not waiting); reasons with none absent."""


def summarise(records: Sequence[TransferRecord], created_before: float) -> UnfinishedSummary:
    """The summary of ``records`` (unfinished ones), as
    :meth:`SqlTransferStore.unfinished_summary` counts it in the database."""
    waits = Counter(r.wait_reason for r in records)
    return UnfinishedSummary(
        stuck=sum(1 for r in records if r.created_at < created_before),
        oldest_created_at=min((r.created_at for r in records), default=None),
        waits=dict(waits),
    )


_RETURNING_RECORD = (
    f" RETURNING {_TRANSFER_COLS},"  # noqa: S608 (constant column names)
    " (SELECT kind FROM decisions WHERE transfer_id = ?),"
    " (SELECT reason FROM parked_transfers WHERE transfer_id = ?),"
    " (SELECT reason FROM flow_waits WHERE transfer_id = ?),"
    " (SELECT not_before FROM flow_waits WHERE transfer_id = ?)"
)
"""The columns of ``_COLS``, in its order, as the RETURNING clause of a statement that
updates the row of ``transfers`` of one transfer: the row as updated, with the rows of the
joined tables as the transaction sees them then. Its four parameters are that transfer's
id each (not a reference to the updated row: SQLite would scan each table for it)."""


class UnreadableRecord(BridgeError):
    """A stored transfer row this release cannot parse: damaged, or written by a newer
    release (a state, origin or field this one does not know).

    SECURITY: never read as "no transfer": nothing is adopted, created or answered in its
    place. A read of that transfer (``get``, ``get_many``, a key lookup) raises it; scans of
    many transfers (``unfinished``, ``stuck``, ``failed_since``, listings) leave the row out
    and report it (:class:`UnreadableRows`), so one row never stops the coordinator's start,
    sweeps, metrics or another transfer's events. INTERNAL to a caller, whose public text
    names the transfer only."""

    kind = BridgeReason.INTERNAL

    def __init__(self, transfer_id: bytes, cause: BaseException) -> None:
        super().__init__(
            f"transfer 0x{transfer_id.hex()}: its stored record cannot be read"
            f" ({type(cause).__name__}: {str(cause)[:200]})"
        )
        self.transfer_id = transfer_id
        self.public = (
            f"transfer 0x{transfer_id.hex()}: its record cannot be read now;"
            " the coordinator's operator is alerted"
        )


@dataclass(frozen=True, slots=True)
class ManyRecords:
    """What a read of many named transfers found (:meth:`TransferStore.get_many`): the
    records that parse, by id, and apart from them each transfer whose stored row cannot
    be parsed, by id. GUARANTEES: an id is in at most one of the two; an id in neither is
    not recorded. A caller answers an unreadable transfer alone (typed, INTERNAL), never as
    "no transfer", and goes on with the others."""

    found: Mapping[bytes, TransferRecord]
    unreadable: Mapping[bytes, UnreadableRecord]


MAX_UNREADABLE_KEPT = 10_000
"""Most distinct unreadable transfer ids one store remembers (and logs once each)."""


class UnreadableRows:
    """The transfer rows a store found unreadable since the process started (its scans
    leave them out; its reads of them raise UnreadableRecord). Each is logged once (an
    error naming the transfer and the fault), and ``count`` feeds the
    ``kstb_transfer_rows_unreadable`` gauge. Thread-safe: reports come from the database's
    worker thread."""

    def __init__(self) -> None:
        self._ids: set[bytes] = set()
        self._lock = threading.Lock()
        self._log = get_logger()

    @property
    def count(self) -> int:
        """Distinct unreadable transfers found so far (at most :data:`MAX_UNREADABLE_KEPT`)."""
        return len(self._ids)

    def among(self, transfer_ids: Iterable[bytes]) -> list[bytes]:
        """Those of ``transfer_ids`` found unreadable and not read again since, in order.
        Costs nothing while none is unreadable."""
        if not self._ids:
            return []
        with self._lock:
            return [tid for tid in transfer_ids if tid in self._ids]

    def seen(self, parsed: Iterable[TransferRecord], bad: Iterable[UnreadableRecord]) -> None:
        """One read's outcome: each of ``bad`` reported, the rows of ``parsed`` forgotten
        (read again: repaired)."""
        for exc in bad:
            self.report(exc)
        self.readable(r.transfer_id for r in parsed)

    def readable(self, transfer_ids: Iterable[bytes]) -> None:
        """Forget those of ``transfer_ids`` (just parsed) that were unreadable: repaired.
        Costs nothing while none is unreadable."""
        if not self._ids:
            return
        with self._lock:
            for tid in transfer_ids:
                if tid in self._ids:
                    self._ids.discard(tid)
                    self._log.info("transfer row readable again", **{TRANSFER: "0x" + tid.hex()})

    def report(self, exc: UnreadableRecord) -> None:
        """Note ``exc``'s transfer; log it the first time."""
        with self._lock:
            if exc.transfer_id in self._ids or len(self._ids) >= MAX_UNREADABLE_KEPT:
                return
            self._ids.add(exc.transfer_id)
        self._log.error(
            "transfer row unreadable; left out of the coordinator's scans until repaired",
            **{TRANSFER: "0x" + exc.transfer_id.hex(), ERROR: str(exc)},
        )


@runtime_checkable
class UnreadableReporter(Protocol):
    """A store that leaves unreadable transfer rows out of its scans and reports them."""

    @property
    def unreadable(self) -> UnreadableRows:
        """The rows it found unreadable and has not read again since."""
        ...


def _record(row: tuple[Any, ...] | None) -> TransferRecord | None:
    """The record of one ``SELECT {_COLS} FROM {_FROM}`` row; None for no row;
    UnreadableRecord when the row cannot be parsed."""
    if row is None:
        return None
    try:
        return _parse_record(row)
    except _ROW_FAULTS as exc:
        raise UnreadableRecord(bytes(row[0]), exc) from exc


_ROW_FAULTS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
               InvalidInput)  # fmt: skip
"""What parsing a damaged row raises (JSON and base64 errors are ValueErrors; a validated
value out of range is InvalidInput). Not AttributeError: that is a bug in this code."""


def _parse_record(row: tuple[Any, ...]) -> TransferRecord:
    (tid, request, terms, state, reason, created, updated, txs, origin) = row[:9]
    (decision, parked, wait, not_before) = row[9:]
    transfer_terms, instruction = _terms_of(str(terms))
    return TransferRecord(
        transfer_id=bytes(tid),
        request=_request_of(str(request)),
        terms=transfer_terms,
        state=TransferState(int(state)),
        reason=str(reason),
        created_at=float(created),
        updated_at=float(updated),
        decision=ClaimKind(int(decision)) if decision is not None else None,
        transactions=json.loads(str(txs)),
        origin=TransferOrigin(str(origin)),
        instruction=instruction,
        parked_reason=int(parked) if parked is not None else 0,
        wait_reason=WaitReason(int(wait)) if wait is not None else WaitReason.NONE,
        not_before=float(not_before) if not_before is not None else 0.0,
    )


def _records(rows: list[Any], unreadable: UnreadableRows | None = None) -> list[TransferRecord]:
    """The records of ``rows``: an unreadable row raises UnreadableRecord, or, for a scan
    that passes ``unreadable``, is reported there and left out."""
    out, bad = _records_apart(rows)
    if unreadable is None:
        if bad:
            raise bad[0]
        return out
    unreadable.seen(out, bad)
    return out


def _records_apart(rows: list[Any]) -> tuple[list[TransferRecord], list[UnreadableRecord]]:
    """The records of ``rows`` that parse, in order, and an UnreadableRecord for each row
    that does not."""
    out: list[TransferRecord] = []
    bad: list[UnreadableRecord] = []
    for row in rows:
        try:
            record = _record(tuple(row))
        except UnreadableRecord as exc:
            bad.append(exc)
            continue
        if record is not None:
            out.append(record)
    return out, bad


def _get(db: Conn, transfer_id: bytes) -> TransferRecord | None:
    row = db.execute(
        f"SELECT {_COLS} FROM {_FROM} WHERE t.transfer_id = ?",  # noqa: S608
        (transfer_id,),
    ).fetchone()
    return _record(row)


def replayed_instruction(transfer_id: bytes) -> Conflict:
    """The refusal of a signed instruction already recorded under another key: the
    caller's own input (marked :attr:`~bridge.domain.errors.BridgeError.on_input`, counted
    by the batch quota), found from the records alone, before or at recording."""
    return refused_on_input(
        Conflict(
            f"transfer 0x{transfer_id.hex()} (the same instruction) was already submitted"
            " under another idempotency_key"
        )
    )


def _decision(db: Conn, transfer_id: bytes) -> Decision | None:
    row = db.execute(
        "SELECT kind, certificates, cause FROM decisions WHERE transfer_id = ?",
        (transfer_id,),
    ).fetchone()
    if row is None:
        return None
    certs = {
        ledger: _certificate_from_json(c, lambda cid: _shared_certificate(db, cid))
        for ledger, c in json.loads(row[1]).items()
    }
    return Decision(kind=ClaimKind(int(row[0])), certificates=certs, cause=str(row[2]))


SharedCertificates = dict[BatchCertificate, tuple[bytes, str]]
"""The batch certificates a write of decisions stores once each: certificate -> (its id,
its row's text)."""


def _decision_certificates_json(decision: Decision, shared: SharedCertificates) -> str:
    """The ``certificates`` column of ``decision``'s row; each batch certificate it names
    is added to ``shared`` (stored once, in ``batch_certificates``). Raises ValueError for
    a batch certificate of another claim kind than the decision.

    SECURITY: a batch certificate of another claim kind never backs a decision."""
    for c in decision.certificates.values():
        if isinstance(c, BatchCertified) and c.certificate.kind != int(decision.kind):
            raise ValueError("a batch certificate of another kind than the decision")
    certs = {ledger: _certificate_json(c, shared) for ledger, c in decision.certificates.items()}
    return _certificates_text(certs)


def _certificates_text(certs: Mapping[str, Any]) -> str:
    """A decision's ``certificates`` column from its per-ledger entries (compact JSON)."""
    return json.dumps(certs, sort_keys=True, separators=(",", ":"))


def _certificate_json(c: LedgerCertificate, shared: SharedCertificates) -> dict[str, Any]:
    """One ledger's certificate as the decisions table stores it: a single-claim one as
    before (``epoch``, ``signatures``); a batch one (schema version 9) tagged
    ``"type": "batch-ref"``, as the id of the batch certificate, whose row
    (``batch_certificates``, added to ``shared``) every item of the batch shares, and the
    item's proof, its siblings concatenated, both in base64 (a decision of two ledgers
    then fits five to a 4 KiB page). Before version 9 the whole batch certificate was
    written per item in hex (``"type": "batch"``, still read): 1.8 KB a decision, two to a
    page."""
    if isinstance(c, BatchCertified):
        entry = shared.get(c.certificate)
        if entry is None:
            text = _batch_certificate_text(c.certificate)
            entry = shared[c.certificate] = (_batch_certificate_id(text), text)
        return {
            "type": "batch-ref",
            "certificate": _b64(entry[0]),
            "proof": _b64(b"".join(c.proof)),
        }
    return {"epoch": c.epoch, "signatures": [x.hex() for x in c.signatures]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _from_b64(text: str, what: str) -> bytes:
    """``text`` decoded (standard alphabet, padded); ValueError naming ``what`` otherwise."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a stored decision's {what} is not base64") from None


def _batch_certificate_text(b: BatchCertificate) -> str:
    """A batch certificate as its ``batch_certificates`` row holds it (canonical JSON)."""
    return json.dumps(
        {
            "epoch": b.epoch,
            "kind": b.kind,
            "root": b.root.hex(),
            "count": b.count,
            "signatures": [x.hex() for x in b.signatures],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _batch_certificate_id(text: str) -> bytes:
    """The id of a ``batch_certificates`` row: SHA-256 of its text (domain-tagged). Equal
    certificates share one row; certificates of one root with other signatures do not."""
    return hashlib.sha256(b"KSTB/batch-certificate/v1\x00" + text.encode()).digest()


def _batch_certificate_of(c: Mapping[str, Any]) -> BatchCertificate:
    """A batch certificate from its stored fields (a row's text, or an item's pre-version-9
    inline form)."""
    return BatchCertificate(
        int(c["epoch"]), int(c["kind"]), bytes.fromhex(c["root"]), int(c["count"]),
        tuple(bytes.fromhex(x) for x in c["signatures"]),
    )  # fmt: skip


def _shared_certificate(db: Conn, cid: bytes) -> BatchCertificate:
    """The stored batch certificate ``cid`` (written with the first decision naming it,
    in the same transaction, and never deleted)."""
    row = db.execute("SELECT certificate FROM batch_certificates WHERE id = ?", (cid,)).fetchone()
    if row is None:
        raise ValueError(f"a stored decision names a missing batch certificate {cid.hex()}")
    text = str(row[0])
    if _batch_certificate_id(text) != cid:  # review helper-111: a row altered since
        raise ValueError(f"the stored batch certificate {cid.hex()} does not match its id")
    return _batch_certificate_of(json.loads(text))


def _certificate_from_json(
    c: Mapping[str, Any], shared: Callable[[bytes], BatchCertificate]
) -> LedgerCertificate:
    """Read :func:`_certificate_json`'s form back (``shared`` reads a batch certificate by
    id); rows written before batches (no ``type``) are single-claim certificates, rows
    written before version 9 carry their batch certificate inline."""
    kind = c.get("type", "single")
    if kind == "single":
        return SignatureSet(int(c["epoch"]), tuple(bytes.fromhex(x) for x in c["signatures"]))
    if kind == "batch":
        proof = tuple(bytes.fromhex(x) for x in c["proof"])
        return BatchCertified(_batch_certificate_of(c), proof)
    if kind != "batch-ref":
        raise ValueError(f"unknown certificate type {kind!r} in a stored decision")
    siblings = _from_b64(str(c["proof"]), "proof")
    if len(siblings) % 32:
        raise ValueError("a stored decision's proof is not a whole number of 32-byte siblings")
    proof = tuple(siblings[i : i + 32] for i in range(0, len(siblings), 32))
    return BatchCertified(shared(_from_b64(str(c["certificate"]), "certificate id")), proof)


P = TypeVar("P")


def _pages(items: Sequence[P], size: int = MAX_ROWS_PER_STATEMENT) -> Iterator[Sequence[P]]:
    """``items`` in order, ``size`` at a time: the pages of a many-row statement."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


_Written = tuple[TransferRecord, TransferState, float]
"""What one state change wrote: the record after it, and the state and ``updated_at`` the
row held just before it."""


def _held(transfer_id: bytes, state: object, updated_at: object) -> tuple[TransferState, float]:
    """The state and ``updated_at`` a row holds; UnreadableRecord for a state this release
    does not know (written by a newer release, or damaged) or a damaged time."""
    try:
        return TransferState(int(state)), float(updated_at)  # type: ignore[call-overload,arg-type]
    except (ValueError, TypeError, OverflowError) as exc:
        raise UnreadableRecord(transfer_id, exc) from exc


def _set_state(db: Conn, change: StateChange, now: float) -> _Written:
    """``set_state``'s statements inside the caller's transaction: the row read and locked,
    a history entry appended and the flow wait ended (but for QUEUED) when the state
    changes, the row updated and returned. KeyError for an unknown transfer;
    UnreadableRecord for a row that cannot be parsed (the caller rolls back)."""
    tid = change.transfer_id
    row = db.execute(
        "SELECT state, updated_at FROM transfers WHERE transfer_id = ?"  # noqa: S608
        + db.for_update,
        (tid,),
    ).fetchone()
    if row is None:
        raise KeyError(tid.hex())
    old, old_at = _held(tid, row[0], row[1])
    if old is not change.state:
        _append_updates(db, [change], now)
    # The update returns the stored record (after the statements above, in this
    # transaction): no read of it after.
    (stored,) = db.execute(
        "UPDATE transfers SET state = ?, reason = ?, updated_at = ?"  # noqa: S608
        " WHERE transfer_id = ?" + _RETURNING_RECORD,
        (int(change.state), change.reason, now, tid, *(tid,) * 4),
    ).fetchall()
    record = _record(tuple(stored))
    assert record is not None
    return record, old, old_at


def _rounds(changes: Sequence[StateChange]) -> list[list[tuple[int, StateChange]]]:
    """``changes`` with their indexes, in rounds of distinct transfers: a transfer's n-th
    change is in round n, so each round's statements name a row once and a later change
    of a transfer is applied after its earlier one."""
    seen: Counter[bytes] = Counter()
    rounds: list[list[tuple[int, StateChange]]] = []
    for i, change in enumerate(changes):
        n = seen[change.transfer_id]
        seen[change.transfer_id] += 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append((i, change))
    return rounds


def _set_states(
    db: Conn, changes: Sequence[StateChange], now: float
) -> list[_Written | KeyError | UnreadableRecord]:
    """``set_state``'s statements for every change at once, inside the caller's
    transaction: per change, in order, what :func:`_set_state` would have returned had the
    changes been made one after the other, or its KeyError or UnreadableRecord (nothing of
    that change written). Per round (:func:`_rounds`) and page of 500: the rows read and
    locked, and their records read and parsed, before anything is written; for those whose
    state changes, the history's last sequences read, their entries appended and their
    flow waits ended (but for QUEUED); one UPDATE per new state. Each answer is the record
    read, with what the change wrote. A row that cannot be parsed (or holds a state or time
    this release cannot read) is found before anything is written: its change is answered
    its UnreadableRecord and left out, the others are made (no savepoint: what a change
    writes never makes a row unreadable, and on PostgreSQL every savepoint that writes
    takes one of the transaction's 64 cached subtransaction ids). A damaged flow wait that
    the change would have deleted still fails it, where ``set_state`` alone would succeed:
    the row stays as it is for the operator to repair."""
    out: list[_Written | KeyError | UnreadableRecord | None] = [None] * len(changes)
    for round_ in _rounds(changes):
        for page in _pages(round_):
            for i, written in _set_page(db, page, now):
                out[i] = written
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


def _set_page(
    db: Conn, page: Sequence[tuple[int, StateChange]], now: float
) -> list[tuple[int, _Written | KeyError | UnreadableRecord]]:
    """One page of distinct transfers' changes (see :func:`_set_states`)."""
    ids = [c.transfer_id for _, c in page]
    marks = ",".join("?" for _ in ids)
    locked = db.execute(
        "SELECT transfer_id, state, updated_at FROM transfers"  # noqa: S608
        f" WHERE transfer_id IN ({marks})" + db.for_update,
        ids,
    ).fetchall()
    read, bad = _records_apart(
        db.execute(f"SELECT {_COLS} FROM {_FROM} WHERE t.transfer_id IN ({marks})", ids).fetchall()  # noqa: S608
    )
    unreadable = {exc.transfer_id: exc for exc in bad}
    held: dict[bytes, tuple[TransferState, float]] = {}
    for tid, state, updated_at in locked:
        try:
            held[bytes(tid)] = _held(bytes(tid), state, updated_at)
        except UnreadableRecord as exc:
            unreadable.setdefault(exc.transfer_id, exc)
    before = {r.transfer_id: r for r in read}
    present = [c for _, c in page if c.transfer_id in held and c.transfer_id not in unreadable]
    _append_updates(db, [c for c in present if held[c.transfer_id][0] is not c.state], now)
    # One UPDATE per new state (a batched step's changes share it); the reason as one
    # parameter when they share it too, else a CASE over the ids (QUEUED reasons name
    # each transfer's figures).
    by_state: dict[TransferState, list[StateChange]] = {}
    for c in present:
        by_state.setdefault(c.state, []).append(c)
    for state, group in by_state.items():
        reasons = {c.reason for c in group}
        reason_args: list[object]
        if len(reasons) == 1:
            reason_sql, reason_args = "?", [group[0].reason]
        else:
            reason_sql = "CASE transfer_id " + " ".join("WHEN ? THEN ?" for _ in group) + " END"
            reason_args = [v for c in group for v in (c.transfer_id, c.reason)]
        db.execute(
            f"UPDATE transfers SET state = ?, reason = {reason_sql}, updated_at = ?"  # noqa: S608
            f" WHERE transfer_id IN ({','.join('?' for _ in group)})",
            [int(state), *reason_args, now, *(c.transfer_id for c in group)],
        )
    out: list[tuple[int, _Written | KeyError | UnreadableRecord]] = []
    for i, c in page:
        if (damaged := unreadable.get(c.transfer_id)) is not None:
            out.append((i, damaged))
            continue
        if c.transfer_id not in held:
            out.append((i, KeyError(c.transfer_id.hex())))
            continue
        old, old_at = held[c.transfer_id]
        out.append((i, (_after(before[c.transfer_id], old, c, now), old, old_at)))
    return out


def _after(
    record: TransferRecord, old: TransferState, change: StateChange, now: float
) -> TransferRecord:
    """``record`` as read before ``change`` (whose row held ``old``), with what
    :func:`_set_page` wrote: the state, the reason, ``updated_at``, and no flow wait when
    the state changed to one but QUEUED (the row deleted). The rest of the record (its
    request, terms, decision, transactions, parking) no state write touches."""
    ended = old is not change.state and change.state is not TransferState.QUEUED
    return dataclasses.replace(
        record,
        state=change.state,
        reason=change.reason,
        updated_at=now,
        wait_reason=WaitReason.NONE if ended else record.wait_reason,
        not_before=0.0 if ended else record.not_before,
    )


def _append_updates(db: Conn, changed: Sequence[StateChange], now: float) -> None:
    """:func:`_append_update` for each of ``changed`` (distinct transfers whose state
    changes), and their flow waits ended (but for QUEUED: flow limits, ADR 0010), in the
    caller's transaction, which holds their rows' locks. One change: its entry in one
    statement (the sequence computed by the server). More: the last sequences read in one
    statement, the entries appended in another. The waits are deleted in one more."""
    if not changed:
        return
    if len(changed) == 1:
        (c,) = changed
        _append_update(db, c.transfer_id, c.state, c.detail, now)
    else:
        ids = [c.transfer_id for c in changed]
        marks = ",".join("?" for _ in ids)
        last = {
            bytes(r[0]): int(r[1])
            for r in db.execute(
                "SELECT transfer_id, MAX(sequence) FROM transfer_updates"  # noqa: S608
                f" WHERE transfer_id IN ({marks}) GROUP BY transfer_id",
                ids,
            ).fetchall()
        }
        db.execute(
            "INSERT INTO transfer_updates (transfer_id, sequence, state, detail, at)"  # noqa: S608
            f" VALUES {values_rows(5, len(changed))}",
            [
                v
                for c in changed
                for v in (
                    c.transfer_id,
                    last.get(c.transfer_id, 0) + 1,
                    int(c.state),
                    c.detail,
                    now,
                )
            ],
        )
    ended = [c.transfer_id for c in changed if c.state is not TransferState.QUEUED]
    if ended:
        db.execute(
            "DELETE FROM flow_waits"  # noqa: S608
            f" WHERE transfer_id IN ({','.join('?' for _ in ended)})",
            ended,
        )


def _create_many(
    db: Conn, records: Sequence[TransferRecord], seqs: dict[bytes, int] | None = None
) -> list[tuple[TransferRecord | None, bool]]:
    """Insert each of ``records``, in order, unless its key (or its transfer id) is taken by
    then (an earlier record of the same call included); per record, the row stored under
    its key (None: the id is taken under another key) and whether it was inserted; and
    into ``seqs``, when given, the store sequence of each inserted row by transfer id.

    One multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per 500 records (both
    engines insert a ``VALUES`` list row by row in order, so the store sequence ``seq``
    follows the records as before; PostgreSQL does not document it, the ordering tests
    check it), one multi-row insert of their history entries, one read of the stored rows
    per source ledger and 500 keys: three statements for a batch where each record took
    three. No pipeline (see :func:`~bridge.coordinator.db.values_rows`). Each record is
    answered as an insert and read of its own, in order, would have answered it."""
    inserted: dict[tuple[str, str], bytes] = {}  # key -> the transfer id inserted under it
    for page in _pages(records):
        args: list[object] = []
        for record in page:
            r = record.request
            args += [
                record.transfer_id,
                r.idempotency_key,
                json.dumps({f: getattr(r, f) for f in TransferRequest.__dataclass_fields__}),
                _terms_text(record.terms, record.instruction),
                r.security,
                int(record.state),
                record.reason,
                record.created_at,
                record.updated_at,
                record.origin.value,
                r.source_ledger,
                r.target_ledger,
            ]
        rows = db.execute(
            "INSERT INTO transfers (transfer_id, idempotency_key, request, terms,"  # noqa: S608
            " security, state, reason, created_at, updated_at, origin, source_ledger,"
            " target_ledger)"
            f" VALUES {values_rows(12, len(page))} ON CONFLICT DO NOTHING"
            " RETURNING transfer_id, source_ledger, idempotency_key, seq",
            args,
        ).fetchall()
        inserted |= {(str(row[1]), str(row[2])): bytes(row[0]) for row in rows}
        if seqs is not None:
            seqs.update((bytes(row[0]), int(row[3])) for row in rows)
    # The record that inserted under each key is the first one with that key and the
    # inserted transfer id; a record before it found the key free (its transfer id was
    # taken: a Conflict), one after it, or a key stored before the call, gets the stored
    # record.
    keys = [(r.request.source_ledger, r.request.idempotency_key) for r in records]
    claimed: dict[tuple[str, str], int] = {}
    created: list[bool] = []
    for i, (record, key) in enumerate(zip(records, keys, strict=True)):
        new = inserted.get(key) == record.transfer_id and key not in claimed
        if new:
            claimed[key] = i
        created.append(new)
    history = [
        (record.transfer_id, int(record.state), "accepted", record.created_at)
        for record, new in zip(records, created, strict=True)
        if new
    ]
    for page_rows in _pages(history):
        db.execute(
            "INSERT INTO transfer_updates (transfer_id, state, detail, at, sequence)"  # noqa: S608
            f" VALUES {values_rows(5, len(page_rows))}",
            [v for row in page_rows for v in (*row, 1)],
        )
    stored = _by_keys(db, keys)
    return [
        (None if claimed.get(key, -1) > i else stored.get(key), new)
        for i, (key, new) in enumerate(zip(keys, created, strict=True))
    ]


def _by_keys(db: Conn, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TransferRecord]:
    """The stored records under ``keys`` ((source ledger, idempotency key)), by key; a key
    with no record is absent; an unreadable row raises UnreadableRecord."""
    out: dict[tuple[str, str], TransferRecord] = {}
    for key, found in _by_keys_apart(db, keys).items():
        if isinstance(found, UnreadableRecord):
            raise found
        out[key] = found
    return out


def _by_keys_apart(
    db: Conn, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], TransferRecord | UnreadableRecord]:
    """:func:`_by_keys`, with an unreadable row's UnreadableRecord under its key instead of
    raised. One statement per source ledger and 500 keys, each an index lookup on the
    ``(source_ledger, idempotency_key)`` key."""
    by_ledger: dict[str, list[str]] = {}
    for ledger, key in dict.fromkeys(keys):
        by_ledger.setdefault(ledger, []).append(key)
    out: dict[tuple[str, str], TransferRecord | UnreadableRecord] = {}
    for ledger, ledger_keys in by_ledger.items():
        for page in _pages(ledger_keys):
            marks = ",".join("?" for _ in page)
            rows = db.execute(
                f"SELECT {_COLS}, t.idempotency_key FROM {_FROM}"  # noqa: S608 (marks only)
                f" WHERE t.source_ledger = ? AND t.idempotency_key IN ({marks})",
                [ledger, *page],
            ).fetchall()
            for row in rows:
                try:
                    record = _record(tuple(row[:-1]))
                except UnreadableRecord as exc:
                    out[(ledger, str(row[-1]))] = exc
                    continue
                if record is not None:
                    out[(ledger, str(row[-1]))] = record
    return out


class SqlTransferStore:
    """TransferStore on the coordinator's database (SQLite file or PostgreSQL; ADR 0013).

    Every method is one transaction run in the database's worker thread, never on the
    event loop; a write has committed (fsync'd) when it returns."""

    def __init__(self, db: Database | Path) -> None:
        self._db = as_database(db)
        self._unreadable = UnreadableRows()
        self._backlogs = LaneBacklogs()

    @property
    def unreadable(self) -> UnreadableRows:
        """The rows this store found unreadable (UnreadableRecord)."""
        return self._unreadable

    def close(self) -> None:
        """Release the database (closed with its last store)."""
        self._db.close()

    async def create(self, record: TransferRecord) -> tuple[TransferRecord, bool]:
        """See TransferStore.create."""
        (outcome,) = await self.create_many([record])
        if isinstance(outcome, Conflict):
            raise outcome
        return outcome

    async def create_many(
        self, records: Sequence[TransferRecord]
    ) -> list[tuple[TransferRecord, bool] | Conflict]:
        """See TransferStore.create_many."""

        seqs: dict[bytes, int] = {}

        def run(db: Conn) -> list[tuple[TransferRecord | None, bool]]:
            return _create_many(db, records, seqs)

        try:
            rows = await self._db.write(run) if records else []
        except BaseException:
            # Cancelled or failed, perhaps after the commit: creations this store cannot
            # record may be on these records' lanes, whose reads are stale (review
            # helper-118 #3: not every lane's, which a brokerage cancelling its own
            # submissions could force again and again).
            self._backlogs.changed(lane_of(r.request) for r in records)
            raise
        for record, (_, created) in zip(records, rows, strict=True):
            if created:  # committed: a lane's kept backlog counts it from now on
                self._backlogs.created(
                    lane_of(record.request),
                    seqs[record.transfer_id],
                    record.request.amount,
                    int(record.state),
                )
        out: list[tuple[TransferRecord, bool] | Conflict] = []
        for record, (stored, created) in zip(records, rows, strict=True):
            if stored is None:
                # Ignored, yet no row has this key: the transfer id is recorded under another.
                out.append(replayed_instruction(record.transfer_id))
            else:
                out.append((stored, created))
        return out

    async def get(self, transfer_id: bytes) -> TransferRecord | None:
        """See TransferStore.get. An unreadable row is reported (:class:`UnreadableRows`)
        and raised; a row that parses leaves the report."""
        try:
            found = await self._db.read(lambda db: _get(db, transfer_id))
        except UnreadableRecord as exc:
            self._unreadable.report(exc)
            raise
        if found is not None:
            self._unreadable.readable((found.transfer_id,))
        return found

    async def recorded(self, transfer_id: bytes) -> bool:
        """See TransferStore.recorded."""

        def run(db: Conn) -> bool:
            row = db.execute(
                "SELECT 1 FROM transfers WHERE transfer_id = ?", (transfer_id,)
            ).fetchone()
            return row is not None

        return await self._db.read(run)

    # ---- batch API (batchfix): many records in one read per page (a batch's answer)
    async def get_many(self, transfer_ids: Sequence[bytes]) -> ManyRecords:
        """See TransferStore.get_many: one read (one worker-thread call, one snapshot on
        PostgreSQL) per page of 500 ids, not one per transfer. An unreadable row is reported
        (:class:`UnreadableRows`) and answered apart; the others' rows leave the report."""
        found: dict[bytes, TransferRecord] = {}
        unreadable: dict[bytes, UnreadableRecord] = {}
        for ids in _pages(transfer_ids):
            page = list(dict.fromkeys(ids))
            marks = ",".join("?" for _ in page)
            sql = f"SELECT {_COLS} FROM {_FROM} WHERE t.transfer_id IN ({marks})"  # noqa: S608

            def run(
                db: Conn, sql: str = sql, page: list[bytes] = page
            ) -> tuple[list[TransferRecord], list[UnreadableRecord]]:
                return _records_apart(db.execute(sql, page).fetchall())

            records, bad = await self._db.read(run)
            self._unreadable.seen(records, bad)
            unreadable.update((exc.transfer_id, exc) for exc in bad)
            found.update((r.transfer_id, r) for r in records)
        return ManyRecords(found, unreadable)

    async def get_by_key(self, source_ledger: str, idempotency_key: str) -> TransferRecord | None:
        """See TransferStore.get_by_key (the read of :meth:`get_by_keys`, for one key)."""
        found = (await self.get_by_keys(source_ledger, [idempotency_key])).get(idempotency_key)
        if isinstance(found, UnreadableRecord):
            raise found
        return found

    async def get_by_keys(
        self, source_ledger: str, idempotency_keys: Sequence[str]
    ) -> dict[str, TransferRecord | UnreadableRecord]:
        """See TransferStore.get_by_keys. An unreadable row is reported
        (:class:`UnreadableRows`); the others' rows leave the report."""
        keys = [(source_ledger, k) for k in idempotency_keys]
        found = await self._db.read(lambda db: _by_keys_apart(db, keys)) if keys else {}
        self._unreadable.seen(
            (v for v in found.values() if isinstance(v, TransferRecord)),
            (v for v in found.values() if isinstance(v, UnreadableRecord)),
        )
        return {key: value for (_, key), value in found.items()}

    async def list_transfers(
        self,
        state: TransferState | None,
        security: str | None,
        limit: int,
        after: int,
        ledger: str | None = None,
    ) -> tuple[list[TransferRecord], int]:
        """See TransferStore.list."""

        def run(db: Conn) -> tuple[list[TransferRecord], int]:
            sql = f"SELECT t.seq, {_COLS} FROM {_FROM} WHERE t.seq > ?"  # noqa: S608
            args: list[object] = [after]
            if ledger is not None:
                # SECURITY: a brokerage's listing is scoped in the query itself.
                sql += " AND (t.source_ledger = ? OR t.target_ledger = ?)"
                args += [ledger, ledger]
            if state is not None:
                sql += " AND t.state = ?"
                args.append(int(state))
            if security:
                sql += " AND t.security = ?"
                args.append(security)
            sql += " ORDER BY t.seq LIMIT ?"
            args.append(limit + 1)
            rows = db.execute(sql, args).fetchall()
            records = _records([row[1:] for row in rows[:limit]], self._unreadable)
            cursor = int(rows[limit - 1][0]) if len(rows) > limit else 0
            return records, cursor

        return await self._db.read(run)

    async def unfinished(self, limit: int | None = None) -> list[TransferRecord]:
        """See TransferStore.unfinished."""
        query = f"SELECT {_COLS} FROM {_FROM} WHERE t.state NOT IN (?,?,?) ORDER BY t.seq"  # noqa: S608
        args: tuple[int, ...] = _TERMINAL
        if limit is not None:
            query, args = query + " LIMIT ?", (*_TERMINAL, max(0, int(limit)))

        def run(db: Conn) -> list[TransferRecord]:
            return _records(db.execute(query, args).fetchall(), self._unreadable)

        return await self._db.read(run)

    async def unfinished_summary(self, created_before: float) -> UnfinishedSummary:
        """The unfinished transfers' summary for the gauges (:func:`summarise`), counted by
        the database in one query: no record is read or parsed (issue 14: the metrics
        refresh parsed every unfinished record, every few seconds, however many)."""

        def run(db: Conn) -> list[Any]:
            return list(
                db.execute(
                    "SELECT w.reason, COUNT(*), MIN(t.created_at),"
                    " SUM(CASE WHEN t.created_at < ? THEN 1 ELSE 0 END)"
                    " FROM transfers t LEFT JOIN flow_waits w ON w.transfer_id = t.transfer_id"
                    " WHERE t.state NOT IN (?,?,?) GROUP BY w.reason",
                    (created_before, *_TERMINAL),
                ).fetchall()
            )

        waits: Counter[WaitReason] = Counter()
        stuck, oldest = 0, None
        for reason, count, first, before in await self._db.read(run):
            waits[WaitReason(int(reason)) if reason is not None else WaitReason.NONE] += int(count)
            stuck += int(before or 0)
            if first is not None and (oldest is None or float(first) < oldest):
                oldest = float(first)
        return UnfinishedSummary(stuck, oldest, dict(waits))

    async def unfinished_adopted(self, source_ledger: str) -> int:
        """See TransferStore.unfinished_adopted."""

        def run(db: Conn) -> int:
            # The literal origin lets both engines use the partial index transfers_adopted.
            row = db.execute(
                "SELECT COUNT(*) FROM transfers WHERE source_ledger = ?"
                " AND origin = 'adopted' AND state NOT IN (?,?,?)",
                (source_ledger, *_TERMINAL),
            ).fetchone()
            return int(row[0])

        return await self._db.read(run)

    async def unfinished_sources(self) -> list[tuple[bytes, str, TransferOrigin]]:
        """See TransferStore.unfinished_sources (an origin this release does not know reads
        as ADOPTED: never counted as a brokerage's submission)."""

        def run(db: Conn) -> list[tuple[bytes, str, TransferOrigin]]:
            rows = db.execute(
                "SELECT transfer_id, source_ledger, origin FROM transfers"
                " WHERE state NOT IN (?,?,?) ORDER BY seq",
                _TERMINAL,
            ).fetchall()
            submitted = TransferOrigin.SUBMITTED
            return [
                (bytes(t), str(s), submitted if o == submitted.value else TransferOrigin.ADOPTED)
                for t, s, o in rows
            ]

        return await self._db.read(run)

    async def set_state(
        self, transfer_id: bytes, state: TransferState, reason: str, detail: str
    ) -> StateWrite:
        """See TransferStore.set_state."""
        now = time.time()
        change = StateChange(transfer_id, state, reason, detail)
        try:
            record, old, old_at = await self._db.write(lambda db: _set_state(db, change, now))
        except UnreadableRecord as exc:  # rolled back: nothing recorded
            self._unreadable.report(exc)
            raise
        except BaseException:
            self._backlogs.changed_all()  # perhaps committed (see create_many)
            raise
        # Committed: a lane's kept backlog (LaneBacklogs) still counts a transfer that left
        # its states until the next read (never less than now); one entering them makes
        # it read again.
        self._backlogs.moved(lane_of(record.request), int(old), int(state))
        return StateWrite(record, old, old_at)

    async def set_states(self, changes: Sequence[StateChange]) -> list[StateWrite | Exception]:
        """See TransferStore.set_states: one write job with a handful of statements per
        round of distinct transfers and page of 500 (:func:`_set_states`), instead of a
        job, a savepoint and four statements per change."""
        if not changes:
            return []
        now = time.time()
        try:
            written = await self._db.write(lambda db: _set_states(db, changes, now))
        except BaseException:
            self._backlogs.changed_all()  # perhaps committed (see create_many)
            raise
        out: list[StateWrite | Exception] = []
        for change, done in zip(changes, written, strict=True):
            if isinstance(done, Exception):
                if isinstance(done, UnreadableRecord):
                    self._unreadable.report(done)
                out.append(done)
                continue
            record, old, old_at = done
            self._backlogs.moved(lane_of(record.request), int(old), int(change.state))
            out.append(StateWrite(record, old, old_at))
        return out

    async def resume_failed(
        self, transfer_id: bytes, state: TransferState, reason: str, detail: str
    ) -> StateWrite | None:
        """See TransferStore.resume_failed."""
        now = time.time()
        failed = TransferState.FAILED

        def run(db: Conn) -> _Written | None:
            # SECURITY: compare-and-set: a transfer that left FAILED meanwhile (another
            # resume, or an operator) is never moved by a stale decision. The row is
            # locked while FAILED (PostgreSQL re-checks the condition on the locked row).
            row = db.execute(
                "SELECT updated_at FROM transfers WHERE transfer_id = ? AND state = ?"  # noqa: S608
                + db.for_update,
                (transfer_id, int(failed)),
            ).fetchone()
            if row is None:
                return None
            _, failed_at = _held(transfer_id, int(failed), row[0])
            # Its history entry, and any flow wait ended, as set_state does (review helper-133
            # L4: a wait written by a stale driver after FAILED is not carried over).
            _append_updates(db, [StateChange(transfer_id, state, reason, detail)], now)
            (stored,) = db.execute(
                "UPDATE transfers SET state = ?, reason = ?, updated_at = ?"  # noqa: S608
                " WHERE transfer_id = ?" + _RETURNING_RECORD,
                (int(state), reason, now, transfer_id, *(transfer_id,) * 4),
            ).fetchall()
            record = _record(tuple(stored))
            assert record is not None
            return record, failed, failed_at

        try:
            moved = await self._db.write(run)
        except UnreadableRecord as exc:  # rolled back: nothing recorded
            self._unreadable.report(exc)
            raise
        except BaseException:
            self._backlogs.changed_all()  # perhaps committed (see create_many)
            raise
        if moved is None:
            return None
        record, _, failed_at = moved
        self._backlogs.moved(lane_of(record.request), int(failed), int(state))
        return StateWrite(record, failed, failed_at)

    # ---- parking
    async def record_parked(self, transfer_id: bytes, reason: int) -> None:
        """See TransferStore.record_parked (the first record stays: a leg parks once)."""
        await self._db.write(
            lambda db: db.execute(
                "INSERT INTO parked_transfers VALUES (?, ?) ON CONFLICT DO NOTHING",
                (transfer_id, reason),
            )
        )

    async def set_reason(self, transfer_id: bytes, reason: str) -> None:
        """See TransferStore.set_reason."""
        await self._db.write(
            lambda db: db.execute(
                "UPDATE transfers SET reason = ?, updated_at = ?"
                " WHERE transfer_id = ? AND reason != ?",
                (reason, time.time(), transfer_id, reason),
            )
        )

    async def add_transaction(self, transfer_id: bytes, step: str, tx_id: str) -> None:
        """See TransferStore.add_transaction."""
        await self.add_transactions([(transfer_id, step, tx_id)])

    async def add_transactions(self, steps: Sequence[tuple[bytes, str, str]]) -> None:
        """See TransferStore.add_transactions. KeyError (nothing recorded) when a transfer
        is unknown."""
        if not steps:
            return

        def run(db: Conn) -> None:
            # Every row read (and locked) at once, per page of 500 ids, and every changed
            # one written by one UPDATE per page: two statements per page of a batch, not
            # two per item.
            ids = list(dict.fromkeys(tid for tid, _, _ in steps))
            current: dict[bytes, dict[str, str]] = {}
            for page in _pages(ids):
                marks = ",".join("?" for _ in page)
                rows = db.execute(
                    f"SELECT transfer_id, transactions FROM transfers"  # noqa: S608
                    f" WHERE transfer_id IN ({marks})" + db.for_update,
                    page,
                ).fetchall()
                current |= {bytes(r[0]): json.loads(r[1]) for r in rows}
            changed: dict[bytes, None] = {}
            for transfer_id, step, tx_id in steps:
                if transfer_id not in current:
                    raise KeyError(transfer_id.hex())
                if current[transfer_id].get(step) != tx_id:
                    current[transfer_id][step] = tx_id
                    changed[transfer_id] = None
            # One UPDATE per 500 changed rows (a CASE over their ids), never a pipeline
            # (see db.values_rows).
            for page in _pages(list(changed)):
                cases = " ".join("WHEN ? THEN ?" for _ in page)
                marks = ",".join("?" for _ in page)
                args: list[object] = []
                for tid in page:
                    args += [tid, json.dumps(current[tid], sort_keys=True)]
                db.execute(
                    f"UPDATE transfers SET transactions = CASE transfer_id {cases} END"  # noqa: S608
                    f" WHERE transfer_id IN ({marks})",
                    [*args, *page],
                )

        await self._db.write(run)

    async def record_decision(self, transfer_id: bytes, decision: Decision) -> Decision:
        """See TransferStore.record_decision."""
        (stored,) = await self.record_decisions([(transfer_id, decision)])
        return stored

    async def record_decisions(self, decisions: Sequence[tuple[bytes, Decision]]) -> list[Decision]:
        """See TransferStore.record_decisions: the batch certificates, then the items, each
        in one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per 500 (issue 14;
        it was one statement per item). An item whose transfer has a decision already (an
        earlier call's, or an earlier item's of this call) is answered the stored one."""
        shared: SharedCertificates = {}
        first: dict[bytes, tuple[Decision, str]] = {}
        for tid, d in decisions:
            # Every item checked, repeats too; a repeat's certificates are not stored (no
            # row would name them; review helper-133 L7).
            certs = _decision_certificates_json(d, {} if tid in first else shared)
            first.setdefault(tid, (d, certs))
        # Inserted in key order (answered in the call's): two writers of overlapping
        # transfers take their rows' locks in one order (review helper-133 L6).
        unique = sorted(first.items())

        def run(db: Conn) -> list[Decision]:
            now = time.time()
            # Each batch certificate once (one row per batch and ledger), before the items'
            # rows that name it, in the same transaction.
            for page in _pages(sorted(shared.values())):
                db.execute(
                    f"INSERT INTO batch_certificates VALUES {values_rows(2, len(page))}"  # noqa: S608
                    " ON CONFLICT DO NOTHING",
                    [v for row in page for v in row],
                )
            inserted: set[bytes] = set()
            for items in _pages(unique):
                rows = db.execute(
                    f"INSERT INTO decisions VALUES {values_rows(5, len(items))}"  # noqa: S608
                    " ON CONFLICT DO NOTHING RETURNING transfer_id",
                    [v for tid, (d, certs) in items
                     for v in (tid, int(d.kind), certs, d.cause, now)],
                ).fetchall()  # fmt: skip
                inserted.update(bytes(r[0]) for r in rows)
            # An inserted row is exactly its item's decision: only a transfer that had one
            # already (never replaced) is read back.
            stored = {
                tid: d if tid in inserted else _decision(db, tid)
                for tid, (d, _) in unique
            }  # fmt: skip
            out: list[Decision] = []
            for tid, _ in decisions:
                found = stored[tid]
                assert found is not None
                out.append(found)
            return out

        return await self._db.write(run) if unique else []

    async def decision(self, transfer_id: bytes) -> Decision | None:
        """See TransferStore.decision."""
        return await self._db.read(lambda db: _decision(db, transfer_id))

    async def recertify(
        self, transfer_id: bytes, kind: ClaimKind, ledger: str, certificate: SignatureSet
    ) -> bool:
        """See TransferStore.recertify."""

        def run(db: Conn) -> bool:
            row = db.execute(
                "SELECT kind, certificates FROM decisions WHERE transfer_id = ?" + db.for_update,  # noqa: S608
                (transfer_id,),
            ).fetchone()
            if row is None or int(row[0]) != int(kind):
                return False
            certs = json.loads(row[1])
            if ledger not in certs:
                return False
            # A single-claim certificate (its type says so): it names no shared row.
            certs[ledger] = _certificate_json(certificate, {})
            db.execute(
                "UPDATE decisions SET certificates = ? WHERE transfer_id = ? AND kind = ?",
                (_certificates_text(certs), transfer_id, int(kind)),
            )
            return True

        return await self._db.write(run)

    async def history(self, transfer_id: bytes, after: int) -> list[TransferUpdate]:
        """See TransferStore.history."""

        def run(db: Conn) -> list[TransferUpdate]:
            rows = db.execute(
                "SELECT sequence, state, detail, at FROM transfer_updates"
                " WHERE transfer_id = ? AND sequence > ? ORDER BY sequence",
                (transfer_id, after),
            ).fetchall()
            return [
                TransferUpdate(transfer_id, int(s), TransferState(int(st)), str(d), float(at))
                for (s, st, d, at) in rows
            ]

        return await self._db.read(run)

    async def record_events(
        self, ledger: str, events: Sequence[LedgerEvent], scanned: int
    ) -> list[LedgerEvent]:
        """See TransferStore.record_events: one multi-row insert per 500 events (issue 14;
        it was one statement per event), whose RETURNING names the positions it inserted.
        Of two events of the call at one position, the first is the one recorded and
        answered (once, in the call's order)."""
        first: dict[tuple[int, int], LedgerEvent] = {}
        for e in events:
            first.setdefault((e.position.height, e.position.index), e)
        unique = list(first.values())

        def run(db: Conn) -> list[LedgerEvent]:
            inserted: set[tuple[int, int]] = set()
            for page in _pages(unique):
                rows = db.execute(
                    f"INSERT INTO ledger_events VALUES {values_rows(7, len(page))}"  # noqa: S608
                    " ON CONFLICT DO NOTHING RETURNING height, idx",
                    [v for e in page for v in (ledger, e.position.height, e.position.index,
                                               e.transfer_id, int(e.leg), int(e.state), e.tx_id)],
                ).fetchall()  # fmt: skip
                inserted.update((int(h), int(i)) for h, i in rows)
            fresh = [e for pos, e in first.items() if pos in inserted]
            db.execute(
                "INSERT INTO ledger_progress VALUES (?, ?) ON CONFLICT(ledger) DO UPDATE SET"  # noqa: S608
                f" scanned = {db.greatest('ledger_progress.scanned', 'excluded.scanned')}",
                (ledger, scanned),
            )
            return fresh

        return await self._db.write(run)

    async def scanned_height(self, ledger: str) -> int | None:
        """See TransferStore.scanned_height."""
        row = await self._db.read(
            lambda db: db.execute(
                "SELECT scanned FROM ledger_progress WHERE ledger = ?", (ledger,)
            ).fetchone()
        )
        return int(row[0]) if row else None

    async def stuck(self, created_before: float, limit: int) -> list[TransferRecord]:
        """See TransferStore.stuck."""

        def run(db: Conn) -> list[TransferRecord]:
            rows = db.execute(
                f"SELECT {_COLS} FROM {_FROM} WHERE t.state NOT IN (?,?,?)"  # noqa: S608
                " AND t.created_at < ? ORDER BY t.seq LIMIT ?",
                [*_TERMINAL, created_before, limit],
            ).fetchall()
            return _records(rows, self._unreadable)

        return await self._db.read(run)

    async def failed_since(self, updated_after: float) -> list[TransferRecord]:
        """See TransferStore.failed_since."""

        def run(db: Conn) -> list[TransferRecord]:
            rows = db.execute(
                f"SELECT {_COLS} FROM {_FROM} WHERE t.state = ? AND t.updated_at > ?"  # noqa: S608
                " ORDER BY t.seq",
                (int(TransferState.FAILED), updated_after),
            ).fetchall()
            return _records(rows, self._unreadable)

        return await self._db.read(run)

    async def record_misbehaviour(self, incident: Misbehaviour) -> None:
        """See TransferStore.record_misbehaviour."""
        m = incident
        await self._db.write(
            lambda db: db.execute(
                "INSERT INTO misbehaviour (member, endpoint, kind, subject, detail,"
                " expected_digest, signed_digest, signature, at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    m.member,
                    m.endpoint,
                    m.kind,
                    m.subject,
                    m.detail,
                    m.expected_digest,
                    m.signed_digest,
                    m.signature,
                    m.at,
                ),
            )
        )

    async def misbehaviour(self, limit: int, member: bytes | None = None) -> list[Misbehaviour]:
        """See TransferStore.misbehaviour (``member``: only that member's incidents)."""

        def run(db: Conn) -> list[Any]:
            cols = (
                "SELECT member, endpoint, kind, subject, detail, expected_digest, signed_digest,"
                " signature, at FROM misbehaviour"
            )
            if member is None:
                return db.execute(cols + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            return db.execute(
                cols + " WHERE member = ? ORDER BY id DESC LIMIT ?", (member, limit)
            ).fetchall()

        rows = await self._db.read(run)
        return [
            Misbehaviour(bytes(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), bytes(r[5]),
                         bytes(r[6]), bytes(r[7]), float(r[8]))
            for r in rows
        ]  # fmt: skip

    # ---- flow limits (ADR 0010)
    async def set_wait(self, transfer_id: bytes, reason: WaitReason, not_before: float) -> None:
        """See TransferStore.set_wait."""

        def run(db: Conn) -> None:
            if reason is WaitReason.NONE:
                db.execute("DELETE FROM flow_waits WHERE transfer_id = ?", (transfer_id,))
            else:
                db.execute(
                    "INSERT INTO flow_waits (transfer_id, reason, not_before) VALUES (?,?,?)"
                    " ON CONFLICT (transfer_id) DO UPDATE SET reason = excluded.reason,"
                    " not_before = excluded.not_before",
                    (transfer_id, int(reason), not_before),
                )

        await self._db.write(run)

    async def lane_backlog(self, transfer_id: bytes, states: Sequence[TransferState]) -> int:
        """See TransferStore.lane_backlog: one point read, then the lane's last read and
        what was created since (:class:`~bridge.coordinator.lane_backlogs.LaneBacklogs`),
        or one read of the lane's rows in ``states`` when that is older than a second
        (review helper-117 #2: not one read of every earlier row per question). Never less
        than a read now; more by transfers that left ``states`` since that read."""
        if not states:
            return 0

        def position(db: Conn) -> Any:
            return db.execute(
                "SELECT seq, security, source_ledger, target_ledger"
                " FROM transfers WHERE transfer_id = ?",
                (transfer_id,),
            ).fetchone()

        me = await self._db.read(position)
        if me is None or me[3] is None:
            return 0  # none, or no lane: its request is unreadable
        seq, lane = int(me[0]), (str(me[1]), str(me[2]), str(me[3]))
        wanted = tuple(sorted(int(s) for s in states))
        known = self._backlogs.ahead(lane, wanted, seq)
        if known is not None:
            return known
        epoch = self._backlogs.begin(lane, wanted)  # before the read's snapshot
        marks = ",".join("?" * len(wanted))

        def lane_rows(db: Conn) -> tuple[int, list[tuple[int, int]]]:
            # The last sequence first, then the rows up to it: the read holds exactly
            # the rows committed by then (one writer commits in sequence order).
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM transfers").fetchone()
            rows = db.execute(
                "SELECT seq, transfer_id, request FROM transfers"  # noqa: S608
                " WHERE security = ? AND source_ledger = ? AND target_ledger = ?"
                f" AND state IN ({marks}) AND seq <= ? ORDER BY seq",
                [*lane, *wanted, int(last)],
            ).fetchall()
            # Amounts are read in Python: JSON integers beyond 2**63 lose precision in SQL.
            return int(last), [(int(r[0]), self._amount_of(r[1], r[2])) for r in rows]

        try:
            last, units = await self._db.read(lane_rows)
        except BaseException:
            self._backlogs.abandon(lane, wanted)
            raise
        self._backlogs.keep(lane, wanted, epoch, last, units)
        return sum(u for s, u in units if s < seq)

    async def queued_on_lane(
        self, security: str, source: str, target: str
    ) -> tuple[int, int, float | None]:
        """See TransferStore.queued_on_lane."""

        def run(db: Conn) -> list[Any]:
            return db.execute(
                "SELECT transfer_id, request, created_at FROM transfers"
                " WHERE state = ? AND security = ?"
                " AND source_ledger = ? AND target_ledger = ?"
                " ORDER BY seq",
                (int(TransferState.QUEUED), security, source, target),
            ).fetchall()

        rows = await self._db.read(run)
        units = sum(self._amount_of(r[0], r[1]) for r in rows)
        return len(rows), units, (float(rows[0][2]) if rows else None)

    def _amount_of(self, transfer_id: Any, request: Any) -> int:
        """The amount a stored ``request`` column asks for; 0 for an unreadable one,
        reported (UnreadableRecord): its transfer takes no step, so it takes no lane
        capacity, and it must not stop the lane's other transfers."""
        try:
            return int(_request_of(str(request)).amount)
        except _ROW_FAULTS as exc:
            self._unreadable.report(UnreadableRecord(bytes(transfer_id), exc))
            return 0

    # ---- observability (ADR 0016)
    async def count_by_state(self) -> dict[TransferState, int]:
        """How many transfers are in each state (states with none are absent); one indexed
        query, for the ``kstb_transfers`` gauge. Also the store's readiness probe."""

        def run(db: Conn) -> list[Any]:
            return list(
                db.execute("SELECT state, COUNT(*) FROM transfers GROUP BY state").fetchall()
            )

        rows = await self._db.read(run)
        known = {int(s) for s in TransferState}
        # A state this release does not know (an unreadable row, UnreadableRecord) is not
        # counted here: it must not fail the readiness probe or the other states' gauges.
        return {TransferState(int(state)): int(n) for state, n in rows if int(state) in known}


class SqliteTransferStore(SqlTransferStore):
    """The TransferStore on a SQLite file (WAL, fsync per commit): the embedded default."""
