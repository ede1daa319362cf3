"""Conversion of committee-rotation messages (``rotation.proto``) to and from domain values.

Every decoder validates (through the domain constructors) and raises InvalidInput naming
the field on malformed input; generated types never travel past this module.
"""

from __future__ import annotations

from bridge.domain.committee import Committee, EpochWindow
from bridge.domain.errors import InvalidInput
from bridge.domain.rotation import CertifiedRotation, RotationProposal
from bridge.v1 import rotation_pb2

_MAX_MEMBERS = 256


def _members(raw: object, field: str) -> tuple[bytes, ...]:
    out = tuple(bytes(m) for m in raw)  # type: ignore[attr-defined]
    if len(out) > _MAX_MEMBERS:
        raise InvalidInput(f"{field}: at most {_MAX_MEMBERS} members")
    if any(len(m) != 20 for m in out):
        raise InvalidInput(f"{field}: members are 20-byte addresses")
    return out


def proposal_to_pb(p: RotationProposal) -> rotation_pb2.RotationProposal:
    """A proposal as a protobuf message."""
    return rotation_pb2.RotationProposal(
        next_epoch=p.next_epoch,
        threshold=p.threshold,
        members=list(p.members),
        activation=p.activation,
        overlap=p.overlap,
    )


def proposal_from_pb(m: rotation_pb2.RotationProposal) -> RotationProposal:
    """A validated proposal (distinct members, 2t > n, next epoch >= 2)."""
    return RotationProposal(
        next_epoch=m.next_epoch,
        threshold=m.threshold,
        members=_members(m.members, "proposal.members"),
        activation=m.activation,
        overlap=m.overlap,
    )


def window_to_pb(w: EpochWindow) -> rotation_pb2.CommitteeEpoch:
    """One installed epoch with its window."""
    return rotation_pb2.CommitteeEpoch(
        epoch=w.committee.epoch,
        threshold=w.committee.threshold,
        members=list(w.committee.members),
        active_from=w.active_from,
        active_until=w.active_until or 0,
        open_ended=w.active_until is None,
    )


def window_from_pb(m: rotation_pb2.CommitteeEpoch) -> EpochWindow:
    """A validated epoch window."""
    committee = Committee(m.epoch, m.threshold, _members(m.members, "epoch.members"))
    return EpochWindow(
        committee=committee,
        active_from=m.active_from,
        active_until=None if m.open_ended else m.active_until,
    )


def certified_to_pb(c: CertifiedRotation) -> rotation_pb2.CertifiedRotation:
    """A certified rotation as a protobuf message."""
    return rotation_pb2.CertifiedRotation(
        ledger_id=c.ledger_id,
        network=c.network,
        ledger=c.ledger,
        bridge=c.bridge,
        proposal=proposal_to_pb(c.proposal),
        signatures=list(c.signatures),
    )


def certified_from_pb(m: rotation_pb2.CertifiedRotation) -> CertifiedRotation:
    """A certified rotation as received (its signatures are not checked here)."""
    for name in ("network", "ledger", "bridge"):
        if len(getattr(m, name)) != 32:
            raise InvalidInput(f"certified rotation: {name} is a 32-byte word")
    if len(m.signatures) > _MAX_MEMBERS:
        raise InvalidInput(f"certified rotation: at most {_MAX_MEMBERS} signatures")
    return CertifiedRotation(
        ledger_id=m.ledger_id,
        network=m.network,
        ledger=m.ledger,
        bridge=m.bridge,
        proposal=proposal_from_pb(m.proposal),
        signatures=tuple(bytes(s) for s in m.signatures),
    )
