"""The coordinator's gRPC services: TransferService (brokerages), LedgerEventSink (relayers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from bridge.config import NetworkConfig
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.records import TransferRecord, TransferUpdate
from bridge.coordinator.requests import validate_submit
from bridge.coordinator.store import TransferStore
from bridge.domain.errors import InvalidInput
from bridge.domain.transfer import TransferState
from bridge.rpc.authz import current_principal
from bridge.rpc.convert import event_from_pb, instruction_from_pb
from bridge.rpc.errors import Context, grpc_errors, grpc_stream_errors
from bridge.rpc.roles import BROKERAGE
from bridge.v1 import events_pb2, events_pb2_grpc, transfer_pb2, transfer_pb2_grpc

MAX_PAGE = 500


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def transfer_to_pb(r: TransferRecord) -> transfer_pb2.Transfer:
    """A transfer record as the API message."""
    return transfer_pb2.Transfer(
        transfer_id="0x" + r.transfer_id.hex(),
        idempotency_key=r.request.idempotency_key,
        security_id=r.request.security,
        source_ledger=r.request.source_ledger,
        target_ledger=r.request.target_ledger,
        sender=r.request.sender,
        recipient=r.request.recipient,
        amount=str(r.request.amount),
        state=int(r.state),  # type: ignore[arg-type]
        reason=r.reason,
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

    def __init__(self, network: NetworkConfig, coordinator: Coordinator, store: TransferStore):
        self._network = network
        self._coordinator = coordinator
        self._store = store

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
        message = transfer_to_pb(record)
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
        caller = current_principal()
        # SECURITY: a brokerage lists only transfers of its own ledger (source or target).
        scope = caller.scope if caller.role == BROKERAGE else None
        records, cursor = await self._store.list_transfers(
            state, request.security_id or None, size, after, ledger=scope
        )
        return transfer_pb2.ListTransfersResponse(
            transfers=[transfer_to_pb(r) for r in records],
            next_page_token=str(cursor) if cursor else "",
        )

    @grpc_stream_errors
    async def WatchTransfer(
        self, request: transfer_pb2.WatchTransferRequest, context: Context
    ) -> AsyncIterator[transfer_pb2.TransferUpdate]:
        """Stream every state change after ``after_sequence`` (0: from the first) until the
        terminal one. Sequences are per-transfer history rows taken under the transfer's row
        lock, so a watch resumed on another coordinator sees no gap and no duplicate."""
        tid = parse_transfer_id(request.transfer_id)
        async for update in self._coordinator.watch(tid):
            if update.sequence > request.after_sequence:
                yield await self._update_to_pb(update)

    async def _update_to_pb(self, u: TransferUpdate) -> transfer_pb2.TransferUpdate:
        record = await self._coordinator.get(u.transfer_id)
        return transfer_pb2.TransferUpdate(
            sequence=u.sequence,
            state=int(u.state),  # type: ignore[arg-type]
            detail=u.detail,
            at=_ts(u.at),
            transfer=transfer_to_pb(record),
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
        fresh = await self._coordinator.on_events(request.ledger_id, events, request.scanned_height)
        return events_pb2.DeliverEventsResponse(accepted=fresh)
