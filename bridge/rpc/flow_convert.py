"""---- flow limits (ADR 0010): FlowStatus between the domain and the wire."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from bridge.domain.errors import InvalidInput
from bridge.domain.flow import Bucket, FlowStatus
from bridge.v1 import flow_pb2


def _units(text: str, name: str) -> int:
    try:
        value = int(text or "0")
    except ValueError:
        raise InvalidInput(f"{name} must be a decimal integer") from None
    if value < 0:
        raise InvalidInput(f"{name} must not be negative")
    return value


def bucket_to_pb(b: Bucket) -> flow_pb2.FlowBucket:
    """One direction as the API message."""
    return flow_pb2.FlowBucket(
        capacity=str(b.capacity), available=str(b.available), window_seconds=b.window
    )


def flow_status_to_pb(s: FlowStatus) -> flow_pb2.FlowStatus:
    """A lane's status as the API message."""
    as_of = Timestamp()
    as_of.FromSeconds(s.as_of)
    return flow_pb2.FlowStatus(
        ledger=s.ledger,
        counterpart=s.counterpart,
        security_id=s.security,
        as_of=as_of,
        outbound=bucket_to_pb(s.outbound),
        inbound=bucket_to_pb(s.inbound),
        share_bps=s.share_bps,
        large_threshold=str(s.large_threshold),
        large_delay_seconds=s.large_delay,
        large_outbound_available=str(s.large_outbound_available),
        large_inbound_available=str(s.large_inbound_available),
    )


def flow_status_from_pb(m: flow_pb2.FlowStatus) -> FlowStatus:
    """The API message as a domain value; InvalidInput for malformed figures."""

    def bucket(b: flow_pb2.FlowBucket, name: str) -> Bucket:
        return Bucket(
            _units(b.capacity, f"{name}.capacity"),
            _units(b.available, f"{name}.available"),
            int(b.window_seconds),
        )

    return FlowStatus(
        ledger=m.ledger,
        counterpart=m.counterpart,
        security=m.security_id,
        as_of=int(m.as_of.seconds),
        outbound=bucket(m.outbound, "outbound"),
        inbound=bucket(m.inbound, "inbound"),
        share_bps=int(m.share_bps),
        large_threshold=_units(m.large_threshold, "large_threshold"),
        large_delay=int(m.large_delay_seconds),
        large_outbound_available=_units(m.large_outbound_available, "large_outbound_available"),
        large_inbound_available=_units(m.large_inbound_available, "large_inbound_available"),
    )
