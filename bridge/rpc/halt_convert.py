"""Depository orders and halt status between the domain and the gRPC boundary.

Guarantees: every message is checked field by field (InvalidInput naming the field) before a
domain object exists; nothing here verifies signatures (the ledgers and the coordinator do).
"""

from __future__ import annotations

from bridge.domain.errors import InvalidInput
from bridge.domain.governance import HaltStatus, Order, SignedOrder
from bridge.v1 import depository_pb2


def order_to_pb(o: Order) -> depository_pb2.DepositoryOrder:
    """The wire form of an order."""
    return depository_pb2.DepositoryOrder(
        network=o.network,
        ledger=o.ledger,
        security=o.security,
        action=o.action,
        sequence=o.sequence,
        expiry=o.expiry,
        key=o.key,
    )


def signed_order_to_pb(s: SignedOrder) -> depository_pb2.SignedDepositoryOrder:
    """The wire form of a signed order."""
    return depository_pb2.SignedDepositoryOrder(order=order_to_pb(s.order), signature=s.signature)


def signed_order_from_pb(m: depository_pb2.SignedDepositoryOrder) -> SignedOrder:
    """A signed order from the wire; InvalidInput for a missing or malformed field."""
    if not m.HasField("order"):
        raise InvalidInput("order is required")
    o = m.order
    for name in ("network", "ledger", "security", "key"):
        if len(getattr(o, name)) != 32:
            raise InvalidInput(f"order.{name} must be 32 bytes")
    if not 0 < o.action < 256:
        raise InvalidInput("order.action must be 1 (halt), 2 (release) or 3 (key)")
    if len(m.signature) != 65:
        raise InvalidInput("signature must be 65 bytes")
    order = Order(
        network=bytes(o.network),
        ledger=bytes(o.ledger),
        security=bytes(o.security),
        action=int(o.action),
        sequence=int(o.sequence),
        expiry=int(o.expiry),
        key=bytes(o.key),
    )
    return SignedOrder(order, bytes(m.signature))


def halt_to_pb(ledger: str, s: HaltStatus) -> depository_pb2.LedgerHalt:
    """One ledger's halt flags on the wire."""
    return depository_pb2.LedgerHalt(
        ledger_id=ledger,
        security_halted=s.security_halted,
        ledger_halted=s.ledger_halted,
        sequence=s.sequence,
        depository=s.depository or b"",
        read=True,
    )


def halt_from_pb(m: depository_pb2.LedgerHalt) -> HaltStatus:
    """Inverse of :func:`halt_to_pb` (InvalidInput for a malformed depository key)."""
    if m.depository and len(m.depository) != 20:
        raise InvalidInput("depository must be 20 bytes")
    return HaltStatus(
        security_halted=m.security_halted,
        ledger_halted=m.ledger_halted,
        sequence=m.sequence,
        depository=bytes(m.depository) or None,
    )
