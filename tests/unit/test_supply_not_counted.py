"""Review F16: a security whose supply a ledger cannot count exactly is refused at admission.

The publisher runs on a real SQLite supply store; each ledger's relayer is the real
``RelayerServicer`` served over gRPC in this process, in front of a scripted adapter, and
the coordinator reads it through the real ``RelayerGateway``: the chaincode's typed
SupplyNotCounted crosses the relayer's error mapping and ``clients.translate`` as it does in
production. Admission's rule is ``SupplyPublisher.refusal`` (admission raises it verbatim).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.coordinator.clients import RelayerGateway
from bridge.coordinator.publisher import SupplyPublisher, not_counted
from bridge.coordinator.supply_store import SqliteSupplyStore, StoredRegistration
from bridge.core.reasons import ErrorReason
from bridge.domain.committee import Committee
from bridge.domain.errors import (
    BridgeError,
    LedgerRejected,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.issuance import Registration
from bridge.domain.supply import SupplyReading
from bridge.rpc.tls import INSECURE_ENV
from bridge.v1 import relayer_pb2_grpc
from relayers.service import RelayerServicer

pytestmark = [pytest.mark.unit, pytest.mark.batch, pytest.mark.security]

ISIN = "KR5701ES0016"
FABRIC, EVM = "fabric-a", "evm-a"
T0 = 1_700_000_000_000


class ScriptedAdapter:
    """The part of a ledger adapter ``GetLedgerSupply`` uses: ``answer`` decides."""

    def __init__(self, name: str) -> None:
        self.ledger = LedgerId(name)
        self.answer: Callable[[], SupplyReading] = lambda: reading(name)
        self.gate: asyncio.Event | None = None
        self.reads = 0

    async def supply(self, security: SecurityId, height: int | None = None) -> SupplyReading:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.answer()


class FakeCommittee:
    committee = Committee(1, 1, (b"\x01" * 20,))

    async def sign_supply(self, *args: Any, **kwargs: Any) -> tuple[bytes, ...]:
        return (b"\x5a" * 65,)


def reading(ledger: str, total: int = 100) -> SupplyReading:
    return SupplyReading(ledger, 7, b"\x07" * 32, total, 0, 0, 0, 0)


def refuse(reason: ErrorReason) -> Callable[[], SupplyReading]:
    def go() -> SupplyReading:
        raise LedgerRejected(reason, "securityId=0x.., counting holder: run CountSupply")

    return go


def raise_(exc: BridgeError) -> Callable[[], SupplyReading]:
    def go() -> SupplyReading:
        raise exc

    return go


class Ledgers:
    """Two relayers over real gRPC (plaintext, development flag) in this process."""

    def __init__(self, names: tuple[str, ...] = (FABRIC, EVM)) -> None:
        self.adapters = {name: ScriptedAdapter(name) for name in names}
        self.servers: list[grpc.aio.Server] = []
        self.gateways: dict[str, RelayerGateway] = {}

    async def start(self) -> Ledgers:
        for name, adapter in self.adapters.items():
            server = grpc.aio.server()
            relayer_pb2_grpc.add_RelayerServiceServicer_to_server(
                RelayerServicer(adapter),  # type: ignore[arg-type]
                server,
            )
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.servers.append(server)
            self.gateways[name] = RelayerGateway(name, f"127.0.0.1:{port}", 5.0)
        return self

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(None)


@pytest.fixture
async def ledgers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ledgers]:
    monkeypatch.setenv(INSECURE_ENV, "1")
    got = await Ledgers().start()
    yield got
    await got.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteSupplyStore]:
    s = SqliteSupplyStore(tmp_path / "coord" / "supply.sqlite")
    await s.register(
        StoredRegistration(
            Registration.of(ISIN, 1, {FABRIC: 100, EVM: 100}, T0), b"\x5a" * 65, b"\x0a" * 20
        )
    )
    yield s
    s.close()


def publisher(store: SqliteSupplyStore, ledgers: Ledgers, heartbeat: float = 0.0) -> Any:
    return SupplyPublisher(
        network=None,  # type: ignore[arg-type]  # only register() reads it
        store=store,
        relayers=ledgers.gateways,
        committee=FakeCommittee(),  # type: ignore[arg-type]
        heartbeat=heartbeat,
    )


async def admit(pub: SupplyPublisher) -> PreconditionFailed | None:
    result: PreconditionFailed | None = await pub.refusal(ISIN, (EVM, FABRIC))
    return result


async def test_a_typed_not_counted_read_closes_admission_until_a_figure_is_read(
    store: SqliteSupplyStore, ledgers: Ledgers
) -> None:
    pub = publisher(store, ledgers)
    assert await admit(pub) is None
    ledgers.adapters[FABRIC].answer = refuse(ErrorReason.SUPPLY_NOT_COUNTED)
    with pytest.raises(LedgerRejected) as read:
        await pub.publish(ISIN)
    # Wrapped twice on the way (relayer status, coordinator translate), still typed.
    assert read.value.reason is ErrorReason.SUPPLY_NOT_COUNTED and not_counted(read.value)
    assert read.value.ledger == FABRIC
    assert await store.latest(ISIN) is None  # no record, nothing half-applied

    refused = await admit(pub)
    assert isinstance(refused, PreconditionFailed)
    assert refused.reason is ErrorReason.SUPPLY_NOT_COUNTED
    assert refused.ledger == FABRIC
    # Whatever the lane: the security's whole feed is dark.
    assert (await pub.refusal(ISIN, (EVM,))) is not None

    # Counted (CountSupply done): the next reading round reopens admission by itself.
    ledgers.adapters[FABRIC].answer = lambda: reading(FABRIC)
    assert await pub.publish(ISIN) is not None
    assert await admit(pub) is None
    latest = await store.latest(ISIN)
    assert latest is not None and latest.signed.record.sequence == 1


@pytest.mark.parametrize(
    "answer",
    [
        raise_(Unavailable("peer down")),
        raise_(PreconditionFailed("SupplyNotCounted: a message is never parsed")),
        refuse(ErrorReason.UNKNOWN_SECURITY),
        refuse(ErrorReason.UNKNOWN_REFUSAL),
    ],
    ids=["unavailable", "untyped-message", "other-reason", "unknown-refusal"],
)
async def test_only_the_typed_reason_closes_admission(
    store: SqliteSupplyStore, ledgers: Ledgers, answer: Callable[[], SupplyReading]
) -> None:
    pub = publisher(store, ledgers)
    ledgers.adapters[FABRIC].answer = answer
    with pytest.raises(BridgeError) as read:
        await pub.publish(ISIN)
    assert not not_counted(read.value)
    assert await admit(pub) is None


async def test_a_transient_failure_does_not_reopen_a_closed_security(
    store: SqliteSupplyStore, ledgers: Ledgers
) -> None:
    pub = publisher(store, ledgers)
    ledgers.adapters[FABRIC].answer = refuse(ErrorReason.SUPPLY_NOT_COUNTED)
    with pytest.raises(LedgerRejected):
        await pub.publish(ISIN)
    ledgers.adapters[FABRIC].answer = raise_(Unavailable("peer down"))
    with pytest.raises(Unavailable):
        await pub.publish(ISIN)
    refused = await admit(pub)
    assert refused is not None and refused.reason is ErrorReason.SUPPLY_NOT_COUNTED
    # Another ledger answering its figure does not lift the first ledger's refusal either.
    ledgers.adapters[EVM].answer = lambda: reading(EVM)
    assert (await admit(pub)) is not None


async def test_a_restart_re_detects_the_condition_before_admitting(
    store: SqliteSupplyStore, ledgers: Ledgers
) -> None:
    fabric = ledgers.adapters[FABRIC]
    fabric.answer = refuse(ErrorReason.SUPPLY_NOT_COUNTED)
    first = publisher(store, ledgers)
    with pytest.raises(LedgerRejected):
        await first.publish(ISIN)
    assert (await admit(first)) is not None

    # A new coordinator process: nothing in memory. Its first reading round is held back;
    # admission waits for it instead of admitting on a state it has not read.
    fabric.gate = asyncio.Event()
    again = publisher(store, ledgers, heartbeat=0.2)
    await again.start()
    try:
        pending = asyncio.create_task(admit(again))
        await asyncio.sleep(0.3)
        assert not pending.done()
        fabric.gate.set()
        refused = await asyncio.wait_for(pending, 10)
        assert refused is not None and refused.reason is ErrorReason.SUPPLY_NOT_COUNTED
        assert refused.ledger == FABRIC

        # Counted meanwhile: the publisher re-reads a closed security on its own.
        fabric.answer = lambda: reading(FABRIC)
        for _ in range(100):
            if await admit(again) is None:
                break
            await asyncio.sleep(0.1)
        assert await admit(again) is None
        for _ in range(100):
            if await store.latest(ISIN) is not None:
                break
            await asyncio.sleep(0.1)
        assert await store.latest(ISIN) is not None
    finally:
        await again.stop()


async def test_the_publisher_stops_retrying_on_the_typed_refusal(
    store: SqliteSupplyStore, ledgers: Ledgers
) -> None:
    pub = publisher(store, ledgers)
    fabric = ledgers.adapters[FABRIC]
    fabric.answer = refuse(ErrorReason.SUPPLY_NOT_COUNTED)
    await pub._publish_with_retries(ISIN, True)
    assert fabric.reads == 1  # definitive: not one of the retried errors
    fabric.answer = raise_(Unavailable("peer down"))
    fabric.reads = 0
    pub_retry = publisher(store, ledgers)
    task = asyncio.create_task(pub_retry._publish_with_retries(ISIN, True))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fabric.reads > 1  # transient: retried


async def test_the_coordinator_refuses_the_transfer_typed_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full admission path (instruction checked, then the supply rule) of a Coordinator
    on real SQLite: FAILED_PRECONDITION with SUPPLY_NOT_COUNTED naming the ledger on the
    wire, nothing recorded; accepted once the ledger is counted."""
    from bridge.config import dump_toml, load_network
    from bridge.coordinator.engine import Coordinator
    from bridge.coordinator.records import TransferRequest
    from bridge.coordinator.store import SqliteTransferStore
    from bridge.rpc.errors import status_details
    from tests.unit.test_coordinator_driver import BROKER_A, HOLDER, FakeRelayer, instructed
    from tests.unit.test_coordinator_driver import FakeCommittee as StepCommittee

    monkeypatch.setenv(INSECURE_ENV, "1")
    (tmp_path / "network.toml").write_text(
        dump_toml(
            {
                "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "22" * 20]},
                "securities": {"isins": [ISIN]},
                "ledgers": [
                    {"id": n, "kind": "evm", "rpc_url": "x", "bridge": "0x" + b * 20,
                     "chain_id": i, "finality_depth": 0}
                    for i, (n, b) in enumerate((("a", "aa"), ("b", "bb")), 1)
                ],
                "instruction_keys": {"a": ["0x" + BROKER_A.address.hex()]},
            }
        )
    )  # fmt: skip
    network = load_network(tmp_path / "network.toml")
    ledgers = await Ledgers(("a", "b")).start()
    supply_store = SqliteSupplyStore(tmp_path / "supply.sqlite")
    await supply_store.register(
        StoredRegistration(
            Registration.of(ISIN, 1, {"a": 100, "b": 100}, T0), b"\x5a" * 65, b"\x0a" * 20
        )
    )
    pub = SupplyPublisher(network, supply_store, ledgers.gateways, FakeCommittee(), 0.0)  # type: ignore[arg-type]
    store = SqliteTransferStore(tmp_path / "c.sqlite")
    c = Coordinator(
        network, store, {"a": FakeRelayer("a"), "b": FakeRelayer("b")}, StepCommittee(),  # type: ignore[arg-type,dict-item]
        transfer_ttl=60, max_backoff=0.2, supply=pub, sweep_every=0.1,
    )  # fmt: skip
    await c.start()
    try:
        ledgers.adapters["b"].answer = refuse(ErrorReason.SUPPLY_NOT_COUNTED)
        with pytest.raises(LedgerRejected):
            await pub.publish(ISIN)
        req = TransferRequest("k1", ISIN, "a", "b", HOLDER, HOLDER, 5)
        with pytest.raises(PreconditionFailed) as refused:
            await c.submit(req, instructed(network, req))
        assert (refused.value.reason, refused.value.ledger) == (
            ErrorReason.SUPPLY_NOT_COUNTED,
            "b",
        )
        wire = status_details(refused.value)
        assert wire.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert b"SUPPLY_NOT_COUNTED" in wire.details[0].value
        assert await store.get_by_key("a", "k1") is None  # nothing recorded

        ledgers.adapters["b"].answer = lambda: reading("b")
        assert await pub.publish(ISIN) is not None
        record, created = await c.submit(req, instructed(network, req))
        assert created and record.request == req
    finally:
        await c.stop()
        store.close()
        supply_store.close()
        await ledgers.stop()
