"""Conversion between generated protobuf messages and domain dataclasses.

Generated types never travel past this module: servicers convert on entry and exit.
Every decoder validates, raising InvalidInput with the field name on malformed input.
"""

from __future__ import annotations

from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.instructions import Instruction
from bridge.domain.legs import (
    HolderStatus,
    LedgerEvent,
    Leg,
    LegState,
    LegStatus,
    SignatureSet,
)
from bridge.domain.terms import TransferTerms
from bridge.v1 import common_pb2, events_pb2, relayer_pb2, transfer_pb2


def terms_to_pb(t: TransferTerms) -> common_pb2.Terms:
    """Terms as a protobuf message."""
    return common_pb2.Terms(
        nonce=t.nonce,
        security=t.security,
        amount=t.amount.to_bytes(32, "big").lstrip(b"\0") or b"\0",
        src_ledger=t.src_ledger,
        src_bridge=t.src_bridge,
        dst_ledger=t.dst_ledger,
        dst_bridge=t.dst_bridge,
        sender=t.sender,
        recipient=t.recipient,
        instructor=t.instructor,
        deadline=t.deadline,
    )


def terms_from_pb(m: common_pb2.Terms) -> TransferTerms:
    """Validated terms from a protobuf message."""
    if len(m.amount) > 32:
        raise InvalidInput("terms.amount exceeds 32 bytes")
    return TransferTerms(
        nonce=m.nonce,
        security=m.security,
        amount=int.from_bytes(m.amount, "big"),
        src_ledger=m.src_ledger,
        src_bridge=m.src_bridge,
        dst_ledger=m.dst_ledger,
        dst_bridge=m.dst_bridge,
        sender=m.sender,
        recipient=m.recipient,
        instructor=m.instructor,
        deadline=m.deadline,
    )


def instruction_from_pb(request: transfer_pb2.SubmitTransferRequest) -> Instruction:
    """The request's instruction, shape checked (InvalidInput naming the field)."""
    if not request.HasField("instruction"):
        raise InvalidInput("instruction is required (protocol v2: the brokerage signs)")
    m = request.instruction
    return Instruction(
        nonce=m.nonce, deadline=m.deadline, instructor=m.instructor, signature=m.signature
    )


def instruction_to_pb(i: Instruction) -> transfer_pb2.Instruction:
    """An instruction as its message."""
    return transfer_pb2.Instruction(
        nonce=i.nonce, deadline=i.deadline, instructor=i.instructor, signature=i.signature
    )


def signatures_to_pb(s: SignatureSet) -> common_pb2.Certificate:
    """A signature set as a protobuf certificate."""
    return common_pb2.Certificate(epoch=s.epoch, signatures=list(s.signatures))


def signatures_from_pb(m: common_pb2.Certificate) -> SignatureSet:
    """A signature set from a protobuf certificate; shape only (ledgers verify)."""
    if any(len(s) != 65 for s in m.signatures):
        raise InvalidInput("every certificate signature must be 65 bytes")
    return SignatureSet(epoch=m.epoch, signatures=tuple(m.signatures))


def leg_from_pb(value: int) -> Leg:
    """A Leg from its proto enum value."""
    try:
        return Leg(value)
    except ValueError:
        raise InvalidInput("leg must be LEG_OUTBOUND or LEG_INBOUND") from None


def leg_status_to_pb(s: LegStatus) -> relayer_pb2.LegStatus:
    """A leg status message."""
    return relayer_pb2.LegStatus(
        state=int(s.state),  # type: ignore[arg-type]
        terms_hash=s.terms_hash,
        reason=s.reason,
        height=s.height,
        not_before=s.not_before,
    )


def holder_to_pb(s: HolderStatus) -> relayer_pb2.HolderStatus:
    """A holder status message (the balance as a decimal string: it may exceed 64 bits)."""
    return relayer_pb2.HolderStatus(
        security_registered=s.security_registered,
        balance=str(s.balance),
        receive_status=s.receive_status,
        frozen=s.frozen,
        paused=s.paused,
        eligible=s.eligible,
    )


def holder_from_pb(m: relayer_pb2.HolderStatus) -> HolderStatus:
    """A holder status from its message; Unavailable for a balance that is not a
    non-negative decimal integer (a relayer answering garbage)."""
    raw = m.balance or "0"
    if not raw.isdecimal() or not raw.isascii():
        raise Unavailable(f"a relayer answered the balance {raw[:40]!r}")
    return HolderStatus(
        m.security_registered, int(raw), m.receive_status, m.eligible, m.frozen, m.paused
    )


def leg_status_from_pb(m: relayer_pb2.LegStatus) -> LegStatus:
    """A leg status from its message."""
    try:
        state = LegState(m.state)
    except ValueError:
        raise InvalidInput(f"unknown leg state {m.state}") from None
    return LegStatus(
        state=state,
        terms_hash=m.terms_hash,
        reason=m.reason,
        height=m.height,
        not_before=m.not_before,
    )


def event_to_pb(e: LedgerEvent) -> events_pb2.LedgerEvent:
    """A ledger event message."""
    m = events_pb2.LedgerEvent(
        height=e.position.height,
        block_hash=e.block_hash,
        tx_id=e.tx_id,
        index=e.position.index,
        transfer_id=e.transfer_id,
        leg=int(e.leg),  # type: ignore[arg-type]
        state=int(e.state),  # type: ignore[arg-type]
        reason=e.reason,
        terms_hash=e.terms_hash,
    )
    if e.terms is not None:
        m.terms.CopyFrom(terms_to_pb(e.terms))
    return m


MAX_HEIGHT = 2**63 - 1
"""The highest block height a message may carry: the stores keep heights in signed 64-bit
columns (a larger one failed the whole delivery with an untyped overflow)."""


def height_from_pb(height: int, what: str) -> int:
    """``height`` (a uint64 field), or InvalidInput naming ``what`` when it is past
    :data:`MAX_HEIGHT`: no ledger's height, and no store keeps it."""
    if height > MAX_HEIGHT:
        raise InvalidInput(f"{what} {height} is past {MAX_HEIGHT}")
    return height


def event_from_pb(ledger: str, m: events_pb2.LedgerEvent) -> LedgerEvent:
    """A validated ledger event from its message."""
    from bridge.domain.legs import EventPosition

    if len(m.transfer_id) != 32 or len(m.terms_hash) != 32:
        raise InvalidInput("event transfer_id and terms_hash must be 32 bytes")
    try:
        state = LegState(m.state)
    except ValueError:
        raise InvalidInput(f"unknown leg state {m.state}") from None
    return LedgerEvent(
        ledger=ledger,
        position=EventPosition(height_from_pb(m.height, "event height"), m.index),
        block_hash=m.block_hash,
        tx_id=m.tx_id,
        transfer_id=m.transfer_id,
        leg=leg_from_pb(m.leg),
        state=state,
        reason=m.reason,
        terms_hash=m.terms_hash,
        terms=terms_from_pb(m.terms) if m.HasField("terms") else None,
    )
