"""The coordinator's gRPC services: TransferService (brokerages), LedgerEventSink (relayers)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from bridge.aio import wait_event
from bridge.config import NetworkConfig
from bridge.coordinator.admission import Admitted
from bridge.coordinator.batches import (
    BatchRecord,
    BatchRunner,
    BatchStore,
    ItemError,
    ItemResult,
    UnreadableUpdate,
    fingerprint,
    run_items,
)
from bridge.coordinator.changes import Changes, WatchReads
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.records import TransferRecord, TransferUpdate
from bridge.coordinator.requests import is_valid_key, validate_batch_id, validate_submit
from bridge.coordinator.store import (
    ManyRecords,
    TransferStore,
    UnreadableRecord,
    UnreadableReporter,
)
from bridge.coordinator.stream_quota import StreamQuota
from bridge.coordinator.wording import LOCKING
from bridge.domain.errors import (
    BridgeError,
    InvalidInput,
    NotFound,
    Unavailable,
    refused_on_input,
)
from bridge.domain.transfer import TransferState
from bridge.rpc.audit import AuditLog, AuditRecord
from bridge.rpc.audit import now as audit_now
from bridge.rpc.authz import current_principal
from bridge.rpc.convert import event_from_pb, height_from_pb, instruction_from_pb
from bridge.rpc.errors import Context, grpc_errors, grpc_stream_errors, status_details, status_for
from bridge.rpc.roles import BROKERAGE, Principal
from bridge.v1 import events_pb2, events_pb2_grpc, transfer_pb2, transfer_pb2_grpc

MAX_PAGE = 500
DEFAULT_MAX_BATCH_ITEMS = 1000
"""Items per SubmitTransfers unless the coordinator's ``max_batch_items`` says otherwise."""
DEFAULT_MAX_BATCH_WATCHES = 4
"""Concurrent WatchBatch streams per caller unless ``max_batch_watches`` says otherwise."""
DEFAULT_MAX_TRANSFER_WATCHES = 256
"""Concurrent WatchTransfer streams per caller unless ``max_transfer_watches`` says so."""
DEFAULT_BATCH_ADMISSION_PARALLEL = 16
"""Items of one SubmitTransfers checked at once unless ``batch_admission_parallel`` says so."""
DEFAULT_MAX_RUNNING_BATCHES = 8
"""Batches of one source ledger running at once unless ``max_running_batches`` says so."""
SUBMIT_TRANSFERS_ITEM = "/bridge.v1.TransferService/SubmitTransfers#item"
"""The audit log's method of a batch item's own authorisation decision (with its index)."""
AUDIT_INDEXES = 32
"""Item indexes a batch's one denied audit record names per reason (the counts name all)."""
ITEM_MESSAGE_MAX = 512
"""Longest item error message recorded and answered (metadata values are capped alike)."""
WATCH_PAGE_ITEMS = 100
"""Items whose history one WatchBatch store read covers (one page)."""
WATCH_PAGE_ROWS = 500
"""Most history rows one WatchBatch store read returns."""
WATCH_IDLE_S = 5.0
"""How long after its last read of every unfinished item a WatchBatch reads them all again
(between, it reads the items announced as changed): an update that was never announced is
reported within this plus one pass (and the client's own reading of the stream)."""
WATCH_GROUP_MAX = WATCH_PAGE_ROWS
"""Most item reports one WatchBatch message carries (``max_items_per_message`` above it is
taken as this): a page's reports can go in one message."""
WATCH_GROUP_BYTES = 1 << 20
"""Most serialized bytes of reports one grouped WatchBatch message carries (a report alone
may exceed it), a quarter of gRPC's default 4 MiB receive limit."""


@dataclass(frozen=True, slots=True)
class _Report:
    """One WatchBatch report, turned into protobuf only as its message is built: an update
    of an item's transfer (with the record it is sent with), or the item's refusal."""

    index: int
    key: str
    update: TransferUpdate | None = None
    record: TransferRecord | None = None
    error: ItemError | None = None

    def fields(self) -> dict[str, Any]:
        """The report as the fields of a ``WatchBatchItem`` (or of a one-report message)."""
        out: dict[str, Any] = {"index": self.index, "idempotency_key": self.key}
        if self.update is not None and self.record is not None:
            out["update"] = _update_pb(self.update, self.record)
        if self.error is not None:
            out["error"] = _item_error_to_pb(self.error)
        return out


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


SOURCE_SIDE_TEXTS = {
    TransferState.SUBMITTED: LOCKING,
    TransferState.FAILED: "the source ledger did not lock the units; nothing moved",
}
"""What a brokerage of the target ledger reads as the reason (and an update's detail) of a
transfer in these states: before the lock, the reason is about the sender and the source
ledger only (a refusal such as ``HolderFrozen`` is the sender's standing there)."""


def viewer_ledger() -> str | None:
    """The ledger of the brokerage making the current call; None for every other role,
    which reads a transfer whole (the depository, the bridge operator)."""
    caller = current_principal()
    return caller.scope if caller.role == BROKERAGE else None


def _target_side(r: TransferRecord, viewer: str | None) -> bool:
    return viewer is not None and viewer != r.request.source_ledger


def transfer_to_pb(r: TransferRecord, viewer: str | None = None) -> transfer_pb2.Transfer:
    """A transfer record as the API message, as ``viewer`` may read it: a brokerage's
    ledger (:func:`viewer_ledger`), or None for the whole record.

    SECURITY (review helper-140 #5): a brokerage of the target ledger reads the transfer
    without the source brokerage's idempotency key (its own order reference) and,
    while ``SUBMITTED`` or ``FAILED``, without the source side's reason
    (:data:`SOURCE_SIDE_TEXTS`; a ``FAILED`` reason about the target, such as its inbound
    capacity, is replaced too, the fixed words still true); the source's brokerage, the
    depository and the operator read everything."""
    target_side = _target_side(r, viewer)
    reason = r.reason
    if target_side:
        reason = SOURCE_SIDE_TEXTS.get(r.state, reason)
    return transfer_pb2.Transfer(
        transfer_id="0x" + r.transfer_id.hex(),
        idempotency_key="" if target_side else r.request.idempotency_key,
        security_id=r.request.security,
        source_ledger=r.request.source_ledger,
        target_ledger=r.request.target_ledger,
        sender=r.request.sender,
        recipient=r.request.recipient,
        amount=str(r.request.amount),
        state=int(r.state),  # type: ignore[arg-type]
        reason=reason,
        created_at=_ts(r.created_at),
        updated_at=_ts(r.updated_at),
        deadline=_ts(float(r.terms.deadline)),
        transactions=dict(r.transactions),
        parked=r.parked_reason != 0,
        parked_reason=r.parked_reason,
        wait_reason=int(r.wait_reason),  # type: ignore[arg-type]
        not_before=_ts(r.not_before) if r.not_before else None,
    )


def parse_transfer_id(text: str) -> bytes:
    """Parse a 0x-prefixed 32-byte hex transfer id."""
    body = text.removeprefix("0x")
    if len(body) != 64:
        raise InvalidInput("transfer_id must be 0x followed by 64 hex digits")
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise InvalidInput("transfer_id must be 0x followed by 64 hex digits") from None


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    """The brokerage API; validates everything before anything is recorded."""

    def __init__(
        self,
        network: NetworkConfig,
        coordinator: Coordinator,
        store: TransferStore,
        batches: BatchStore | None = None,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        max_batch_watches: int = DEFAULT_MAX_BATCH_WATCHES,
        max_running_batches: int = DEFAULT_MAX_RUNNING_BATCHES,
        audit: AuditLog | None = None,
        max_transfer_watches: int = DEFAULT_MAX_TRANSFER_WATCHES,
        batch_admission_parallel: int = DEFAULT_BATCH_ADMISSION_PARALLEL,
    ):
        self._network = network
        self._coordinator = coordinator
        self._store = store
        # ---- batch API (ADR 0023); None: SubmitTransfers UNAVAILABLE
        self._batches = (
            BatchRunner(batches, max_running=max_running_batches) if batches is not None else None
        )
        self._max_batch_items = max_batch_items
        self._admission_parallel = batch_admission_parallel
        # SECURITY: bound what one caller (organisation and role, whatever its number of
        # certificates) holds open: every stream costs a task and periodic store reads.
        self._batch_watches = StreamQuota("WatchBatch", "max_batch_watches", max_batch_watches)
        self._transfer_watches = StreamQuota(
            "WatchTransfer", "max_transfer_watches", max_transfer_watches
        )
        self._audit = audit  # ---- batchfix (review s18 F10): per-item denials audited

    @grpc_errors
    async def SubmitTransfer(
        self, request: transfer_pb2.SubmitTransferRequest, context: Context
    ) -> transfer_pb2.SubmitTransferResponse:
        """Validate, pre-check, record and start a transfer (idempotent per key)."""
        req = validate_submit(self._network, request)
        record, created = await self._coordinator.submit(req, instruction_from_pb(request))
        return transfer_pb2.SubmitTransferResponse(transfer=transfer_to_pb(record), created=created)

    @grpc_errors
    async def GetTransfer(
        self, request: transfer_pb2.GetTransferRequest, context: Context
    ) -> transfer_pb2.Transfer:
        """One transfer, with why it waits if it is not terminal."""
        record = await self._coordinator.get(parse_transfer_id(request.transfer_id))
        message = transfer_to_pb(record, viewer_ledger())
        message.halted_on.extend(await self._coordinator.halted_on(record))  # ---- depository halt
        return message

    @grpc_errors
    async def ListTransfers(
        self, request: transfer_pb2.ListTransfersRequest, context: Context
    ) -> transfer_pb2.ListTransfersResponse:
        """Transfers in submission order, filtered and paginated."""
        size = request.page_size or 100
        if size > MAX_PAGE:
            raise InvalidInput(f"page_size must be at most {MAX_PAGE}")
        try:
            after = int(request.page_token) if request.page_token else 0
        except ValueError:
            raise InvalidInput("page_token is not a token this server issued") from None
        try:
            state = TransferState(request.state) if request.state else None
        except ValueError:
            raise InvalidInput(f"unknown state filter {request.state}") from None
        # SECURITY: a brokerage lists only transfers of its own ledger (source or target).
        scope = viewer_ledger()
        records, cursor = await self._store.list_transfers(
            state, request.security_id or None, size, after, ledger=scope
        )
        return transfer_pb2.ListTransfersResponse(
            transfers=[transfer_to_pb(r, scope) for r in records],
            next_page_token=str(cursor) if cursor else "",
        )

    @grpc_stream_errors
    async def WatchTransfer(
        self, request: transfer_pb2.WatchTransferRequest, context: Context
    ) -> AsyncIterator[transfer_pb2.TransferUpdate]:
        """Stream every state change after ``after_sequence`` (0: from the first) until the
        terminal one. Sequences are per-transfer history rows taken under the transfer's row
        lock, so a watch resumed on another coordinator sees no gap and no duplicate. A
        caller (organisation and role) holding ``max_transfer_watches`` streams already gets
        RESOURCE_EXHAUSTED (stop 19; review s18: WatchTransfer had no per-caller bound)."""
        tid = parse_transfer_id(request.transfer_id)
        caller = current_principal()
        viewer = viewer_ledger()
        with self._transfer_watches.hold((caller.org, caller.role)):
            async for update in self._coordinator.watch(tid):
                if update.sequence > request.after_sequence:
                    yield _update_pb(update, await self._coordinator.get(tid), viewer)

    # ---- batch API (ADR 0023)
    @property
    def batches(self) -> BatchRunner | None:
        """What runs this servicer's batches (None: it serves no batch API): also what the
        coordinator's pruning loop prunes through (``BatchRunner.prune`` keeps the
        reservations of the batches running here)."""
        return self._batches

    def _batch_runner(self) -> BatchRunner:
        if self._batches is None:
            raise Unavailable("this coordinator does not serve the batch API")
        return self._batches

    @grpc_errors
    async def SubmitTransfers(
        self, request: transfer_pb2.SubmitTransfersRequest, context: Context
    ) -> transfer_pb2.SubmitTransfersResponse:
        """Submit every item as SubmitTransfer would, each with its own result, and record
        the batch before answering. A malformed batch (id, ledger, 0 or more than
        ``max_batch_items`` items) is refused as a whole, nothing submitted; a recorded
        batch id answers its recorded results (same request; RETRYABLE items re-evaluated)
        or ALREADY_EXISTS (other request, nothing submitted). Concurrent copies of one
        batch run its items once (BatchRunner)."""
        runner = self._batch_runner()
        validate_batch_id(request.batch_id)
        if request.source_ledger not in self._network.ledgers:
            raise NotFound(f"source_ledger {request.source_ledger!r} is not a connected ledger")
        count = len(request.items)
        if count == 0:
            raise InvalidInput("a batch needs at least one item")
        if count > self._max_batch_items:
            raise InvalidInput(
                f"a batch may have at most {self._max_batch_items} items, this one has {count}"
            )
        # SECURITY (review s18 F4): every item's key is checked before anything is stored,
        # so a batch record holds only well-formed keys (1-128 printable ASCII), whatever
        # the item's fate; a malformed key refuses the whole batch, nothing submitted.
        for index, item in enumerate(request.items):
            if not is_valid_key(item.idempotency_key):
                raise InvalidInput(
                    f"items[{index}].idempotency_key must be 1-128 printable ASCII characters;"
                    " nothing of the batch was submitted"
                )
        fp = fingerprint(request.SerializeToString(deterministic=True))

        async def check_one(item: transfer_pb2.SubmitTransferRequest) -> Admitted:
            # SECURITY (the batch quota): a refusal before the instruction is authenticated
            # (a malformed field, an unregistered instructor, a bad signature) is of the
            # caller's own input; the admission marks the rest of those (deadline, keys and
            # transfer ids already used). Only marked refusals count against the ledger's
            # refused items per day.
            try:
                req = validate_submit(self._network, item)
                instruction = instruction_from_pb(item)
                auth = self._coordinator.authorise_submit(req, instruction)
            except BridgeError as exc:
                raise refused_on_input(exc) from None
            return await self._coordinator.check_submit(req, instruction, auth)

        async def record_many(
            admitted: Sequence[Admitted],
        ) -> list[tuple[bytes, bool] | BridgeError]:
            return [
                o if isinstance(o, BridgeError) else (o[0].transfer_id, o[1])
                for o in await self._coordinator.record_submits(admitted)
            ]

        caller = current_principal()
        peer = context.peer() or ""

        async def run(indexes: Collection[int] | None) -> tuple[ItemResult, ...]:
            results = await run_items(
                request.source_ledger,
                request.items,
                check_one,
                _item_error,
                indexes,
                record_many=record_many,
                parallel=self._admission_parallel,
            )
            self._audit_denied_items(caller, peer, request.batch_id, results)
            return results

        # SECURITY: batch ids are scoped per source ledger, which rules.py holds to the
        # caller's own: a brokerage can neither read nor block another's batch. The id is
        # reserved before any item runs: another request under a taken id submits nothing.
        recorded, created = await runner.submit(
            request.source_ledger, request.batch_id, fp, run, time.time(), items=count
        )
        return await self._batch_to_pb(recorded, created=created)

    def _audit_denied_items(
        self, caller: Principal, peer: str, batch_id: str, results: Sequence[ItemResult]
    ) -> None:
        """SECURITY (review s18 F10): items refused PERMISSION_DENIED (naming another
        brokerage's ledger, an unregistered instructor, a forged instruction) are
        authorisation decisions like a refused call, audited in the same log as the call's:
        ONE denied record per call (review helper-106 M2: one per item let a caller write
        thousands of audit lines per call) that names, per reason (a closed set), how many
        items, their indexes (the first :data:`AUDIT_INDEXES`) and the first one's message,
        so a forged instruction is not hidden behind a harmless first item (review
        helper-109)."""
        if self._audit is None:
            return
        by_reason: dict[str, list[ItemResult]] = {}
        for r in results:
            if r.error is not None and r.error.code == "PERMISSION_DENIED":
                by_reason.setdefault(r.error.reason, []).append(r)
        if not by_reason:
            return
        parts = []
        for reason, denied in sorted(by_reason.items()):
            first = denied[0]
            assert first.error is not None
            shown = ", ".join(str(r.index) for r in denied[:AUDIT_INDEXES])
            more = (
                "" if len(denied) <= AUDIT_INDEXES else f" and {len(denied) - AUDIT_INDEXES} more"
            )
            parts.append(
                f"{reason}: {len(denied)} (items {shown}{more}; item {first.index}:"
                f" {first.error.message})"
            )
        count = sum(len(d) for d in by_reason.values())
        first_index = min(d[0].index for d in by_reason.values())
        self._audit.record(
            AuditRecord(
                at=audit_now(),
                org=caller.org,
                role=caller.role_text,
                cn=caller.common_name,
                fingerprint=caller.fingerprint,
                peer=peer,
                method=f"{SUBMIT_TRANSFERS_ITEM}[{first_index}]",
                transfer_id="",
                allowed=False,
                reason=f"batch {batch_id!r}: {count} items denied; " + "; ".join(parts),
            )
        )

    async def _batch_to_pb(
        self, batch: BatchRecord, *, created: bool
    ) -> transfer_pb2.SubmitTransfersResponse:
        out = transfer_pb2.SubmitTransfersResponse(batch_id=batch.batch_id, created=created)
        # Review s18 F4: the items' transfers in one store read per page, not one per item
        # (a replayed batch of thousands must not queue thousands of reads on the store).
        tids = [r.transfer_id for r in batch.results if r.transfer_id is not None]
        read = await self._store.get_many(tids)
        for r in batch.results:
            message = transfer_pb2.BatchItemResult(
                index=r.index,
                idempotency_key=r.idempotency_key,
                outcome=int(r.outcome),  # type: ignore[arg-type]
            )
            if r.error is not None:
                message.error.CopyFrom(_item_error_to_pb(r.error))
            if r.transfer_id is not None:
                record = read.found.get(r.transfer_id)
                unreadable = read.unreadable.get(r.transfer_id)
                if record is not None:
                    message.transfer.CopyFrom(transfer_to_pb(record))
                elif unreadable is not None:
                    # A recorded item whose row cannot be read now: its outcome stands, its
                    # transfer is unset, and the error (INTERNAL, its public text) says why;
                    # the batch's other items are answered (issue 14: never all-or-nothing).
                    # (ItemResult never holds both a transfer and an error; a damaged batch
                    # row that does keeps its own error.)
                    if r.error is None:
                        message.error.CopyFrom(_item_error_to_pb(_unreadable_error(unreadable)))
                else:
                    raise NotFound(f"transfer 0x{r.transfer_id.hex()} does not exist")
            out.results.append(message)
        return out

    @grpc_stream_errors
    async def WatchBatch(
        self, request: transfer_pb2.WatchBatchRequest, context: Context
    ) -> AsyncIterator[transfer_pb2.WatchBatchResponse]:
        """Stream every item of a recorded batch: a refused or retryable item once (while
        its ``after_sequence`` is 0), each transfer's updates after its ``after_sequence``
        until terminal (as WatchTransfer); ends when every item has ended.

        GUARANTEES (batchfix): one item report per message, or with
        ``max_items_per_message`` above 1 up to that many (at most ``WATCH_GROUP_MAX``) in
        ``items``, never holding a report back for a later page; the reports and their order
        are the same either way. The store is read in pages (``WATCH_PAGE_ITEMS`` transfers,
        at most ``WATCH_PAGE_ROWS`` rows, by sequence) only when the client has taken the
        previous page, so a slow reader holds no queue; a wake reads only the items announced
        as changed since the last pass, and all unfinished items at the first pass and
        ``WATCH_IDLE_S`` after the end of the last such pass
        (:class:`~bridge.coordinator.changes.WatchReads`); the stream keeps
        one small cursor per unfinished item, not the batch; a caller holding
        ``max_batch_watches`` streams already gets RESOURCE_EXHAUSTED."""
        caller = current_principal()
        group = min(max(request.max_items_per_message, 1), WATCH_GROUP_MAX)
        with self._batch_watches.hold((caller.org, caller.role)):
            # The page generator is closed here, on any exit (its finally unsubscribes),
            # not later by the event loop's finaliser.
            async with contextlib.aclosing(self._watch_batch(request)) as pages:
                async for reports in pages:
                    for message in _watch_messages(reports, group):
                        yield message

    async def _watch_batch(
        self, request: transfer_pb2.WatchBatchRequest
    ) -> AsyncGenerator[list[_Report], None]:
        """The reports of ``request``'s batch: the refusals in one list, then one list per
        store page, each list non-empty, until every item has ended."""
        runner = self._batch_runner()
        batch = await runner.store.get(request.source_ledger, request.batch_id)
        if batch is None:
            raise NotFound(f"no batch {request.batch_id!r} from ledger {request.source_ledger!r}")
        if not batch.results:
            raise Unavailable(
                f"batch {request.batch_id!r} is being submitted; watch it once"
                " SubmitTransfers has answered (or replay the batch)"
            )
        after = list(request.after_sequence)
        if len(after) > len(batch.results):
            raise InvalidInput(
                f"after_sequence has {len(after)} entries; the batch has {len(batch.results)}"
            )
        after += [0] * (len(batch.results) - len(after))
        # Per unfinished transfer: [index, key, read cursor, last sequence sent].
        cursors: dict[bytes, list[Any]] = {}
        refused: list[_Report] = []
        for r in batch.results:
            if r.error is not None and after[r.index] == 0:
                refused.append(_Report(r.index, r.idempotency_key, error=r.error))
            if r.transfer_id is not None:
                cursors[r.transfer_id] = [r.index, r.idempotency_key, 0, after[r.index]]
        del batch, after  # SECURITY: the stream keeps the cursors only, not the batch
        if refused:  # already held whole; _watch_messages bounds each message
            yield refused
        del refused
        changed = Changes()
        self._coordinator.subscribe(list(cursors), changed)
        wakes = WatchReads(changed, WATCH_IDLE_S)
        try:
            while cursors:
                progressed = False
                # The items announced since the last pass (all of them at the first pass
                # and WATCH_IDLE_S after the last such pass), in item order: a wake costs
                # what moved, not the batch (helper-117 #5).
                order = sorted(wakes.due(cursors), key=lambda t: cursors[t][0])
                for start in range(0, len(order), WATCH_PAGE_ITEMS):
                    page = [t for t in order[start : start + WATCH_PAGE_ITEMS] if t in cursors]
                    rows = await self._batches_store().updates(
                        [(t, cursors[t][2]) for t in page], WATCH_PAGE_ROWS
                    )
                    if len(rows) >= WATCH_PAGE_ROWS:
                        wakes.again(page)  # the page's rows past the limit: the next pass
                    # The transfers of the updates to send, in one store read per page (not
                    # one per update), read after the updates: each is at least as recent
                    # as every update of its transfer in the page.
                    read = await self._records_of(
                        [u for u in rows if isinstance(u, TransferUpdate) and _to_send(cursors, u)]
                    )
                    records = read.found
                    reports: list[_Report] = []
                    for update in rows:
                        entry = cursors.get(update.transfer_id)
                        if entry is None or update.sequence <= entry[2]:
                            continue
                        progressed = True
                        # Its record, or a history row the client has not got, cannot be
                        # read now: reported once (INTERNAL, no update) and no longer
                        # followed by this stream, whose other items go on; a later watch
                        # resumes it from the client's after_sequence once the operator has
                        # repaired the row. A row the client already has is passed over.
                        if isinstance(update, UnreadableUpdate):
                            if update.sequence <= entry[3]:
                                entry[2] = update.sequence
                            else:
                                reports.append(self._drop(cursors, update.error, changed))
                            continue
                        unreadable = read.unreadable.get(update.transfer_id)
                        if unreadable is not None:
                            reports.append(self._drop(cursors, unreadable, changed))
                            continue
                        entry[2] = update.sequence
                        if update.sequence > entry[3]:
                            entry[3] = update.sequence
                            record = records[update.transfer_id]
                            reports.append(_Report(entry[0], entry[1], update, record))
                        if update.state.terminal:
                            del cursors[update.transfer_id]
                            self._coordinator.unsubscribe([update.transfer_id], changed)
                    if reports:
                        yield reports
                wakes.passed()
                if not progressed:
                    # Review helper-116 M1: an unreadable item with nothing new to send
                    # (the client has its last update, or the row broke after it was sent)
                    # is never read above, and its driver no longer moves it: without this
                    # the stream would wait for it forever.
                    reports = await self._unreadable_reports(cursors, changed)
                    if reports:
                        yield reports
                        continue
                    # The timeout (the next sweep) bounds how late an update that was never
                    # announced is read.
                    await wait_event(changed.event, wakes.wait_s())
        finally:
            self._coordinator.unsubscribe(list(cursors), changed)

    async def _unreadable_reports(
        self, cursors: dict[bytes, list[Any]], changed: Changes
    ) -> list[_Report]:
        """The reports of the watched items whose rows the store found unreadable (and has
        not read again since), confirmed by one read of those rows only; each is dropped
        from ``cursors``, as when its record is read with an update. Reads nothing while
        the store knows of no unreadable row."""
        store = self._store
        if not isinstance(store, UnreadableReporter):
            return []
        suspects = store.unreadable.among(cursors)
        if not suspects:
            return []
        read = await store.get_many(suspects)
        return [
            self._drop(cursors, exc, changed)
            for tid in suspects
            if (exc := read.unreadable.get(tid)) is not None  # else repaired meanwhile
        ]

    def _drop(
        self, cursors: dict[bytes, list[Any]], exc: UnreadableRecord, changed: Changes
    ) -> _Report:
        """The one report of a watched item that cannot be read (INTERNAL, no update); the
        stream follows it no more."""
        index, key, _, _ = cursors.pop(exc.transfer_id)
        self._coordinator.unsubscribe([exc.transfer_id], changed)
        return _Report(index, key, error=_unreadable_error(exc))

    def _batches_store(self) -> BatchStore:
        return self._batch_runner().store

    async def _records_of(self, updates: Sequence[TransferUpdate]) -> ManyRecords:
        """The current record of every transfer ``updates`` name, in one store read, those
        that cannot be read apart (NotFound, as a single read says, for one the store does
        not hold)."""
        tids = list(dict.fromkeys(u.transfer_id for u in updates))
        read = await self._store.get_many(tids) if tids else ManyRecords({}, {})
        for tid in tids:
            if tid not in read.found and tid not in read.unreadable:
                raise NotFound(f"transfer 0x{tid.hex()} does not exist")
        return read


def _watch_messages(
    reports: Sequence[_Report], group: int
) -> Iterator[transfer_pb2.WatchBatchResponse]:
    """``reports`` as WatchBatch messages, in order, each built as it is sent: one per
    message in the message's own fields when ``group`` is 1, else in ``items``, at most
    ``group`` reports and (unless one report is larger alone) ``WATCH_GROUP_BYTES`` bytes
    of them per message, never an empty message."""
    if group == 1:
        for report in reports:
            yield transfer_pb2.WatchBatchResponse(**report.fields())
        return
    message = transfer_pb2.WatchBatchResponse()
    size = 0
    for report in reports:
        fields = report.fields()
        item = message.items.add(**fields)
        item_size = item.ByteSize() + 8  # with the field's tag and length
        if len(message.items) > 1 and (
            len(message.items) > group or size + item_size > WATCH_GROUP_BYTES
        ):
            del message.items[-1]
            yield message
            message, size = transfer_pb2.WatchBatchResponse(), 0
            message.items.add(**fields)
        size += item_size
    if message.items:
        yield message


def _to_send(cursors: Mapping[bytes, list[Any]], u: TransferUpdate) -> bool:
    """Whether WatchBatch will send ``u``: its transfer is still watched and ``u`` is past
    both what was read and what the client already has (a resumed stream skips the rest)."""
    entry = cursors.get(u.transfer_id)
    return entry is not None and u.sequence > max(entry[2], entry[3])


def _update_pb(
    u: TransferUpdate, record: TransferRecord, viewer: str | None = None
) -> transfer_pb2.TransferUpdate:
    """One update of ``record``'s transfer as the API sends it, with the transfer as it is,
    both as ``viewer`` may read them (:func:`transfer_to_pb`; an update's detail is the
    reason its state was entered with)."""
    detail = u.detail
    if _target_side(record, viewer):
        detail = SOURCE_SIDE_TEXTS.get(u.state, detail)
    return transfer_pb2.TransferUpdate(
        sequence=u.sequence,
        state=int(u.state),  # type: ignore[arg-type]
        detail=detail,
        at=_ts(u.at),
        transfer=transfer_to_pb(record, viewer),
    )


def _item_error(exc: BridgeError) -> ItemError:
    """The structured error SubmitTransfer would answer ``exc`` with (ADR 0015)."""
    status = status_details(exc)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
    return ItemError(
        code=status_for(exc).name,
        reason=info.reason,
        # Review s18 F4: what a batch row keeps of a message is bounded.
        message=status.message[:ITEM_MESSAGE_MAX],
        metadata=dict(info.metadata),
    )


def _unreadable_error(exc: UnreadableRecord) -> ItemError:
    """The error of a recorded item whose transfer's record cannot be read now: INTERNAL,
    its public text (the transfer id only), and metadata ``recorded`` "true" and
    ``retryable`` "false" (review helper-116 M3: INTERNAL alone says retryable, which a
    batch client reads as "nothing recorded, submit again"; this transfer exists)."""
    error = _item_error(exc)
    return dataclasses.replace(
        error, metadata={**error.metadata, "retryable": "false", "recorded": "true"}
    )


def _item_error_to_pb(e: ItemError) -> transfer_pb2.BatchItemError:
    return transfer_pb2.BatchItemError(
        code=e.code, reason=e.reason, message=e.message, metadata=dict(e.metadata)
    )


class EventSinkServicer(events_pb2_grpc.LedgerEventSinkServicer):
    """Accepts relayer event batches; returning OK means they are durably recorded."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @grpc_errors
    async def DeliverEvents(
        self, request: events_pb2.DeliverEventsRequest, context: Context
    ) -> events_pb2.DeliverEventsResponse:
        """Record and act on a batch of finalized events (duplicates are ignored)."""
        events = [event_from_pb(request.ledger_id, e) for e in request.events]
        scanned = height_from_pb(request.scanned_height, "scanned height")
        fresh = await self._coordinator.on_events(request.ledger_id, events, scanned)
        return events_pb2.DeliverEventsResponse(accepted=fresh)
