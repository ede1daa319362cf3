"""End to end: the depository halts a security mid-load, then releases it (ADR 0011).

The system runs as processes (LocalSystem, two anvil ledgers). The depository uses the real
CLI (``bridge depository halt|release|status``) with its devnet key and certificate; the
ledgers enforce the halt, the coordinator queues. Checked: nothing of the security moves
while halted (holder balances, queued transfers' legs), each in-flight transfer is where the
documented rule puts it, the feed shows the halt, and after the release every transfer
finishes with supply conserved exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.governance import OrderAction, make_order, sign_order
from bridge.domain.ids import SecurityId
from bridge.domain.signer import LocalKeySigner
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.rpc.halt_convert import signed_order_to_pb
from bridge.v1 import (
    depository_pb2,
    depository_pb2_grpc,
    supply_pb2,
    supply_pb2_grpc,
    transfer_pb2,
)
from tests.e2e.conftest import demo_request, eligible_everywhere
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.governance, pytest.mark.security]

A, B = "brokerage-a", "brokerage-b"
S = transfer_pb2
TERMINAL = {S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED}
LOAD = 16


def cli(system: LocalSystem, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``bridge --json depository ...`` as the depository (mTLS), with its devnet key."""
    base = [
        sys.executable,
        "-m",
        "bridge.cli.main",
        "--coordinator",
        system.coordinator_target,
        *system.cli_tls_args("depository"),
        "--json",
        "depository",
    ]
    env = {**os.environ, PLAINTEXT_KEYS_ENV: "1"}  # the devnet depository key file
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, timeout=120, check=check, env=env
    )


def order_args(system: LocalSystem) -> list[str]:
    return [
        "--network",
        str(system.workdir / "network.toml"),
        "--key-file",
        str(system.workdir / "keys" / "depository.key"),
    ]


def halt_status(system: LocalSystem) -> depository_pb2.GetHaltStatusResponse:
    with system.channel("depository") as ch:
        return depository_pb2_grpc.DepositoryServiceStub(ch).GetHaltStatus(
            depository_pb2.GetHaltStatusRequest(security_id=DEMO_ISIN), timeout=30
        )


def halted_ledgers(system: LocalSystem) -> set[str]:
    return {h.ledger_id for h in halt_status(system).ledgers if h.security_halted}


def balances(system: LocalSystem, holders: list[DevAccount]) -> dict[str, int]:
    return {
        f"{name}:{h.address}": led.balance(DEMO_ISIN, h.address)
        for name, led in system.ledgers.items()
        for h in holders
    }


def total_supply(system: LocalSystem) -> int:
    return sum(h.total_supply(DEMO_ISIN) for h in system.ledgers.values())


@pytest.fixture
def released(system: LocalSystem) -> Iterator[None]:
    """Leave the shared system with the security released on every ledger."""
    yield
    if halted_ledgers(system):
        cli(system, "release", "--security", DEMO_ISIN, "--all-ledgers", *order_args(system))


def sign_halt_everywhere(system: LocalSystem, action: OrderAction) -> list[Any]:
    """In-process signing (as the CLI does), one order per ledger: quicker than a CLI run,
    so the halt lands while the load is in flight."""
    key = LocalKeySigner(system.depository_key.private_key)
    sequence, expiry = time.time_ns() // 1000, int(time.time()) + 600
    out = []
    for name in (A, B):
        lc = system.network.ledgers[name]
        order = make_order(
            network=lc.network_word,
            ledger=lc.id.word,
            security=SecurityId(DEMO_ISIN).word,
            action=action,
            sequence=sequence,
            expiry=expiry,
        )
        out.append(signed_order_to_pb(sign_order(key, order)))
    return out


def test_depository_halts_a_security_mid_load_then_releases_it(
    system: LocalSystem, stub: Any, released: None
) -> None:
    senders = [system.ledgers[A].make_holder(DEMO_ISIN, 50) for _ in range(LOAD)]
    recipient = DevAccount.generate()
    for h in (*senders, recipient):
        eligible_everywhere(system, h.address)
    supply = total_supply(system)
    tids: list[str] = []

    def submit(sender: DevAccount) -> str:
        req = demo_request(sender.address, recipient.address, "5")
        return str(stub.SubmitTransfer(req, timeout=60).transfer.transfer_id)

    def get(tid: str) -> S.Transfer:
        return stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=30)

    # The load: LOAD transfers A -> B, one every 0.3 s, in the background.
    def load() -> None:
        for sender in senders:
            tids.append(submit(sender))
            time.sleep(0.3)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(load)
        # Mid-load: as soon as a transfer locked, the depository halts the security on B (the
        # target, so the locked ones cannot mint) and on A.
        eventually_sync(
            lambda: any("lock" in get(t).transactions for t in list(tids)), 60, "a lock"
        )
        with system.channel("depository") as ch:
            dep = depository_pb2_grpc.DepositoryServiceStub(ch)
            for signed in reversed(sign_halt_everywhere(system, OrderAction.HALT)):
                dep.SubmitHaltOrder(signed, timeout=30)
        eventually_sync(lambda: halted_ledgers(system) == {A, B}, 60, "halted on A and B")
        running.result(timeout=120)

    # Let steps mined before the halt be recorded, then freeze the picture.
    time.sleep(3)
    at_halt = {t: get(t) for t in tids}
    before = balances(system, [*senders, recipient])
    escrow = system.ledgers[A].escrowed(DEMO_ISIN)
    queued_tid = submit(system.ledgers[A].make_holder(DEMO_ISIN, 50))
    time.sleep(6)

    # Nothing of the security moved: no holder balance, no escrow, no new lock/prepare/mint.
    assert balances(system, [*senders, recipient]) == before
    assert system.ledgers[A].escrowed(DEMO_ISIN) == escrow
    in_flight = 0
    for tid, then in at_halt.items():
        now = get(tid)
        for step in ("lock", "prepare", "mint"):
            assert step not in now.transactions or step in then.transactions, (step, now)
        if then.state == S.TRANSFER_STATE_SUBMITTED:
            # Not yet locked -> queued, the halt as its reason; nothing escrowed.
            assert now.state == S.TRANSFER_STATE_SUBMITTED, now
        if then.state not in TERMINAL and then.state != S.TRANSFER_STATE_SUBMITTED:
            in_flight += 1  # locked: waits to prepare; prepared or COMMIT decided: mint waits
            assert now.state not in (S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED), now
        if now.state not in TERMINAL:
            assert set(now.halted_on) == {A, B}, now
    print("at halt:", sorted(S.TransferState.Name(t.state) for t in at_halt.values()))
    assert in_flight >= 1, "the halt landed after the load finished: nothing was in flight"
    queued = get(queued_tid)
    assert queued.state == S.TRANSFER_STATE_SUBMITTED and "lock" not in queued.transactions
    assert queued.reason.startswith("HALTED: "), queued.reason
    assert set(queued.halted_on) == {A, B}

    # The feed records it: the security's attestation names the halted ledgers and carries
    # the depository's signed orders (the depository can check its own signatures).
    def feed_shows_halt() -> supply_pb2.Attestation | None:
        with system.channel("depository") as ch:
            resp = supply_pb2_grpc.SupplyServiceStub(ch).GetSupply(
                supply_pb2.GetSupplyRequest(security_id=DEMO_ISIN), timeout=30
            )
        att = resp.attestations[0]
        return att if set(att.halted_ledgers) == {A, B} else None

    att = eventually_sync(feed_shows_halt, 60, "the feed shows the halt")
    halts = [o for o in att.halt_orders if o.signed.order.action == OrderAction.HALT]
    assert {o.ledger_id for o in halts} >= {A, B}
    assert all(o.state == depository_pb2.ORDER_STATE_APPLIED for o in halts)

    # Release (the CLI): everything resumes and finishes; conservation is exact.
    out = cli(system, "release", "--security", DEMO_ISIN, "--all-ledgers", *order_args(system))
    assert out.stdout.count('"ledger_id"') == 2, out.stdout
    eventually_sync(lambda: not halted_ledgers(system), 60, "released")
    all_tids = [*tids, queued_tid]
    eventually_sync(lambda: all(get(t).state in TERMINAL for t in all_tids), 180, "all done")
    states = {t: get(t).state for t in all_tids}
    assert all(s == S.TRANSFER_STATE_COMMITTED for s in states.values()), states
    b = system.ledgers[B]
    assert b.balance(DEMO_ISIN, recipient.address) == 5 * LOAD + 5
    assert total_supply(system) == supply + 50, "only the queued sender's new units"
    assert system.ledgers[A].escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == 0
    status = cli(system, "status", "--security", DEMO_ISIN).stdout
    assert "ORDER_STATE_APPLIED" in status


def test_orders_without_the_depository_key_or_role_are_refused(system: LocalSystem) -> None:
    before = halt_status(system)
    lc = system.network.ledgers[A]
    order = make_order(
        network=lc.network_word,
        ledger=lc.id.word,
        security=SecurityId(DEMO_ISIN).word,
        action=OrderAction.HALT,
        sequence=time.time_ns() // 1000,
        expiry=int(time.time()) + 600,
    )
    forged = signed_order_to_pb(sign_order(LocalKeySigner(os.urandom(32)), order))
    with system.channel("depository") as ch:
        stub = depository_pb2_grpc.DepositoryServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitHaltOrder(forged, timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "NotDepository" in (info.value.details() or "")
        stale = make_order(
            network=lc.network_word,
            ledger=lc.id.word,
            security=SecurityId(DEMO_ISIN).word,
            action=OrderAction.HALT,
            sequence=time.time_ns() // 1000,
            expiry=int(time.time()) - 1,
        )
        key = LocalKeySigner(system.depository_key.private_key)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitHaltOrder(signed_order_to_pb(sign_order(key, stale)), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "OrderExpired" in (info.value.details() or "")
    # A brokerage's certificate may not submit orders at all (authorisation rule).
    genuine = signed_order_to_pb(
        sign_order(LocalKeySigner(system.depository_key.private_key), order)
    )
    with system.channel(f"brokerage:{A}") as ch:
        with pytest.raises(grpc.RpcError) as info:
            depository_pb2_grpc.DepositoryServiceStub(ch).SubmitHaltOrder(genuine, timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert halt_status(system).ledgers == before.ledgers
    assert not [o for o in halt_status(system).orders if o.signed.order.sequence == order.sequence]
