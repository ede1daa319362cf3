"""``StatusService`` messages to and from the doctor's plain values (the gRPC boundary)."""

from __future__ import annotations

from bridge.doctor.model import ComponentStatus, FeedAge, LedgerView
from bridge.rpc.rotation_convert import window_from_pb, window_to_pb
from bridge.v1 import status_pb2


def view_to_pb(v: LedgerView) -> status_pb2.LedgerView:
    """One ledger view."""
    return status_pb2.LedgerView(
        ledger_id=v.ledger,
        kind=v.kind,
        network_word=v.network_word,
        bridge=v.bridge_word,
        finalized_height=v.finalized_height,
        has_scanned=v.scanned_height is not None,
        scanned_height=v.scanned_height or 0,
        operator=v.operator,
        gas_balance="" if v.gas_balance is None else str(v.gas_balance),
        epochs=[window_to_pb(w) for w in v.epochs],
        error=v.error,
    )


def view_from_pb(m: status_pb2.LedgerView) -> LedgerView:
    """A ledger view; raises InvalidInput (from the epoch parser) on malformed epochs and
    ValueError on a malformed balance."""
    return LedgerView(
        ledger=m.ledger_id,
        kind=m.kind,
        network_word=m.network_word,
        bridge_word=m.bridge,
        finalized_height=m.finalized_height,
        scanned_height=m.scanned_height if m.has_scanned else None,
        operator=m.operator,
        gas_balance=int(m.gas_balance) if m.gas_balance else None,
        epochs=tuple(window_from_pb(e) for e in m.epochs),
        error=m.error,
    )


def status_to_pb(s: ComponentStatus) -> status_pb2.ComponentStatus:
    """A component's status."""
    return status_pb2.ComponentStatus(
        component=s.component,
        version=s.version,
        protocol_version=s.protocol_version,
        time_unix_ms=s.time_unix_ms,
        member=s.member,
        ledgers=[view_to_pb(v) for v in s.ledgers],
        endpoints=[status_pb2.DialledEndpoint(role=r, target=t) for r, t in s.endpoints],
        feeds=[
            status_pb2.FeedAge(
                security_id=f.security,
                has_record=f.age_seconds is not None,
                age_seconds=f.age_seconds or 0.0,
            )
            for f in s.feeds
        ],
        network_fingerprint=s.network_fingerprint,
    )


def status_from_pb(m: status_pb2.ComponentStatus) -> ComponentStatus:
    """A component's status (see :func:`view_from_pb` for what it raises)."""
    return ComponentStatus(
        component=m.component,
        version=m.version,
        protocol_version=m.protocol_version,
        time_unix_ms=m.time_unix_ms,
        member=m.member,
        ledgers=tuple(view_from_pb(v) for v in m.ledgers),
        endpoints=tuple((e.role, e.target) for e in m.endpoints),
        feeds=tuple(
            FeedAge(f.security_id, f.age_seconds if f.has_record else None) for f in m.feeds
        ),
        network_fingerprint=m.network_fingerprint,
    )
