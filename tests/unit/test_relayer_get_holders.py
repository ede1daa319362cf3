"""``RelayerService.GetHolders`` and ``RelayerGateway.holders`` over real gRPC (loopback,
plaintext: the subject is the call, not TLS): order, chunking, the bound, malformed
requests refused before any read, the bounded single-read fallback of a kind without a
many-holder read, the fallback to GetHolder against a relayer that predates GetHolders
(UNIMPLEMENTED), and answers a gateway refuses (another number of holders, a garbage
balance)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import cast

import grpc
import pytest

from bridge.coordinator.clients import RelayerGateway
from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import HolderStatus
from bridge.ledgers.adapter import LedgerAdapter
from bridge.ledgers.many_holders import READ_CONCURRENCY
from bridge.v1 import relayer_pb2, relayer_pb2_grpc
from relayers.service import MAX_HOLDERS_PER_REQUEST, RelayerServicer

pytestmark = [pytest.mark.unit, pytest.mark.batch]

ISIN = "KR7005930003"


def address(i: int) -> str:
    return f"0x{i:040x}"


def status_of(word: bytes) -> HolderStatus:
    """Holder i has balance i (so every answer names its holder)."""
    return HolderStatus(True, int.from_bytes(word, "big"), 0, True, False, False)


class SingleAdapter:
    """A kind with no many-holder read: holder_status only; counts the peak in flight."""

    ledger = LedgerId("a")

    def __init__(self) -> None:
        self.single = 0
        self.in_flight = 0
        self.peak = 0

    def parse_address(self, text: str) -> bytes:
        if not (text.startswith("0x") and len(text) == 42):
            raise InvalidInput(f"not an address: {text!r}")
        return bytes(12) + bytes.fromhex(text[2:])

    async def holder_status(self, security: SecurityId, holder: bytes) -> HolderStatus:
        self.single += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        return status_of(holder)


class ManyAdapter(SingleAdapter):
    """A kind with a many-holder read (as EVM with a lens)."""

    def __init__(self) -> None:
        super().__init__()
        self.many: list[int] = []

    async def holder_statuses(
        self, security: SecurityId, holders: Sequence[bytes]
    ) -> list[HolderStatus]:
        self.many.append(len(holders))
        return [status_of(h) for h in holders]


class OldRelayer(RelayerServicer):
    """A relayer built before GetHolders: the generated base answers UNIMPLEMENTED."""

    GetHolders = relayer_pb2_grpc.RelayerServiceServicer.GetHolders  # type: ignore[assignment]


@asynccontextmanager
async def serving(servicer: relayer_pb2_grpc.RelayerServiceServicer) -> AsyncIterator[str]:
    server = grpc.aio.server()
    relayer_pb2_grpc.add_RelayerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def gateway_reads(servicer: RelayerServicer, holders: list[str]) -> list[HolderStatus]:
    async with serving(servicer) as target:
        return await RelayerGateway("a", target, 10.0).holders(ISIN, holders)


HOLDERS = [address(i) for i in range(1, 1501)]


@pytest.fixture(autouse=True)
def plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT", "1")


def test_get_holders_in_order_and_chunked() -> None:
    adapter = ManyAdapter()
    got = asyncio.run(gateway_reads(RelayerServicer(cast(LedgerAdapter, adapter)), HOLDERS))
    assert [s.balance for s in got] == list(range(1, 1501))
    assert adapter.many == [MAX_HOLDERS_PER_REQUEST, 500] and adapter.single == 0


def test_a_kind_without_a_many_holder_read_is_read_a_bounded_number_at_a_time() -> None:
    adapter = SingleAdapter()
    got = asyncio.run(gateway_reads(RelayerServicer(cast(LedgerAdapter, adapter)), HOLDERS[:40]))
    assert [s.balance for s in got] == list(range(1, 41))
    assert adapter.single == 40 and 1 < adapter.peak <= READ_CONCURRENCY


def test_a_relayer_without_get_holders_is_read_holder_by_holder() -> None:
    """A relayer that predates GetHolders: one GetHolder each, a bounded number at once."""
    adapter = ManyAdapter()
    got = asyncio.run(gateway_reads(OldRelayer(cast(LedgerAdapter, adapter)), HOLDERS[:40]))
    assert [s.balance for s in got] == list(range(1, 41))
    assert adapter.single == 40 and adapter.many == []
    assert 1 < adapter.peak <= READ_CONCURRENCY


@pytest.mark.parametrize(
    "holders",
    [[], ["0x12"], [address(1), "not-an-address"], [address(1)] * (MAX_HOLDERS_PER_REQUEST + 1)],
    ids=["none", "malformed", "one-malformed", "too-many"],
)
def test_get_holders_refuses_malformed_requests_before_any_read(holders: list[str]) -> None:
    adapter = ManyAdapter()

    async def call() -> grpc.StatusCode:
        servicer = RelayerServicer(cast(LedgerAdapter, adapter))
        async with serving(servicer) as target, grpc.aio.insecure_channel(target) as channel:
            stub = relayer_pb2_grpc.RelayerServiceStub(channel)
            try:
                await stub.GetHolders(
                    relayer_pb2.GetHoldersRequest(security_id=ISIN, holders=holders)
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert asyncio.run(call()) is grpc.StatusCode.INVALID_ARGUMENT
    assert adapter.many == [] and adapter.single == 0


class Lying(relayer_pb2_grpc.RelayerServiceServicer):
    """A relayer answering what ``answer`` makes of the request."""

    def __init__(
        self, answer: Callable[[relayer_pb2.GetHoldersRequest], relayer_pb2.GetHoldersResponse]
    ) -> None:
        self._answer = answer

    async def GetHolders(
        self, request: relayer_pb2.GetHoldersRequest, context: object
    ) -> relayer_pb2.GetHoldersResponse:
        return self._answer(request)


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: relayer_pb2.GetHoldersResponse(
            holders=[relayer_pb2.HolderStatus(balance="1")] * (len(r.holders) - 1)
        ),
        lambda r: relayer_pb2.GetHoldersResponse(
            holders=[relayer_pb2.HolderStatus(balance="1")] * (len(r.holders) + 1)
        ),
        lambda r: relayer_pb2.GetHoldersResponse(
            holders=[relayer_pb2.HolderStatus(balance="-3")] * len(r.holders)
        ),
        lambda r: relayer_pb2.GetHoldersResponse(
            holders=[relayer_pb2.HolderStatus(balance="1e9")] * len(r.holders)
        ),
    ],
    ids=["fewer", "more", "negative", "not-an-integer"],
)
def test_a_gateway_refuses_an_answer_it_cannot_take(
    answer: Callable[[relayer_pb2.GetHoldersRequest], relayer_pb2.GetHoldersResponse],
) -> None:
    async def call() -> None:
        async with serving(Lying(answer)) as target:
            await RelayerGateway("a", target, 10.0).holders(ISIN, HOLDERS[:3])

    with pytest.raises(Unavailable):
        asyncio.run(call())
