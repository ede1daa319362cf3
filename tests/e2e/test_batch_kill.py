"""End to end: SIGKILL the coordinator and then the source relayer while a batched LOCK is in
flight (issue 14 item 6: what the chaos test checks still holds with batched steps on).

Two anvil ledgers, the coordinator batching its steps (``[batching] enabled``). The source
ledger stops producing blocks, a batch of transfers is submitted, and the test waits until
the relayer's ``lockBatch`` transaction sits in the node's pool: sent, not mined, so not
final. Then the coordinator and the relayer are SIGKILLed, one after the other, and
restarted while the ledger is still stalled (the restarted coordinator drives the LOCKs
again through a relayer that has forgotten its pending batch); then blocks resume.

Checked: every transfer reaches exactly one terminal state (the eligible ones COMMITTED, the
one to an ineligible recipient ABORTED), one transfer per idempotency key, balances exact,
supply conserved, no escrow. Measured and printed: how many ``lockBatch`` transactions the
source ledger mined and how many of them only skipped items (a re-sent batch whose first
transaction was still pending: no units move twice, it costs gas).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils.abi import event_abi_to_log_topic, function_abi_to_4byte_selector

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.ledgers.evm.artifacts import load_abi
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import demo_request
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.batch]

A, B = "brokerage-a", "brokerage-b"
TRANSFERS = 12
INELIGIBLE = 5  # the index of the one transfer to a recipient not eligible on B
TERMINAL = {S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED}


def _selector(name: str) -> str:
    abi: Any = next(f for f in load_abi("BridgeEndpoint") if f.get("name") == name)
    return "0x" + function_abi_to_4byte_selector(abi).hex()


LOCK_BATCH = _selector("lockBatch")


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Two anvil ledgers behind one bridge whose coordinator batches its steps."""
    with LocalSystem(
        Path(tmp_path_factory.mktemp("batchkill")),
        ledger_names=((A, 31001), (B, 31002)),
        block_time=0.5,
        transfer_ttl=180,
        batching={"enabled": True, "max_items": 20},
    ) as s:
        yield s


def _pool(rpc: Any, to: str) -> list[dict[str, Any]]:
    """The transactions to ``to`` waiting in the anvil node's pool."""
    content = rpc("txpool_content", [])
    out: list[dict[str, Any]] = []
    for by_nonce in content.get("pending", {}).values():
        out += [tx for tx in by_nonce.values() if str(tx.get("to", "")).lower() == to]
    return out


def _items(tx: dict[str, Any]) -> int:
    """The number of items of a ``lockBatch(Terms[] ts, bytes[] instructions)`` call: the
    length word of ``ts``, at the offset its head names."""
    data = bytes.fromhex(str(tx["input"])[2:])[4:]
    offset = int.from_bytes(data[:32], "big")
    return int.from_bytes(data[offset : offset + 32], "big")


def _pending_items(rpc: Any, to: str) -> int:
    """How many transfers the pending ``lockBatch`` transactions to ``to`` carry."""
    return sum(_items(t) for t in _pool(rpc, to) if t["input"].startswith(LOCK_BATCH))


def _sizes(rpc: Any, to: str) -> list[int]:
    """The item counts of the pending ``lockBatch`` transactions to ``to``."""
    return [_items(t) for t in _pool(rpc, to) if t["input"].startswith(LOCK_BATCH)]


def _mined_lock_batches(rpc: Any, to: str, first: int) -> list[dict[str, Any]]:
    """The receipts of the ``lockBatch`` transactions to ``to`` mined from block ``first``."""
    last = int(rpc("eth_blockNumber", []), 16)
    out = []
    for n in range(first, last + 1):
        block = rpc("eth_getBlockByNumber", [hex(n), True])
        for tx in block["transactions"]:
            if str(tx.get("to", "")).lower() == to and tx["input"].startswith(LOCK_BATCH):
                out.append(rpc("eth_getTransactionReceipt", [tx["hash"]]))
    return out


def test_killing_coordinator_and_relayer_mid_batch_loses_and_duplicates_nothing(
    batched: LocalSystem,
) -> None:
    s = batched
    a, b = s.ledgers[A], s.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 1000)
    recipients = [DevAccount.generate() for _ in range(3)]
    for r in recipients:
        b.set_eligible(DEMO_ISIN, r.address)
    outsider = DevAccount.generate()  # eligible nowhere: its transfer must abort alone
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    plan = [
        (outsider.address if i == INELIGIBLE else recipients[i % 3].address, 1 + i % 4)
        for i in range(TRANSFERS)
    ]
    items = [
        s.brokerage.instruct(demo_request(holder.address, r, str(n), source=A, target=B))
        for r, n in plan
    ]
    keys = [i.idempotency_key for i in items]
    endpoint = a.endpoint.address.lower()
    rpc = a.node.rpc
    first_block = int(rpc("eth_blockNumber", []), 16) + 1

    stall, resume = a.faults()["ledger"]
    stall()
    try:
        request = S.SubmitTransfersRequest(batch_id=str(uuid.uuid4()), source_ledger=A, items=items)
        with s.channel(f"brokerage:{A}") as ch:
            answer = transfer_pb2_grpc.TransferServiceStub(ch).SubmitTransfers(request, timeout=60)
        assert [r.outcome for r in answer.results] == [S.BATCH_ITEM_OUTCOME_CREATED] * TRANSFERS

        # The hook: the relayer's batched LOCK transactions are sent and wait in the pool.
        # The first items admitted go out at once (nothing in flight for the ledger), the
        # rest gather behind them, within max_in_flight (2) flushes: either one of those
        # already carries several items, or one block mines the first flushes and the
        # gathered items go out as one batch (or two); the test catches it pending.
        eventually_sync(
            lambda: _pending_items(rpc, endpoint),
            timeout=60,
            what="a lockBatch transaction pending on the stalled source ledger",
        )
        try:  # the gathered items may already be pending (the drivers' reads coalesce)
            eventually_sync(
                lambda: max(_sizes(rpc, endpoint), default=0) > 1,
                timeout=10,
                what="a lockBatch of several items pending before a block",
            )
        except AssertionError:  # else one block mines the first flushes and they go out
            rpc("evm_mine", [])
            eventually_sync(
                lambda: max(_sizes(rpc, endpoint), default=0) > 1,
                timeout=60,
                what="a lockBatch of several items pending on the stalled source ledger",
            )
        pending_before, since = _pending_items(rpc, endpoint), time.monotonic()
        while time.monotonic() - since < 3 and pending_before < TRANSFERS:
            time.sleep(0.2)
            if (now := _pending_items(rpc, endpoint)) != pending_before:
                pending_before, since = now, time.monotonic()
        in_flight = _sizes(rpc, endpoint)
        s.processes["coordinator"].kill9()
        s.processes[f"relayer-{A}"].kill9()
        s.start_process("coordinator")
        s.start_process(f"relayer-{A}")
        # Let the restarted coordinator drive the LOCKs again while the first transaction
        # is still pending (a relayer restarted mid-batch may send the batch again).
        time.sleep(6)
        pending_after = _pending_items(rpc, endpoint)
    finally:
        resume()

    wanted = set(keys)
    seen: list[tuple[str, int]] = []  # (idempotency key, state), one per transfer record

    def all_terminal() -> bool:
        seen[:] = [
            (t.idempotency_key, t.state) for t in s.list_transfers() if t.idempotency_key in wanted
        ]
        return len(seen) >= TRANSFERS and all(v in TERMINAL for _, v in seen)

    eventually_sync(all_terminal, timeout=240, what="every transfer terminal")
    assert sorted(k for k, _ in seen) == sorted(keys), "one transfer per idempotency key"
    by_key = dict(seen)
    assert [by_key[k] for k in keys] == [
        S.TRANSFER_STATE_ABORTED if i == INELIGIBLE else S.TRANSFER_STATE_COMMITTED
        for i in range(TRANSFERS)
    ]
    rows = s.query_coordinator(
        f"SELECT COUNT(*) FROM transfers WHERE idempotency_key IN ({','.join('?' * len(keys))})",
        keys,
    )
    assert rows[0][0] == TRANSFERS

    # Balances, escrow and supply exact: each committed transfer moved its units once.
    moved = sum(n for i, (_, n) in enumerate(plan) if i != INELIGIBLE)
    assert a.balance(DEMO_ISIN, holder.address) == 1000 - moved
    for r in recipients:
        want = sum(n for i, (to, n) in enumerate(plan) if i != INELIGIBLE and to == r.address)
        assert b.balance(DEMO_ISIN, r.address) == want
    assert b.balance(DEMO_ISIN, outsider.address) == 0
    assert a.escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == 0
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply

    # Measured: a re-sent batch whose first transaction was still pending only skips items.
    receipts = _mined_lock_batches(rpc, endpoint, first_block)
    skip_topic = _event_topic("BatchItemSkipped")
    moving = [r for r in receipts if any(_topic(x) != skip_topic for x in r["logs"])]
    skipping = [r for r in receipts if r not in moving]
    wasted = sum(int(r["gasUsed"], 16) for r in skipping)
    print(
        f"pending before the kills: lockBatch transactions of {in_flight} items,"
        f" after the restarts: {pending_after} items;"
        f" mined lockBatch transactions: {len(receipts)}, moving units: {len(moving)},"
        f" only skipping items: {len(skipping)} ({wasted} gas)"
    )
    assert moving, "the batched LOCK never moved a unit"


def _event_topic(name: str) -> str:
    abi: Any = next(e for e in load_abi("BridgeEndpoint") if e.get("name") == name)
    return "0x" + event_abi_to_log_topic(abi).hex()


def _topic(log: dict[str, Any]) -> str:
    return str(log["topics"][0]).lower() if log.get("topics") else ""
