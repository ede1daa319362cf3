"""Supply and leg reads past the peers' range-read cap, on a native Fabric network of its own.

The peers here run with ``totalQueryLimit`` = 20 (``FabricNetwork(total_query_limit=...)``):
a range read returns at most 20 records and says nothing about the rest. The module first
serves the chaincode AS IT WAS before ADR 0024 (the same code with the counters switched
off and the old scanning ``Supply``, see :func:`legacy_package`), writes more holders and
more committed transfers than the cap, and shows that the old read is silently wrong. It
then serves the current chaincode at the same address (an upgrade of the code on the same
state): ``Supply`` is refused with SupplyNotCounted until the issuer admin has run
``CountSupply`` to completion (whose pages the peer cuts to 20 without saying so), then it
is exact, and stays exact with every later write; every leg reads back exactly.

Review F16: meanwhile the coordinator's admission rule (``SupplyPublisher.refusal``, read
through a real relayer service and gateway over gRPC) refuses new transfers of the security
with the typed reason SUPPLY_NOT_COUNTED naming this ledger, and admits them again by itself
once counted; the counting is done by Org2's admin (neither the issuer nor an admin
organisation), a client (the relayer's identity) may not count.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from bridge.coordinator.clients import RelayerGateway
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.supply_store import SqliteSupplyStore, StoredRegistration
from bridge.core.reasons import ErrorReason
from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import (
    CHAINCODE_DIR,
    start_bridge_chaincode,
    submit_agreed,
    until_agreed,
    wait_for_peers,
)
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected, PreconditionFailed, Unavailable
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.issuance import Registration
from bridge.domain.legs import Action, Leg, LegState
from bridge.domain.supply import SupplyReading
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.rpc.tls import INSECURE_ENV
from bridge.v1 import relayer_pb2_grpc
from relayers.service import RelayerServicer
from tests.integration.fabric.support import BridgeEnv as Env
from tests.integration.fabric.support import instruct, submit_and_wait
from tests.unit.test_supply_not_counted import FakeCommittee

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.batch]

LIMIT = 20
CHAINCODE = "kstbexact"
LEDGER = LedgerId("fabric-exact")
OTHER = LedgerId("evm-other")
ISIN = "KR7005930003"
SECURITY = SecurityId(ISIN)
LATER_ISIN = "US0378331005"  # registered after the upgrade
CLAIMS = {
    Action.PREPARE: ClaimKind.LOCKED,
    Action.COMMIT: ClaimKind.COMMIT,
    Action.ABORT: ClaimKind.ABORT,
}

# The chaincode before ADR 0024, as a patch of today's: no counter is written, Supply
# sums range reads (verbatim the old method), and leg records have no ``delayed`` (ADR 0024
# item 9, later still). Every other key it writes is unchanged.
_LEGACY_PATCHES = (
    (
        "        self._tally = _Tallying(store)  # ---- exact reads: counters on every write\n",
        "        self._tally = _Untallied(store)  # type: ignore[assignment]\n",
    ),
    (
        '        stored = record if leg.delayed is None else {**record, "delayed": leg.delayed}\n',
        "        stored = record\n",
    ),
    (
        '        self._put_json(_tally_state_key(sec.hex()), {"done": True})  # ---- exact reads\n',
        "",
    ),
)
_LEGACY_SUPPLY = """

def _scanning_supply(self: Endpoint, isin: str) -> object:
    self._require_init()
    sec = security_word(isin)
    self._token(sec)

    def total(prefix: str) -> int:
        return sum(int(value) for _, value in self._kv.scan(prefix))

    holders = sum(
        int(json.loads(value)["balance"]) for _, value in self._kv.scan(f"holder/{sec.hex()}/")
    )
    escrowed = total(f"escrow/{sec.hex()}/")
    return {
        "total_supply": str(holders + escrowed + total(f"parked/{sec.hex()}/")),
        "escrowed": str(escrowed),
        "prepared": str(total(f"prepared/{sec.hex()}/")),
        "burned_out": str(total(f"burned/{sec.hex()}/")),
        "minted_in": str(total(f"minted/{sec.hex()}/")),
    }


class _Untallied:
    # The store itself: writes move no counter (the index-key writes included).

    def __init__(self, inner: KeyValue) -> None:
        self.get, self.put, self.delete = inner.get, inner.put, inner.delete
        self.scan, self.scan_after = inner.scan, inner.scan_after

    def put_known(self, key: str, value: bytes, old: bytes | None) -> None:
        self.put(key, value)

    def delete_known(self, key: str, old: bytes) -> None:
        self.delete(key)


Endpoint.supply = _scanning_supply  # type: ignore[method-assign]
"""


def legacy_package(dest: Path) -> Path:
    """A copy of the chaincode package as it was before the counters; returns its root."""
    shutil.copytree(CHAINCODE_DIR / "kstb_chaincode", dest / "kstb_chaincode")
    protocol = dest / "kstb_chaincode" / "protocol.py"
    text = protocol.read_text()
    for old, new in _LEGACY_PATCHES:
        assert text.count(old) == 1, f"the legacy patch no longer applies: {old!r}"
        text = text.replace(old, new)
    protocol.write_text(text + _LEGACY_SUPPLY)
    return dest


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNetwork]:
    """A network of this module's own whose peers cap a range read at LIMIT records."""
    net = FabricNetwork(Path(tmp_path_factory.mktemp("fabric-exact")), total_query_limit=LIMIT)
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def servers(
    network: FabricNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ManagedProcess]]:
    """The current chaincode server ("current", deployed, stopped) and the legacy one
    ("legacy", serving the same package id at the same address)."""
    current = start_bridge_chaincode(network, CHAINCODE)
    current.stop()
    old_root = legacy_package(tmp_path_factory.mktemp("legacy-chaincode"))
    assert current.env is not None
    legacy = replace(current, env={**current.env, "PYTHONPATH": str(old_root)}).start()
    legacy.wait_port(_port(current), timeout=30)
    procs = {"current": current, "legacy": legacy}
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
async def env(network: FabricNetwork, servers: dict[str, ManagedProcess]) -> Env:
    return await Env.new(network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def adapter(env: Env) -> AsyncIterator[FabricAdapter]:
    a = FabricAdapter(LEDGER, env.client("Org1", "User1"), CHAINCODE, "Org1MSP/User1")
    yield a
    await a.close()


async def step(env: Env, adapter: FabricAdapter, action: Action, t: TransferTerms) -> None:
    kind = CLAIMS.get(action)
    cert = env.cert(kind, t) if kind is not None else None
    lock = instruct(t) if action is Action.LOCK else b""
    outcome = await until_agreed(lambda: adapter.submit(action, t, cert, lock))
    await wait_for_peers(env.net, outcome.height)


def _port(server: ManagedProcess) -> int:
    return int((server.env or {})["CHAINCODE_SERVER_ADDRESS"].rsplit(":", 1)[1])


def figures(r: SupplyReading) -> tuple[int, int, int, int, int]:
    return (r.total_supply, r.escrowed, r.prepared, r.burned_out, r.minted_in)


async def serve_current(servers: dict[str, ManagedProcess], adapter: FabricAdapter) -> None:
    """Replace the legacy server by the current one at the same address (a code upgrade)."""
    servers["legacy"].stop()
    servers["current"].start()
    servers["current"].wait_port(_port(servers["current"]), timeout=30)
    for _ in range(100):  # the peer reconnects to the chaincode on its next call
        try:
            await adapter.get_leg(bytes(32), Leg.OUTBOUND)
            return
        except Unavailable:
            await asyncio.sleep(0.2)
    raise AssertionError("the peer never reached the current chaincode server")


@asynccontextmanager
async def coordinator_supply(
    adapter: FabricAdapter, db: Path, net_issued: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SupplyPublisher]:
    """The coordinator's supply publisher (real SQLite store, the security registered on
    this ledger with ``net_issued`` units) reading this ledger through a real relayer
    service over gRPC."""
    monkeypatch.setenv(INSECURE_ENV, "1")
    server = grpc.aio.server()
    relayer_pb2_grpc.add_RelayerServiceServicer_to_server(RelayerServicer(adapter), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = SqliteSupplyStore(db)
    registration = Registration.of(ISIN, 1, {LEDGER.name: net_issued}, 1_700_000_000_000)
    await store.register(StoredRegistration(registration, b"\x5a" * 65, b"\x0a" * 20))
    gateway = RelayerGateway(LEDGER.name, f"127.0.0.1:{port}", 30.0)
    try:
        yield SupplyPublisher(None, store, {LEDGER.name: gateway}, FakeCommittee(), 0.0)  # type: ignore[arg-type]
    finally:
        store.close()
        await server.stop(None)


async def test_reads_stay_exact_past_the_peers_range_cap(
    env: Env,
    adapter: FabricAdapter,
    servers: dict[str, ManagedProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ---- state written by the chaincode before the counters, crossing the cap twice:
    # LIMIT + 2 holders, LIMIT + 1 committed outbound transfers (burned entries).
    holders = await asyncio.gather(*(env.holder(ISIN, 10) for _ in range(LIMIT + 2)))
    outs = [env.outbound(SECURITY, h, 1 + i % 3, OTHER) for i, h in enumerate(holders[:-1])]
    await asyncio.gather(*(step(env, adapter, Action.LOCK, t) for t in outs))
    await asyncio.gather(*(step(env, adapter, Action.COMMIT, t) for t in outs))
    waiting = env.outbound(SECURITY, holders[-1], 2, OTHER)
    await step(env, adapter, Action.LOCK, waiting)  # escrowed
    minted = env.inbound(SECURITY, holders[0], 4, OTHER)
    await step(env, adapter, Action.PREPARE, minted)
    await step(env, adapter, Action.COMMIT, minted)
    pending = env.inbound(SECURITY, holders[1], 5, OTHER)
    await step(env, adapter, Action.PREPARE, pending)  # prepared
    burned = sum(t.amount for t in outs)
    expected = (10 * (LIMIT + 2) - burned + 4, 2, 5, burned, 4)

    # The old scanning read: the peer stops each range read at LIMIT records, silently.
    old = figures(await adapter.supply(SECURITY))
    assert old != expected
    assert old[0] < expected[0] and old[3] < expected[3], (old, expected)

    # ---- the current chaincode on the same state: refused, never a wrong figure.
    await serve_current(servers, adapter)
    with pytest.raises(LedgerRejected) as refused:
        await adapter.supply(SECURITY)
    assert refused.value.reason is ErrorReason.SUPPLY_NOT_COUNTED
    # Review F16: the coordinator refuses new transfers of it, typed, naming this ledger.
    db = tmp_path / "coord" / "supply.sqlite"
    supply = coordinator_supply(adapter, db, expected[0] + burned - 4, monkeypatch)
    publisher = await supply.__aenter__()
    with pytest.raises(LedgerRejected) as read:
        await publisher.publish(ISIN)
    assert (read.value.reason, read.value.ledger) == (ErrorReason.SUPPLY_NOT_COUNTED, LEDGER.name)
    held = await publisher.refusal(ISIN, (LEDGER.name,))
    assert isinstance(held, PreconditionFailed)
    assert (held.reason, held.ledger) == (ErrorReason.SUPPLY_NOT_COUNTED, LEDGER.name)
    relayer = env.client("Org1", "User1")
    counter = env.client("Org2", "Admin")  # not the issuer's: any organisation admin counts
    try:
        with pytest.raises(LedgerRejected) as not_admin:
            await submit_agreed(relayer, CHAINCODE, "CountSupply", [ISIN, "1000"])
        assert not_admin.value.reason is ErrorReason.NOT_ADMIN

        # Counting in steps of up to 1000 keys: the peer cuts each page to LIMIT silently,
        # and only an empty read after the cursor ends a family.
        pages: list[tuple[str, int]] = []
        while True:
            preview = json.loads(await counter.evaluate(CHAINCODE, "CountSupply", [ISIN, "1000"]))
            await submit_and_wait(env.net, counter, CHAINCODE, "CountSupply", ISIN, "1000")
            if preview["done"]:
                break
            pages.append((preview["family"], preview["counted"]))
            assert len(pages) < 50
        assert max(n for _, n in pages) == LIMIT, pages
        holder_pages = [n for family, n in pages if family == "holder"]
        assert holder_pages[:2] == [LIMIT, 2], pages  # a page of 1000 came back with 20
        state = json.loads(await counter.evaluate(CHAINCODE, "SupplyCounting", [ISIN]))
        assert state["done"] is True
        # Counted: the next reading round produces a record and admission resumes.
        assert await publisher.publish(ISIN) is not None
        assert await publisher.refusal(ISIN, (LEDGER.name,)) is None
    finally:
        await relayer.close()
        await counter.close()
        await supply.__aexit__(None, None, None)

    # ---- exact now, and after every later write.
    assert figures(await adapter.supply(SECURITY)) == expected
    more = env.outbound(SECURITY, holders[-1], 3, OTHER)
    await step(env, adapter, Action.LOCK, more)
    await step(env, adapter, Action.COMMIT, more)
    await step(env, adapter, Action.COMMIT, pending)
    await step(env, adapter, Action.ABORT, waiting)
    late = await env.holder(ISIN, 7)
    total = expected[0] - 3 + 5 + 7
    after = figures(await adapter.supply(SECURITY))
    assert after == (total, 0, 0, burned + 3, 9)

    # Every leg reads back exactly (point reads: no range, no cap).
    for t in [*outs, more]:
        leg = await adapter.get_leg(t.transfer_id, Leg.OUTBOUND)
        assert (leg.state, leg.terms_hash) == (LegState.BURNED, t.terms_hash)
    assert (await adapter.get_leg(waiting.transfer_id, Leg.OUTBOUND)).state is LegState.RELEASED
    for t in (minted, pending):
        leg = await adapter.get_leg(t.transfer_id, Leg.INBOUND)
        assert (leg.state, leg.terms_hash, leg.reason) == (LegState.MINTED, t.terms_hash, 0)
    assert (await adapter.holder_status(SECURITY, late)).balance == 7

    # A security registered after the upgrade is counted from zero: no CountSupply needed.
    admin = env.client("Org1", "Admin")
    try:
        await submit_and_wait(env.net, admin, CHAINCODE, "RegisterSecurity", LATER_ISIN)
        later = SecurityId(LATER_ISIN)
        assert figures(await adapter.supply(later)) == (0, 0, 0, 0, 0)
        holder = await env.holder(LATER_ISIN, 6)
        assert figures(await adapter.supply(later)) == (6, 0, 0, 0, 0)
        assert (await adapter.holder_status(later, holder)).balance == 6
    finally:
        await admin.close()
