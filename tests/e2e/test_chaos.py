"""Chaos, bounded: SIGKILL and restart the coordinator, relayers and verifiers at random
while transfers run from A to B (some to an ineligible recipient, which abort); in the same
fault schedule the depository halts the security on both ledgers and releases it (the real
CLI), and the bridge operator rotates the committee to epoch 2, removing one member and
adding a spare one (the real CLI); afterwards nothing is lost or duplicated and every supply
record verifies and balances, across the epoch change (the genesis committee plus the
certified rotation chain). ``bench/soak.py`` runs the same faults longer, over every lane,
with ledger outages.

Asserts: every transfer reaches a terminal state; each holder's balances equal what the
sequence of outcomes implies (committed moves, aborted and failed do not); total supply
is conserved; no escrow is left; one transfer per idempotency key. Prints a summary.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bridge.devnet.anvil import DevAccount
from bridge.devnet.chaos import ChaosScheduler, GovernancePlan
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.supply_client import SupplyFeed, audit_feed, settled_position
from bridge.v1 import (
    depository_pb2,
    depository_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    transfer_pb2_grpc,
)
from bridge.v1 import transfer_pb2 as S
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.governance]

A, B = "brokerage-a", "brokerage-b"
TRANSFERS = 40
UNITS = 100
TERMINAL = {S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED}


@pytest.fixture(scope="module")
def chaos_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(
        Path(tmp_path_factory.mktemp("chaos")), block_time=0.5, transfer_ttl=120, spare_members=1
    ) as s:
        yield s


@dataclass
class Planned:
    key: str
    holder: DevAccount
    recipient: str
    src: str
    dst: str
    amount: int
    eligible: bool


def test_kills_during_transfers_lose_and_duplicate_nothing(chaos_system: LocalSystem) -> None:
    s = chaos_system
    rng = random.Random(20261121)
    a, b = s.ledgers[A], s.ledgers[B]
    holders = [a.make_holder(DEMO_ISIN, UNITS) for _ in range(6)]
    for h in holders:
        b.set_eligible(DEMO_ISIN, h.address)
        b.node.fund(h.address)
    outsider = DevAccount.generate()  # eligible nowhere: transfers to it abort
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    feed_start = asyncio.run(
        settled_position(s.coordinator_target, DEMO_ISIN, time.time(), 60, s.identity("depository"))
    )
    # Transfers A -> B of at most UNITS // 10 units each, never more than a holder has:
    # every planned transfer is accepted, so every outcome is the system's, not the plan's.
    plan: list[Planned] = []
    for _ in range(TRANSFERS):
        h = rng.choice(holders)
        eligible = rng.random() > 0.15
        plan.append(
            Planned(
                str(uuid.uuid4()),
                h,
                h.address if eligible else outsider.address,
                A,
                B,
                rng.randint(1, UNITS // 10),
                eligible,
            )
        )
    planned = Counter[str]()
    for p in plan:
        planned[p.holder.address] += p.amount
    assert max(planned.values()) <= UNITS, "the plan would overdraw a holder"
    chaos = ChaosScheduler(s, seed=7, governance=GovernancePlan())
    chaos.start()
    tids: dict[str, str] = {}
    started = time.monotonic()
    try:
        for p in plan:
            req = S.SubmitTransferRequest(
                idempotency_key=p.key, security_id=DEMO_ISIN, source_ledger=p.src,
                target_ledger=p.dst, sender=p.holder.address, recipient=p.recipient,
                amount=str(p.amount),
            )  # fmt: skip
            tids[p.key] = s.submit(req)
            time.sleep(0.3)
        # Slow restarts on a loaded machine can stretch the schedule past the submissions;
        # keep injecting (transfers are still in flight) until enough faults happened.
        eventually_sync(
            lambda: sum(chaos.log.kills.values()) >= 5 and chaos.governance_done(),
            150,
            "five kills, the halt, the release and the rotation",
            interval=0.5,
        )
    finally:
        faults = chaos.stop()
    for name, proc in s.processes.items():
        if not proc.alive():
            s.start_process(name)

    def states() -> dict[str, int] | None:
        out: dict[str, int] = {}
        try:
            with s.channel("depository") as ch:
                stub = transfer_pb2_grpc.TransferServiceStub(ch)
                for key, tid in tids.items():
                    out[key] = stub.GetTransfer(
                        S.GetTransferRequest(transfer_id=tid), timeout=10
                    ).state
        except grpc.RpcError:
            return None
        return out if all(v in TERMINAL for v in out.values()) else None

    final = eventually_sync(states, 240, "every transfer to reach a terminal state", interval=1.0)
    elapsed = time.monotonic() - started
    outcomes = Counter(
        S.TransferState.Name(v).removeprefix("TRANSFER_STATE_") for v in final.values()
    )
    moved: Counter[str] = Counter()
    for p in plan:
        if final[p.key] == S.TRANSFER_STATE_COMMITTED:
            assert p.eligible, "a transfer to an ineligible recipient committed"
            moved[p.holder.address] += p.amount
    for h in holders:
        assert a.balance(DEMO_ISIN, h.address) == UNITS - moved[h.address], (
            "units lost or doubled on A"
        )
        assert b.balance(DEMO_ISIN, h.address) == moved[h.address], "units lost or doubled on B"
    assert b.balance(DEMO_ISIN, outsider.address) == 0
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply
    assert a.escrowed(DEMO_ISIN) == 0
    assert b.escrowed(DEMO_ISIN) == 0
    assert len(set(tids.values())) == len(plan), "one transfer per idempotency key"
    # The supply identity held in every attestation, across coordinator and verifier kills.
    asyncio.run(
        settled_position(s.coordinator_target, DEMO_ISIN, time.time(), 60, s.identity("depository"))
    )
    assert s.committee is not None
    checked, violations = asyncio.run(
        audit_feed(
            s.coordinator_target,
            s.committee,
            feed_start,
            DEMO_ISIN,
            identity=s.identity("depository"),
        )
    )
    assert not violations, violations
    assert checked >= 5, "records were produced while transfers ran"
    # The governance steps all ran and every ledger applied them: epoch 2 is in force
    # everywhere, the feed's latest record is of epoch 2, the security is released.
    assert not faults.governance_errors, faults.governance_errors
    assert set(faults.governance) == {"halt", "release", "rotation"}, faults.governance
    with s.channel("bridge-operator") as ch:
        rotation = operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
            operator_pb2.GetRotationRequest(next_epoch=2), timeout=10
        )
    assert {x.status for x in rotation.ledgers} <= {"active", "old-epoch-expired"}, rotation
    assert len(rotation.ledgers) == 2

    async def latest_epoch() -> int:
        feed = SupplyFeed(s.coordinator_target, identity=s.identity("depository"))
        try:
            return (await feed.latest(DEMO_ISIN))[0].signed.record.epoch
        finally:
            await feed.close()

    assert asyncio.run(latest_epoch()) == 2, "the feed did not continue under epoch 2"
    with s.channel("depository") as ch:
        halts = depository_pb2_grpc.DepositoryServiceStub(ch).GetHaltStatus(
            depository_pb2.GetHaltStatusRequest(security_id=DEMO_ISIN), timeout=10
        )
    assert not [h.ledger_id for h in halts.ledgers if h.security_halted], halts
    print(
        f"\nchaos summary: {len(plan)} transfers in {elapsed:.0f} s;"
        f" kills {dict(faults.kills)} ({sum(faults.kills.values())} in all);"
        f" outcomes {dict(outcomes)};"
        f" restart-to-listening {faults.restart_seconds}; {checked} supply records verified;"
        f" governance (s to applied everywhere) {faults.governance}"
    )
    assert sum(faults.kills.values()) >= 5, "the chaos scheduler did not inject enough faults"
