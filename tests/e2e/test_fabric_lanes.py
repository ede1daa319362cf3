"""End to end over EVM <-> Fabric lanes: the whole system as processes, a real Fabric network.

Also: a Fabric relayer killed with SIGKILL mid-stream misses and duplicates no transfer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bridge.devnet.anvil import DevAccount
from bridge.devnet.client import RoutedTransferStub
from bridge.devnet.fabric_bridge import FabricBridgeLedger
from bridge.devnet.system import DEMO_ISIN, LedgerHandle, LocalSystem
from bridge.v1 import transfer_pb2 as S

pytestmark = [pytest.mark.e2e, pytest.mark.fabric]

EVM, FAB = "brokerage-a", "brokerage-f"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """One anvil ledger and one Fabric ledger behind one bridge."""
    with LocalSystem(
        Path(tmp_path_factory.mktemp("mixed")),
        ledger_names=((EVM, 31001),),
        fabric_ledger_names=(FAB,),
        block_time=0.5,
        transfer_ttl=60,
    ) as s:
        yield s


@pytest.fixture
def stub(mixed: LocalSystem) -> Iterator[RoutedTransferStub]:
    routed = RoutedTransferStub(mixed, fallback_ledger=EVM, instruct=mixed.brokerage.instruct)
    yield routed
    routed.close()


def ledgers(s: LocalSystem) -> tuple[LedgerHandle, FabricBridgeLedger]:
    return s.ledgers[EVM], s.fabric[FAB]


def submit(
    system: LocalSystem, sender: str, recipient: str, amount: int, src: str, dst: str
) -> str:
    """Submit as a brokerage would (UNAVAILABLE retried with the same idempotency key)."""
    request = S.SubmitTransferRequest(
        idempotency_key=str(uuid.uuid4()),
        security_id=DEMO_ISIN,
        source_ledger=src,
        target_ledger=dst,
        sender=sender,
        recipient=recipient,
        amount=str(amount),
    )
    return system.submit(request, limit_s=20)


def final_state(stub, tid: str) -> list[int]:
    return [
        u.state for u in stub.WatchTransfer(S.WatchTransferRequest(transfer_id=tid), timeout=120)
    ]


def supply(s: LocalSystem) -> int:
    evm, fab = ledgers(s)
    return evm.total_supply(DEMO_ISIN) + fab.total_supply(DEMO_ISIN)


def test_evm_to_fabric_and_back(mixed: LocalSystem, stub) -> None:
    evm, fab = ledgers(mixed)
    holder = evm.make_holder(DEMO_ISIN, 50)
    fab.set_eligible(DEMO_ISIN, holder.address)
    before = supply(mixed)
    out = submit(mixed, holder.address, holder.address, 30, EVM, FAB)
    assert final_state(stub, out)[-1] == S.TRANSFER_STATE_COMMITTED
    assert (evm.balance(DEMO_ISIN, holder.address), fab.balance(DEMO_ISIN, holder.address)) == (
        20,
        30,
    )
    back = submit(mixed, holder.address.lower(), holder.address, 12, FAB, EVM)
    states = final_state(stub, back)
    assert states == [
        S.TRANSFER_STATE_SUBMITTED,
        S.TRANSFER_STATE_SOURCE_LOCKED,
        S.TRANSFER_STATE_TARGET_PREPARED,
        S.TRANSFER_STATE_COMMITTING,
        S.TRANSFER_STATE_COMMITTED,
    ]
    assert (evm.balance(DEMO_ISIN, holder.address), fab.balance(DEMO_ISIN, holder.address)) == (
        32,
        18,
    )
    assert supply(mixed) == before
    assert evm.escrowed(DEMO_ISIN) == fab.escrowed(DEMO_ISIN) == 0


def test_ineligible_recipient_on_fabric_aborts_and_releases(mixed: LocalSystem, stub) -> None:
    evm, fab = ledgers(mixed)
    holder = evm.make_holder(DEMO_ISIN, 10)
    outsider = DevAccount.generate()  # not eligible on the Fabric ledger
    before = supply(mixed)
    tid = submit(mixed, holder.address, outsider.address, 10, EVM, FAB)
    states = final_state(stub, tid)
    assert states[-1] == S.TRANSFER_STATE_ABORTED
    assert S.TRANSFER_STATE_COMMITTING not in states
    t = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
    assert "not eligible" in t.reason
    assert evm.balance(DEMO_ISIN, holder.address) == 10
    assert fab.balance(DEMO_ISIN, outsider.address) == 0
    assert supply(mixed) == before


def test_fabric_sender_refusal_is_precise(mixed: LocalSystem, stub) -> None:
    _, fab = ledgers(mixed)
    holder = fab.make_holder(DEMO_ISIN, 3)
    with pytest.raises(grpc.RpcError) as exc:
        submit(mixed, holder.address, holder.address, 4, FAB, EVM)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "insufficient balance" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        submit(mixed, "0x1234", holder.address, 1, FAB, EVM)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_fabric_relayer_killed_mid_stream_loses_and_duplicates_nothing(
    mixed: LocalSystem, stub
) -> None:
    """SIGKILL the Fabric relayer while transfers from Fabric are in flight; after restart
    every transfer completes exactly once (no lost or duplicated mint)."""
    evm, fab = ledgers(mixed)
    holders = [fab.make_holder(DEMO_ISIN, 5) for _ in range(4)]
    for h in holders:
        evm.set_eligible(DEMO_ISIN, h.address)
    before = supply(mixed)
    tids = [submit(mixed, h.address, h.address, 5, FAB, EVM) for h in holders[:2]]
    mixed.processes[f"relayer-{FAB}"].kill9()
    mixed.start_process(f"relayer-{FAB}")
    tids += [submit(mixed, h.address, h.address, 5, FAB, EVM) for h in holders[2:]]
    mixed.processes[f"relayer-{FAB}"].kill9()
    mixed.start_process(f"relayer-{FAB}")
    for tid in tids:
        assert final_state(stub, tid)[-1] == S.TRANSFER_STATE_COMMITTED
    for h in holders:
        assert evm.balance(DEMO_ISIN, h.address) == 5, "minted exactly once"
        assert fab.balance(DEMO_ISIN, h.address) == 0
    assert supply(mixed) == before
    assert fab.escrowed(DEMO_ISIN) == 0


# ---- doctor (issue 12): the same checks over a Fabric ledger, on this module's devnet.
@pytest.mark.ops
def test_doctor_passes_on_a_mixed_devnet(
    mixed: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fabric relayer and members started past the committee check; their views name the
    channel's genesis hash and the chaincode's epochs; a Fabric relayer pays no gas."""
    from tests.e2e.test_doctor import doctor, row
    from tests.support import eventually_sync

    def healthy() -> list[dict[str, str]] | None:
        code, rows = doctor(mixed, capsys)
        return rows if code == 0 else None

    rows = eventually_sync(healthy, 120.0, "doctor exits 0 on the mixed devnet", interval=1.0)
    fab_net = row(rows, f"relayer:{FAB}", "network")["detail"]
    assert fab_net == f"{FAB}: 0x{mixed.network.ledger(FAB).genesis_hash.hex()}"
    assert row(rows, f"ledger:{FAB}", "committee")["detail"] == "epochs 1 (3-of-4)"
    assert row(rows, f"relayer:{FAB}", "gas")["detail"] == "this ledger kind charges no gas"
    assert row(rows, mixed.member_role(1), f"view {FAB}")["status"] == "OK"
