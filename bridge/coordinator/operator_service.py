"""The coordinator's OperatorService: stuck transfers, retry, certified abort, evidence."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from bridge.coordinator.engine import Coordinator
from bridge.coordinator.records import Misbehaviour
from bridge.coordinator.service import parse_transfer_id, transfer_to_pb
from bridge.coordinator.store import TransferStore
from bridge.domain.errors import InvalidInput
from bridge.rpc.errors import Context, grpc_errors
from bridge.v1 import operator_pb2, operator_pb2_grpc, transfer_pb2

MAX_LIMIT = 1000


def _limit(value: int, default: int = 100) -> int:
    if value > MAX_LIMIT:
        raise InvalidInput(f"limit must be at most {MAX_LIMIT}")
    return value or default


def misbehaviour_to_pb(m: Misbehaviour) -> operator_pb2.Misbehaviour:
    """An incident as the API message."""
    at = Timestamp()
    at.FromNanoseconds(int(m.at * 1e9))
    return operator_pb2.Misbehaviour(
        member=m.member,
        endpoint=m.endpoint,
        kind=m.kind,
        subject=m.subject,
        detail=m.detail,
        expected_digest=m.expected_digest,
        signed_digest=m.signed_digest,
        signature=m.signature,
        at=at,
    )


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    """The bridge operator's tools; none of them moves units outside the protocol."""

    def __init__(self, coordinator: Coordinator, store: TransferStore) -> None:
        self._coordinator = coordinator
        self._store = store

    @grpc_errors
    async def ListStuckTransfers(
        self, request: operator_pb2.ListStuckTransfersRequest, context: Context
    ) -> operator_pb2.ListStuckTransfersResponse:
        """Unfinished transfers older than ``min_age_seconds``, with why each waits."""
        records = await self._coordinator.stuck(request.min_age_seconds, _limit(request.limit))
        return operator_pb2.ListStuckTransfersResponse(
            transfers=[transfer_to_pb(r) for r in records]
        )

    @grpc_errors
    async def RetryTransfer(
        self, request: operator_pb2.RetryTransferRequest, context: Context
    ) -> transfer_pb2.Transfer:
        """Re-run the transfer's driver now."""
        record = await self._coordinator.retry(parse_transfer_id(request.transfer_id))
        return transfer_to_pb(record)

    @grpc_errors
    async def AbortTransfer(
        self, request: operator_pb2.AbortTransferRequest, context: Context
    ) -> transfer_pb2.Transfer:
        """Abort through a certified ABORT, or say why the ledgers do not allow it."""
        record = await self._coordinator.abort(parse_transfer_id(request.transfer_id))
        return transfer_to_pb(record)

    @grpc_errors
    async def ListMisbehaviour(
        self, request: operator_pb2.ListMisbehaviourRequest, context: Context
    ) -> operator_pb2.ListMisbehaviourResponse:
        """Recorded incidents, newest first, with the signed evidence."""
        incidents = await self._store.misbehaviour(_limit(request.limit))
        return operator_pb2.ListMisbehaviourResponse(
            incidents=[misbehaviour_to_pb(m) for m in incidents]
        )
