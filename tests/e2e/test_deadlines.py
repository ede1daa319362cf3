"""Deadlines: a transfer whose target cannot prepare in time ends ABORTED, units released.

The target ledger stops producing blocks before the transfer is submitted (its state can
still be read), so after the source lock the prepare sits in its mempool past the deadline; the pending transaction is then dropped and the target's
relayer restarted. The coordinator asks for the on-ledger EXPIRED marker instead of a
prepare, the committee certifies ABORT from it, and the source releases the units.
Nothing is minted.

(With the target's relayer down *before* the lock, the coordinator does not lock at all:
it reads both legs before every step. See test_transfers for that behaviour.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import demo_request
from tests.support import eventually_sync

pytestmark = pytest.mark.e2e

A, B = "brokerage-a", "brokerage-b"
TTL = 15  # long enough for a lock on a loaded machine; B is stalled anyway


@pytest.fixture(scope="module")
def short_deadlines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A system whose transfers must prepare within TTL seconds."""
    with LocalSystem(
        Path(tmp_path_factory.mktemp("deadlines")), block_time=0.5, transfer_ttl=TTL
    ) as s:
        yield s


def test_target_down_past_the_deadline_aborts_and_releases(short_deadlines: LocalSystem) -> None:
    s = short_deadlines
    a, b = s.ledgers[A], s.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 20)
    b.set_eligible(DEMO_ISIN, holder.address)
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    relayer = f"relayer-{B}"
    # The target stops producing blocks before the transfer exists: its prepare can be sent
    # but never lands before the deadline, whatever the timing.
    b.node.rpc("evm_setIntervalMining", [0])
    with s.channel(f"brokerage:{A}") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        resp = stub.SubmitTransfer(
            s.brokerage.instruct(demo_request(holder.address, holder.address, "20", A, B)),
            timeout=30,
        )
        tid = resp.transfer.transfer_id
        deadline = resp.transfer.deadline.seconds

        def stalled_on_the_target() -> bool:
            t = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
            return t.state == S.TRANSFER_STATE_SOURCE_LOCKED and a.escrowed(DEMO_ISIN) == 20

        eventually_sync(stalled_on_the_target, 30, "the lock, with the prepare stuck")
        eventually_sync(lambda: time.time() > deadline + 1, TTL + 5, "the deadline to pass")
        s.processes[relayer].kill9()
        b.node.rpc("anvil_dropAllTransactions", [])  # the late prepare never lands
        b.node.rpc("evm_setIntervalMining", [1])
        s.start_process(relayer)
        states = [
            u.state
            for u in stub.WatchTransfer(S.WatchTransferRequest(transfer_id=tid), timeout=120)
        ]
        t = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
    assert states[-1] == S.TRANSFER_STATE_ABORTED, t.reason
    assert S.TRANSFER_STATE_TARGET_PREPARED not in states
    assert "deadline" in t.reason
    assert set(t.transactions) >= {"lock", "expire", "release", "abort"}
    assert "prepare" not in t.transactions
    assert a.balance(DEMO_ISIN, holder.address) == 20, "released to the sender"
    assert b.balance(DEMO_ISIN, holder.address) == 0, "nothing minted"
    assert a.escrowed(DEMO_ISIN) == 0
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply
