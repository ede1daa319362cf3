"""Active/passive coordinators (ADR 0017): the standby's gate on its gRPC server, the
lease metrics and the cluster view for ``bridge operator status``.

A standby serves nothing but health (NOT_SERVING), reflection and the operator's cluster
status: every other call is refused with UNAVAILABLE and ``ErrorInfo.reason = NOT_LEADER``
(its ``leader`` detail naming the leader's advertised address when known), after the
authorisation interceptor has authenticated and authorised the caller, so a caller without
a valid certificate learns nothing, not even who leads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Gauge

from bridge.coordinator.db import Conn, Database
from bridge.coordinator.lease import db_now
from bridge.domain.errors import NotLeader
from bridge.obs.metrics import CommonMetrics
from bridge.rpc.errors import abort_with
from bridge.v1 import operator_pb2

if TYPE_CHECKING:
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime class is not subscriptable
    _InterceptorBase = grpc.aio.ServerInterceptor

ALWAYS_SERVED = frozenset(
    {
        "/bridge.v1.OperatorService/GetClusterStatus",
    }
)
"""Methods a standby still answers (besides health and reflection, outside the gate)."""


class StandbyGate(_InterceptorBase):
    """Refuses every call but :data:`ALWAYS_SERVED` with NOT_LEADER while ``leading()`` is
    false. GUARANTEES: a refused call never reaches its handler (nothing read or written);
    the check runs inside the call, after the interceptors listed before this one."""

    def __init__(self, leading: Callable[[], bool], leader_address: Callable[[], str]) -> None:
        self._leading = leading
        self._leader_address = leader_address

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the handler so the leadership check runs first, inside the call."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in ALWAYS_SERVED or method.startswith("/grpc."):
            return handler
        gate = self
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                await gate._refuse_unless_leading(context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream  # an async generator function on aio

            async def stream(request: Any, context: Any) -> Any:
                await gate._refuse_unless_leading(context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # the coordinator serves no client-streaming method

    async def _refuse_unless_leading(self, context: Any) -> None:
        if not self._leading():
            leader = self._leader_address()
            await abort_with(
                context,
                NotLeader(
                    "this coordinator is a standby"
                    + (f"; the leader is {leader}" if leader else "; no leader is known"),
                    leader,
                ),
            )


class LeaseMetrics:
    """``kstb_coordinator_leader`` (1 while this process leads), ``..._lease_token`` (its
    current or last term) and ``..._leadership_changes_total{change}`` (elected / lost)."""

    def __init__(self, common: CommonMetrics) -> None:
        reg = common.registry
        self.leader = Gauge(
            "kstb_coordinator_leader",
            "1 while this coordinator holds the lease (active), 0 while it is a standby.",
            registry=reg,
        )
        self.token = Gauge(
            "kstb_coordinator_lease_token",
            "Fencing token of this coordinator's current (or last) term as leader.",
            registry=reg,
        )
        self.changes = Counter(
            "kstb_coordinator_leadership_changes",
            "Times this coordinator was elected leader or lost the lease.",
            ["change"],
            registry=reg,
        )

    def observe(self, leading: bool, token: int) -> None:
        """Record one transition (the :class:`~bridge.coordinator.lease.LeaseKeeper` hook)."""
        self.leader.set(1 if leading else 0)
        self.token.set(token)
        self.changes.labels(change="elected" if leading else "lost").inc()


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """One coordinator as the shared database last heard of it."""

    name: str
    address: str
    leader: bool
    seen_seconds_ago: float
    """By the database's clock, since its last lease poll or renewal."""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The lease and every coordinator that ever polled it."""

    leader: str
    """The holder of the current, unexpired term ('' none)."""
    leader_address: str
    token: int
    expires_in_seconds: float
    """Negative when the term expired (no leader until a standby takes it)."""
    members: tuple[ClusterMember, ...]


def cluster_status_to_pb(
    status: ClusterStatus, answered_by: str, leading: bool
) -> operator_pb2.GetClusterStatusResponse:
    """The API message of ``status`` as coordinator ``answered_by`` sees it."""
    return operator_pb2.GetClusterStatusResponse(
        leader=status.leader,
        leader_address=status.leader_address,
        token=status.token,
        expires_in_seconds=status.expires_in_seconds,
        members=[
            operator_pb2.ClusterMember(
                name=m.name,
                address=m.address,
                leader=m.leader,
                seen_seconds_ago=m.seen_seconds_ago,
            )
            for m in status.members
        ],
        answered_by=answered_by,
        answered_by_leader=leading,
    )


async def cluster_status(db: Database) -> ClusterStatus:
    """Read the lease row and the members' heartbeats (one consistent snapshot)."""

    def run(c: Conn) -> ClusterStatus:
        now = db_now(c)
        row = c.execute(
            f"SELECT holder, token, expires_at - {now} FROM coordinator_lease"  # noqa: S608
            " WHERE id = 1"
        ).fetchone()
        holder, token, left = str(row[0]), int(row[1]), float(row[2])
        leader = holder if left > 0 else ""
        members = tuple(
            ClusterMember(str(r[0]), str(r[1]), str(r[0]) == leader, max(0.0, float(r[2])))
            for r in c.execute(
                f"SELECT name, address, {now} - seen_at FROM coordinator_members"  # noqa: S608
                " ORDER BY name"
            ).fetchall()
        )
        address = next((m.address for m in members if m.name == leader), "")
        return ClusterStatus(leader, address, token, left, members)

    return await db.read(run)
