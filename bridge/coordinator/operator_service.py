"""The coordinator's OperatorService: stuck transfers, retry, certified abort, evidence, and
flow limits (lanes and queues)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf.timestamp_pb2 import Timestamp

from bridge.coordinator.engine import Coordinator, LaneFlow
from bridge.coordinator.records import Misbehaviour
from bridge.coordinator.rotation import RotationManager, RotationView
from bridge.coordinator.service import parse_transfer_id, transfer_to_pb
from bridge.coordinator.store import TransferStore
from bridge.domain.errors import InvalidInput, PreconditionFailed
from bridge.domain.ids import SecurityId
from bridge.rpc.errors import Context, grpc_errors
from bridge.rpc.flow_convert import flow_status_to_pb
from bridge.rpc.rotation_convert import proposal_to_pb
from bridge.v1 import flow_pb2, operator_pb2, operator_pb2_grpc, transfer_pb2

MAX_LIMIT = 1000

ClusterView = Callable[[], Awaitable[operator_pb2.GetClusterStatusResponse]]
"""---- active/passive coordinators: builds the GetClusterStatus answer (ADR 0017)."""


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


def rotation_to_pb(v: RotationView) -> operator_pb2.Rotation:
    """A rotation with each ledger's status as the API message."""
    created = Timestamp()
    created.FromNanoseconds(int(v.stored.created_at * 1e9))
    return operator_pb2.Rotation(
        proposal=proposal_to_pb(v.stored.proposal),
        ledgers=[
            operator_pb2.RotationLedger(
                ledger_id=x.ledger,
                status=x.status,
                digest=x.digest,
                signatures=x.signatures,
                tx_id=x.tx_id,
                detail=x.detail,
            )
            for x in v.ledgers
        ],
        removed_member=v.stored.removed_member,
        evidence=[misbehaviour_to_pb(m) for m in v.stored.evidence],
        created_at=created,
    )


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    """The bridge operator's tools; none of them moves units outside the protocol."""

    def __init__(
        self,
        coordinator: Coordinator,
        store: TransferStore,
        rotations: RotationManager | None = None,
        cluster: ClusterView | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._store = store
        self._rotations = rotations
        self._cluster = cluster

    def _manager(self) -> RotationManager:
        if self._rotations is None:
            raise PreconditionFailed("this coordinator does not manage committee rotations")
        return self._rotations

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

    # ---- flow limits (ADR 0010)
    @grpc_errors
    async def GetFlowStatus(
        self, request: flow_pb2.GetFlowStatusRequest, context: Context
    ) -> flow_pb2.GetFlowStatusResponse:
        """Every lane of one security: both ledgers' limits and buckets, and its queue."""
        security = SecurityId(request.security_id).isin  # InvalidInput for a bad ISIN
        lanes = await self._coordinator.lane_flows(security)
        return flow_pb2.GetFlowStatusResponse(lanes=[lane_flow_to_pb(lane) for lane in lanes])

    # ---- committee rotation (ADR 0009) ------------------------------------------------
    @grpc_errors
    async def ProposeRotation(
        self, request: operator_pb2.ProposeRotationRequest, context: Context
    ) -> operator_pb2.Rotation:
        """Record the rotation to the next epoch (evidence attached for a removed member)."""
        view = await self._manager().propose(
            [bytes(m) for m in request.next_members],
            request.threshold,
            request.activation,
            request.overlap,
            bytes(request.remove_member),
        )
        return rotation_to_pb(view)

    @grpc_errors
    async def CertifyRotation(
        self, request: operator_pb2.CertifyRotationRequest, context: Context
    ) -> operator_pb2.Rotation:
        """Keep the member signatures the operator gathered (each checked first)."""
        if len(request.signatures) > 4096:
            raise InvalidInput("at most 4096 signatures per call")
        view = await self._manager().certify(
            request.next_epoch,
            [(s.ledger_id, s.epoch, bytes(s.signature)) for s in request.signatures],
        )
        return rotation_to_pb(view)

    @grpc_errors
    async def GetRotation(
        self, request: operator_pb2.GetRotationRequest, context: Context
    ) -> operator_pb2.Rotation:
        """One rotation with its status on each ledger."""
        return rotation_to_pb(await self._manager().view(request.next_epoch))

    @grpc_errors
    async def ListRotations(
        self, request: operator_pb2.ListRotationsRequest, context: Context
    ) -> operator_pb2.ListRotationsResponse:
        """Recorded rotations, newest first."""
        views = await self._manager().recent(_limit(request.limit))
        return operator_pb2.ListRotationsResponse(rotations=[rotation_to_pb(v) for v in views])

    # ---- active/passive coordinators (ADR 0017)
    @grpc_errors
    async def GetClusterStatus(
        self, request: operator_pb2.GetClusterStatusRequest, context: Context
    ) -> operator_pb2.GetClusterStatusResponse:
        """The lease and every coordinator's heartbeat (a single coordinator without a lease
        reports itself as the only member and leader)."""
        if self._cluster is None:
            return operator_pb2.GetClusterStatusResponse(
                answered_by="coordinator", answered_by_leader=True
            )
        return await self._cluster()


def lane_flow_to_pb(lane: LaneFlow) -> flow_pb2.LaneFlow:
    """One lane as the API message."""
    m = flow_pb2.LaneFlow(
        security_id=lane.security,
        source_ledger=lane.source_ledger,
        target_ledger=lane.target_ledger,
        queued=lane.queued,
        queued_units=str(lane.queued_units),
        error=lane.error,
    )
    if lane.source is not None:
        m.source.CopyFrom(flow_status_to_pb(lane.source))
    if lane.target is not None:
        m.target.CopyFrom(flow_status_to_pb(lane.target))
    if lane.oldest_queued_at is not None:
        m.oldest_queued_at.FromNanoseconds(int(lane.oldest_queued_at * 1e9))
    return m
