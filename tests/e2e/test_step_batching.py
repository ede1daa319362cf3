"""End to end: the coordinator batches its steps (issue 14, ``[batching] enabled``) on the
running system: two anvil ledgers and a real Fabric network, mTLS everywhere.

One SubmitTransfers batch of 40 transfers from brokerage-a, half to brokerage-b (EVM->EVM),
half to brokerage-f (EVM->Fabric), ten of them to recipients not eligible on their target:
those abort alone, the rest commit, balances and supply exact, nothing left in escrow. The
records prove the batching: fewer distinct ledger transactions than transfers, and the
decisions hold batch certificates; the relayers' audit logs show admission's holder reads
coalesced into GetHolders calls.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import demo_request

pytestmark = [pytest.mark.e2e, pytest.mark.batch, pytest.mark.fabric]

A, B, F = "brokerage-a", "brokerage-b", "brokerage-f"
TRANSFERS = 40
BATCH = 10


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Two anvil ledgers and one Fabric ledger behind one bridge whose coordinator batches."""
    with LocalSystem(
        Path(tmp_path_factory.mktemp("batched")),
        ledger_names=((A, 31001), (B, 31002)),
        fabric_ledger_names=(F,),
        block_time=0.5,
        transfer_ttl=60,
        batching={"enabled": True},
    ) as s:
        yield s


def test_a_burst_settles_in_batched_steps_each_transfer_alone(batched: LocalSystem) -> None:
    s = batched
    a, b, f = s.ledgers[A], s.ledgers[B], s.fabric[F]
    holder = a.make_holder(DEMO_ISIN, 1000)
    a.set_eligible(DEMO_ISIN, holder.address)
    good = {
        B: [DevAccount.generate() for _ in range(3)],
        F: [DevAccount.generate() for _ in range(3)],
    }
    for r in good[B]:
        b.set_eligible(DEMO_ISIN, r.address)
    for r in good[F]:
        f.set_eligible(DEMO_ISIN, r.address)
    outsiders = [DevAccount.generate() for _ in range(2)]  # eligible nowhere
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) + f.total_supply(DEMO_ISIN)

    plan: list[tuple[str, str, int, bool]] = []  # target, recipient, amount, eligible
    for i in range(TRANSFERS):
        target = B if i % 2 == 0 else F
        eligible = i not in {3, 6, 7, 11, 14, 18, 23, 27, 30, 35}
        recipient = good[target][i % 3].address if eligible else outsiders[i % 2].address
        plan.append((target, recipient, 1 + i % 5, eligible))
    items = [
        s.brokerage.instruct(demo_request(holder.address, r, str(n), source=A, target=t))
        for t, r, n, _ in plan
    ]
    # Four brokerage back offices submit their batches of ten at the same moment.
    requests = [
        S.SubmitTransfersRequest(
            batch_id=str(uuid.uuid4()), source_ledger=A, items=items[i : i + BATCH]
        )
        for i in range(0, TRANSFERS, BATCH)
    ]
    started = time.monotonic()
    final: dict[int, int] = {}
    with s.channel(f"brokerage:{A}") as ch:
        stub = transfer_pb2_grpc.TransferServiceStub(ch)
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda r: stub.SubmitTransfers(r, timeout=60), requests))
        for resp in answers:
            assert [r.outcome for r in resp.results] == [S.BATCH_ITEM_OUTCOME_CREATED] * BATCH
        for n, request in enumerate(requests):
            for m in stub.WatchBatch(
                S.WatchBatchRequest(batch_id=request.batch_id, source_ledger=A), timeout=80
            ):
                assert not m.HasField("error"), m
                final[n * BATCH + m.index] = m.update.state
    settled = time.monotonic() - started
    print(f"{TRANSFERS} transfers settled in {settled:.1f} s with batched steps")
    expected = {
        i: S.TRANSFER_STATE_COMMITTED if ok else S.TRANSFER_STATE_ABORTED
        for i, (_, _, _, ok) in enumerate(plan)
    }
    assert final == expected

    # Balances exact: each committed transfer moved its units once, each aborted one none.
    moved = sum(n for _, _, n, ok in plan if ok)
    assert a.balance(DEMO_ISIN, holder.address) == 1000 - moved
    for target, ledger in ((B, b), (F, f)):
        for r in good[target]:
            want = sum(n for t, rr, n, ok in plan if ok and t == target and rr == r.address)
            assert ledger.balance(DEMO_ISIN, r.address) == want
        assert all(ledger.balance(DEMO_ISIN, o.address) == 0 for o in outsiders)
    assert a.escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == f.escrowed(DEMO_ISIN) == 0
    after = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) + f.total_supply(DEMO_ISIN)
    assert after == supply

    # The records name fewer ledger transactions than steps.
    keys = [i.idempotency_key for i in items]
    marks = ",".join("?" * len(keys))
    rows = s.query_coordinator(
        f"SELECT transfer_id, transactions FROM transfers"
        f" WHERE source_ledger = ? AND idempotency_key IN ({marks})",
        (A, *keys),
    )
    assert len(rows) == TRANSFERS
    steps: dict[str, list[str]] = {}
    for _, txs in rows:
        for step, tx in json.loads(txs).items():
            steps.setdefault(step, []).append(tx)
    assert len(steps["lock"]) == TRANSFERS
    distinct = {step: len(set(txs)) for step, txs in steps.items()}
    print("ledger transactions per step (distinct/recorded):",
          {k: f"{distinct[k]}/{len(v)}" for k, v in steps.items()})  # fmt: skip
    # Batching happened: the four batches' locks share few transactions (their items arrive
    # as fast as admission records them); the later steps gather less (the transfers reach
    # them at different moments), so only fewer-than-steps is asserted for them.
    assert distinct["lock"] <= TRANSFERS / 2
    assert Counter(steps["lock"]).most_common(1)[0][1] >= 4
    assert distinct["prepare"] < len(steps["prepare"])
    assert sum(distinct.values()) < sum(len(v) for v in steps.values())
    # and the decisions hold batch certificates (each transfer its own proof)
    tids = [r[0] for r in rows]
    marks = ",".join("?" * len(tids))
    decisions = s.query_coordinator(
        f"SELECT kind, certificates FROM decisions WHERE transfer_id IN ({marks})", tids
    )
    assert len(decisions) == TRANSFERS
    types = Counter(
        c.get("type", "single") for _, certs in decisions for c in json.loads(certs).values()
    )
    # Since schema version 9 an item names its batch certificate, stored once per batch and
    # ledger (ADR 0025), beside its own proof.
    assert types["batch-ref"] > types["single"] and types["batch"] == 0
    named = {c["certificate"] for _, certs in decisions for c in json.loads(certs).values()
             if c.get("type") == "batch-ref"}  # fmt: skip
    stored = s.query_coordinator("SELECT COUNT(*) FROM batch_certificates")
    assert 0 < len(named) <= stored[0][0] < types["batch-ref"]

    # Admission read the holders in coalesced GetHolders calls (issue 14 item 4): not one
    # GetHolder; on the source, far fewer calls than the transfers' 40 sender reads.
    calls = {name: relayer_calls(s, name) for name in (A, B, F)}
    print("relayer holder reads:", {n: (c["GetHolders"], c["GetHolder"]) for n, c in calls.items()})
    assert all(c["GetHolder"] == 0 and c["GetHolders"] > 0 for c in calls.values())
    assert calls[A]["GetHolders"] < TRANSFERS / 2


def relayer_calls(s: LocalSystem, ledger: str) -> Counter[str]:
    """The RPCs the relayer of ``ledger`` allowed, by method name (its audit log)."""
    lines = (s.workdir / "audit" / f"relayer-{ledger}.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return Counter(e["method"].rsplit("/", 1)[-1] for e in entries if e["allowed"])
