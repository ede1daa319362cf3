"""``RelayerService.GetLegs`` and ``RelayerGateway.get_legs`` over real gRPC (loopback,
plaintext: the subject is the call, not TLS): order, chunking, the bound, and the fallback to
GetLeg against a relayer that predates GetLegs (UNIMPLEMENTED)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import grpc
import pytest

from bridge.coordinator.clients import RelayerGateway
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState, LegStatus
from bridge.ledgers.adapter import LedgerAdapter
from bridge.v1 import relayer_pb2, relayer_pb2_grpc
from relayers.service import MAX_LEGS_PER_REQUEST, RelayerServicer

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class FakeAdapter:
    """Leg i is LOCKED with terms hash = its id; counts the calls."""

    ledger = LedgerId("a")

    def __init__(self) -> None:
        self.single = 0
        self.many: list[int] = []

    async def get_leg(self, tid: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        self.single += 1
        return LegStatus(LegState.LOCKED, tid, 0, 9)

    async def get_legs(
        self, tids: Sequence[bytes], leg: Leg, height: int | None = None
    ) -> list[LegStatus]:
        self.many.append(len(tids))
        return [LegStatus(LegState.LOCKED, t, 0, 9) for t in tids]


class OldRelayer(RelayerServicer):
    """A relayer built before GetLegs: the generated base answers UNIMPLEMENTED."""

    GetLegs = relayer_pb2_grpc.RelayerServiceServicer.GetLegs  # type: ignore[assignment]


async def _gateway_reads(servicer: RelayerServicer, ids: list[bytes]) -> list[LegStatus]:
    server = grpc.aio.server()
    relayer_pb2_grpc.add_RelayerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        gateway = RelayerGateway("a", f"127.0.0.1:{port}", 10.0)
        return await gateway.get_legs(ids, Leg.OUTBOUND)
    finally:
        await server.stop(None)


IDS = [i.to_bytes(32, "big") for i in range(1, 1501)]


@pytest.fixture(autouse=True)
def plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT", "1")


def test_get_legs_in_order_and_chunked() -> None:
    adapter = FakeAdapter()
    got = asyncio.run(_gateway_reads(RelayerServicer(cast(LedgerAdapter, adapter)), IDS))
    assert [s.terms_hash for s in got] == IDS
    assert adapter.many == [MAX_LEGS_PER_REQUEST, 500] and adapter.single == 0


def test_a_relayer_without_get_legs_is_read_leg_by_leg() -> None:
    adapter = FakeAdapter()
    got = asyncio.run(_gateway_reads(OldRelayer(cast(LedgerAdapter, adapter)), IDS[:5]))
    assert [s.terms_hash for s in got] == IDS[:5]
    assert adapter.single == 5 and adapter.many == []


@pytest.mark.parametrize("ids", [[], [b"\x01" * 31], [b"\x01" * 32] * (MAX_LEGS_PER_REQUEST + 1)])
def test_get_legs_refuses_malformed_requests(ids: list[bytes]) -> None:
    async def call() -> grpc.StatusCode:
        server = grpc.aio.server()
        servicer = RelayerServicer(cast(LedgerAdapter, FakeAdapter()))
        relayer_pb2_grpc.add_RelayerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = relayer_pb2_grpc.RelayerServiceStub(channel)
                try:
                    await stub.GetLegs(
                        relayer_pb2.GetLegsRequest(transfer_ids=ids, leg=int(Leg.OUTBOUND))  # type: ignore[arg-type]
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(None)

    assert asyncio.run(call()) is grpc.StatusCode.INVALID_ARGUMENT
