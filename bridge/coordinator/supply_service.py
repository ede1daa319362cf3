"""The coordinator's SupplyService: the depository's feed and the supply operator's calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bridge.coordinator.depository_service import order_status_to_pb
from bridge.coordinator.halts import HaltBook
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.rotation import RotationManager
from bridge.domain.errors import BridgeError
from bridge.domain.ids import SecurityId
from bridge.domain.supply import Attestation
from bridge.rpc.errors import Context, grpc_errors, grpc_stream_errors
from bridge.rpc.rotation_convert import certified_to_pb
from bridge.rpc.supply_convert import (
    attestation_to_pb,
    registration_from_pb,
    registration_to_pb,
    release_from_pb,
)
from bridge.v1 import supply_pb2, supply_pb2_grpc


def _security(text: str) -> str:
    return SecurityId(text).isin  # InvalidInput for a malformed ISIN


class SupplyServicer(supply_pb2_grpc.SupplyServiceServicer):
    """Serves committee-signed records; operator calls are checked against operator keys."""

    def __init__(
        self,
        publisher: SupplyPublisher,
        rotations: RotationManager | None = None,
        halts: HaltBook | None = None,
    ) -> None:
        self._publisher = publisher
        self._rotations = rotations
        self._halts = halts  # ---- depository halt

    # ---- depository halt
    async def _with_halts(self, a: Attestation) -> supply_pb2.Attestation:
        """The attestation with the security's halts when it is sent (fields 20-21: the
        ledgers that show it halted, read from the ledgers, and the depository-signed orders
        recorded for it; not committee-signed, like ``alerts``)."""
        m = attestation_to_pb(a)
        if self._halts is None:
            return m
        record = a.signed.record
        security = SecurityId(record.security)
        for ledger in sorted({r.ledger for r in record.readings}):
            try:
                if (await self._halts.ledger_status(ledger, security)).halted:
                    m.halted_ledgers.append(ledger)
            except BridgeError:
                continue  # unreadable now: not reported as halted (the ledger still enforces)
        m.halt_orders.extend(order_status_to_pb(r) for r in await self._halts.orders(security))
        return m

    @grpc_errors
    async def GetCommitteeChain(
        self, request: supply_pb2.GetCommitteeChainRequest, context: Context
    ) -> supply_pb2.CommitteeChain:
        """The certified rotations after ``from_epoch`` (the subscriber checks each one
        against the epoch before it; this server is not trusted)."""
        chain = (
            await self._rotations.chain(request.from_epoch) if self._rotations is not None else []
        )
        return supply_pb2.CommitteeChain(rotations=[certified_to_pb(c) for c in chain])

    @grpc_errors
    async def GetSupply(
        self, request: supply_pb2.GetSupplyRequest, context: Context
    ) -> supply_pb2.GetSupplyResponse:
        """The latest record of one security (NOT_FOUND if none yet) or of every one."""
        security = _security(request.security_id) if request.security_id else None
        attestations = await self._publisher.latest(security)
        return supply_pb2.GetSupplyResponse(
            attestations=[await self._with_halts(a) for a in attestations]
        )

    @grpc_stream_errors
    async def StreamAttestations(
        self, request: supply_pb2.StreamAttestationsRequest, context: Context
    ) -> AsyncIterator[supply_pb2.Attestation]:
        """Every record from ``from_sequence`` on, then live ones, until the client leaves."""
        security = _security(request.security_id) if request.security_id else None
        async for a in self._publisher.stream(security, request.from_sequence):
            yield await self._with_halts(a)

    @grpc_errors
    async def GetRegistration(
        self, request: supply_pb2.GetRegistrationRequest, context: Context
    ) -> supply_pb2.SignedRegistration:
        """The registration in force, with its operator signature."""
        stored = await self._publisher.registration(_security(request.security_id))
        return registration_to_pb(stored.registration, stored.signature)

    @grpc_errors
    async def RegisterIssuance(
        self, request: supply_pb2.SignedRegistration, context: Context
    ) -> supply_pb2.RegisterIssuanceResponse:
        """Replace a security's registered issuance (idempotent for an exact repeat)."""
        registration, signature = registration_from_pb(request)
        await self._publisher.register(registration, signature)
        return supply_pb2.RegisterIssuanceResponse(version=registration.version)

    @grpc_errors
    async def ReleaseHold(
        self, request: supply_pb2.SignedHoldRelease, context: Context
    ) -> supply_pb2.ReleaseHoldResponse:
        """Lift a discrepancy hold once the latest record balances."""
        release, signature = release_from_pb(request)
        await self._publisher.release(release, signature)
        return supply_pb2.ReleaseHoldResponse()
