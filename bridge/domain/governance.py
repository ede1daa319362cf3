"""Depository orders (issue 10 item 4): halt or release a security, or a whole ledger.

The depository signs one :class:`~bridge.core.digests.Order` per ledger it addresses (the
order binds that ledger's network word, so it is useless on any other network); every
ledger endpoint checks it with the core's rule (``bridge.core.signatures.check_order``) and
enforces the halt itself. This module is the typed layer around the core: building and
signing orders, their JSON form (Fabric argument, coordinator store) and the halt status a
ledger reports.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from bridge.core import digests as core
from bridge.core import signatures as core_sig
from bridge.core.reasons import ProtocolError
from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.signer import Signer

__all__ = [
    "ZERO_WORD",
    "HaltStatus",
    "Order",
    "OrderAction",
    "OrderRefused",
    "SignedOrder",
    "make_order",
    "order_abi_tuple",
    "order_from_json",
    "order_to_json",
    "sign_order",
    "verify_order",
]

ZERO_WORD = bytes(32)
Order = core.Order


class OrderAction(enum.IntEnum):
    """``BridgeTypes.ORDER_*``."""

    HALT = core.ORDER_HALT
    RELEASE = core.ORDER_RELEASE
    SET_DEPOSITORY = core.ORDER_SET_DEPOSITORY


@dataclass(frozen=True, slots=True)
class HaltStatus:
    """What one ledger enforces for one security right now.

    ``security_halted``: this security is halted there; ``ledger_halted``: every security
    there is; ``sequence``: the last depository order the ledger applied (0: none);
    ``depository``: the depository address the ledger holds (None: not configured).
    """

    security_halted: bool
    ledger_halted: bool
    sequence: int
    depository: bytes | None

    @property
    def halted(self) -> bool:
        """True when no lock, prepare or mint of the security is possible there."""
        return self.security_halted or self.ledger_halted


@dataclass(frozen=True, slots=True)
class SignedOrder:
    """An order with the depository's 65-byte signature over its digest."""

    order: Order
    signature: bytes

    def to_json(self) -> str:
        """Canonical JSON: the order fields plus ``signature`` (0x-hex)."""
        obj = order_to_json(self.order)
        obj["signature"] = "0x" + self.signature.hex()
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SignedOrder:
        """Inverse of :meth:`to_json`; InvalidInput for anything malformed."""
        try:
            obj = json.loads(text)
        except ValueError:
            raise InvalidInput("a signed order is JSON") from None
        if not isinstance(obj, dict) or "signature" not in obj:
            raise InvalidInput("a signed order carries a signature")
        sig = _hex_bytes("signature", obj.pop("signature"))
        return cls(order_from_json(obj), sig)


def _hex_bytes(name: str, value: object, size: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise InvalidInput(f"{name} must be 0x-hex")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidInput(f"{name} must be 0x-hex") from None
    if size is not None and len(raw) != size:
        raise InvalidInput(f"{name} must be {size} bytes")
    return raw


def order_to_json(o: Order) -> dict[str, Any]:
    """The order as a JSON object (the chaincode's ``ApplyOrder`` argument)."""
    return {
        "network": "0x" + o.network.hex(),
        "ledger": "0x" + o.ledger.hex(),
        "security": "0x" + o.security.hex(),
        "action": o.action,
        "sequence": o.sequence,
        "expiry": o.expiry,
        "key": "0x" + o.key.hex(),
    }


_ORDER_KEYS = frozenset(("network", "ledger", "security", "action", "sequence", "expiry", "key"))


def order_from_json(obj: object) -> Order:
    """Inverse of :func:`order_to_json`; InvalidInput for anything malformed."""
    if not isinstance(obj, dict) or set(obj) != _ORDER_KEYS:
        raise InvalidInput(f"an order has exactly the keys {sorted(_ORDER_KEYS)}")
    for name in ("action", "sequence", "expiry"):
        if type(obj[name]) is not int:
            raise InvalidInput(f"order {name} must be an integer")
    try:
        return Order(
            network=_hex_bytes("network", obj["network"], 32),
            ledger=_hex_bytes("ledger", obj["ledger"], 32),
            security=_hex_bytes("security", obj["security"], 32),
            action=obj["action"],
            sequence=obj["sequence"],
            expiry=obj["expiry"],
            key=_hex_bytes("key", obj["key"], 32),
        )
    except ValueError as exc:
        raise InvalidInput(f"order out of range: {exc}") from None


def order_abi_tuple(o: Order) -> tuple[bytes, bytes, bytes, int, int, int, bytes]:
    """The Solidity ``BridgeTypes.Order`` struct as a tuple, in declaration order."""
    return (o.network, o.ledger, o.security, o.action, o.sequence, o.expiry, o.key)


def make_order(
    *,
    network: bytes,
    ledger: bytes,
    security: bytes | None,
    action: OrderAction,
    sequence: int,
    expiry: int,
    new_key: bytes | None = None,
) -> Order:
    """An order for one ledger (``ledger`` zero: every ledger of ``network``); ``security``
    None halts/releases every security; ``new_key`` (20 bytes) only for SET_DEPOSITORY."""
    key = ZERO_WORD if new_key is None else bytes(12) + new_key
    try:
        return Order(network, ledger, security or ZERO_WORD, int(action), sequence, expiry, key)
    except ValueError as exc:
        raise InvalidInput(f"order out of range: {exc}") from None


def sign_order(signer: Signer, order: Order) -> SignedOrder:
    """The depository's signature over ``order``'s digest (raw digest, low s)."""
    return SignedOrder(order, signer.sign_digest(order.digest))


class OrderRefused(InvalidCertificate):
    """An order the ledgers would refuse (``reason`` is the endpoint's error)."""


def verify_order(
    signed: SignedOrder,
    depository: bytes | None,
    network: bytes,
    ledger: bytes,
    last_sequence: int = 0,
    now: int | None = None,
) -> None:
    """Apply the ledgers' acceptance rule in Python; raise :class:`OrderRefused`."""
    try:
        core_sig.check_order(
            signed.order, signed.signature, depository, network, ledger, last_sequence, now
        )
    except ProtocolError as exc:
        raise OrderRefused(f"{exc.reason.value}: {exc.detail}", exc.reason) from None
