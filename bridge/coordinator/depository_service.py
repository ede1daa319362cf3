"""The coordinator's DepositoryService: the depository's kill switch (ADR 0011).

Guarantees: an order is recorded only after the ledgers' own rule accepted it against the
depository key each ledger holds (:class:`bridge.coordinator.halts.HaltBook`); the status
shows each ledger's halt flags as read from the ledger itself (never from this process's
memory of the orders), next to the orders recorded.
"""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from bridge.coordinator.halts import HaltBook, OrderRecord
from bridge.coordinator.wording import bounded
from bridge.domain.errors import BridgeError, public_text
from bridge.domain.ids import SecurityId
from bridge.rpc.errors import Context, grpc_errors
from bridge.rpc.halt_convert import halt_to_pb, signed_order_from_pb, signed_order_to_pb
from bridge.v1 import depository_pb2, depository_pb2_grpc


def order_status_to_pb(r: OrderRecord) -> depository_pb2.DepositoryOrderStatus:
    """A recorded order and its delivery state on one ledger."""
    at = Timestamp()
    at.FromNanoseconds(int(r.received_at * 1e9))
    return depository_pb2.DepositoryOrderStatus(
        ledger_id=r.ledger,
        signed=signed_order_to_pb(r.signed),
        state=int(r.state),  # type: ignore[arg-type]
        refusal=r.refusal,
        tx_id=r.tx_id,
        received_at=at,
    )


class DepositoryServicer(depository_pb2_grpc.DepositoryServiceServicer):
    """Serves the depository (rule: role ``depository``; status also the bridge operator)."""

    def __init__(self, book: HaltBook, ledgers: list[str]) -> None:
        self._book = book
        self._ledgers = sorted(ledgers)

    @grpc_errors
    async def SubmitHaltOrder(
        self, request: depository_pb2.SignedDepositoryOrder, context: Context
    ) -> depository_pb2.DepositoryOrderStatus:
        """Check, record and start delivering one order; returns its first ledger's status
        (every ledger's is in GetHaltStatus)."""
        records = await self._book.submit(signed_order_from_pb(request))
        return order_status_to_pb(records[0])

    @grpc_errors
    async def GetHaltStatus(
        self, request: depository_pb2.GetHaltStatusRequest, context: Context
    ) -> depository_pb2.GetHaltStatusResponse:
        """Every ledger's halt flags (read from the ledgers) and the recorded orders."""
        security = SecurityId(request.security_id) if request.security_id else None

        async def read(ledger: str) -> depository_pb2.LedgerHalt:
            try:
                return halt_to_pb(ledger, await self._book.ledger_status(ledger, security))
            except BridgeError as exc:
                # SECURITY: the depository reads the error's public text, never a
                # relayer's own words (BridgeError.public).
                return depository_pb2.LedgerHalt(
                    ledger_id=ledger, read=False, error=bounded(public_text(exc))
                )

        halts = await asyncio.gather(*(read(name) for name in self._ledgers))
        orders = await self._book.orders(security)
        return depository_pb2.GetHaltStatusResponse(
            ledgers=halts, orders=[order_status_to_pb(r) for r in orders]
        )
