"""``EvmAdapter.submit_batch`` on a stalled anvil (ADR 0025 "Relayer"): a retried batch waits
for its pending transaction instead of sending a second one; a replay of a settled batch
sends nothing; an item already locked by a single step is skipped, the rest applied once."""

from __future__ import annotations

import asyncio

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import Unavailable
from bridge.domain.ledger_batches import BatchItem
from bridge.domain.legs import Action, Leg, LegState
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EvmAdapter
from tests.integration.conftest import TwoLedgers, instruct

pytestmark = [pytest.mark.integration, pytest.mark.batch]


async def pending_batch_hash(env: TwoLedgers, relayer: str) -> str:
    """The hash of the relayer's one pending transaction, once the adapter has simulated and
    sent it (automine off, so it stays in the pool)."""
    for _ in range(100):
        if env.a.w3.eth.get_transaction_count(
            relayer, "pending"
        ) > env.a.w3.eth.get_transaction_count(relayer):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the batch was not sent")
    pool = env.node.rpc("txpool_content", [])["pending"]
    (by_nonce,) = [v for k, v in pool.items() if k.lower() == relayer.lower()]
    (pending,) = by_nonce.values()
    return str(pending["hash"])


async def test_a_retried_batch_waits_for_its_pending_transaction(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=1.5)
    sender, bob = env.a.holder(6), env.b.holder()
    ts = [env.terms(sender, bob, 2) for _ in range(3)]
    items = [BatchItem(t, instruct(t)) for t in ts]
    relayer = env.a.relayer.address
    mined_before = env.a.w3.eth.get_transaction_count(relayer)
    env.node.rpc("evm_setAutomine", [False])
    try:
        for _ in range(2):  # the first attempt, then a retry while it is still pending
            with pytest.raises(Unavailable, match="not final"):
                await a.submit_batch(Action.LOCK, items)
        pending = env.a.w3.eth.get_transaction_count(relayer, "pending")
        assert pending == mined_before + 1, "the retry sent a second transaction"
        env.node.rpc("anvil_mine", [hex(1)])
    finally:
        env.node.rpc("evm_setAutomine", [True])
    again = await a.submit_batch(Action.LOCK, items)
    assert again.tx_id == "" and [r.skipped for r in again.items] == [True] * 3
    assert env.a.w3.eth.get_transaction_count(relayer) == mined_before + 1, "one batch sent"
    assert env.a.balance(sender.address) == 0
    await a.close()


async def test_an_item_a_single_step_locked_first_is_skipped_by_the_batch(
    two_ledgers: TwoLedgers,
) -> None:
    """Item 1 was locked by a single step (same terms) before the batch: the batch mines,
    skips it and locks the others, so each item is locked once and paid for once."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=5)
    sender, bob = env.a.holder(3), env.b.holder()
    ts = [env.terms(sender, bob, 1) for _ in range(3)]
    items = [BatchItem(t, instruct(t)) for t in ts]
    await a.submit(Action.LOCK, ts[1], None, instruct(ts[1]))
    got = await a.submit_batch(Action.LOCK, items)
    assert [r.skipped for r in got.items] == [False, True, False]
    assert [r.state for r in got.items] == [LegState.LOCKED] * 3
    assert env.a.balance(sender.address) == 0
    assert (await a.get_leg(ts[2].transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    await a.close()


async def test_a_batch_reverting_when_mined_names_the_item_that_changed(
    two_ledgers: TwoLedgers,
) -> None:
    """The batch passed its simulation, then the issuer froze item 1's holder in the same
    block, ahead of it: the mined batch reverts as a whole. The adapter answers the item's
    own refusal naming it (review s19 finding 1), not Unavailable for every item, so the
    coordinator drops that item and the others go again; nothing moved."""
    from bridge.domain.errors import LedgerRejected
    from bridge.domain.ledger_batches import refused_item

    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    good, bad, bob = env.a.holder(2), env.a.holder(2), env.b.holder()
    ts = [env.terms(good, bob, 2), env.terms(bad, bob, 2)]
    items = [BatchItem(t, instruct(t)) for t in ts]
    env.node.rpc("evm_setAutomine", [False])
    try:
        task = asyncio.create_task(a.submit_batch(Action.LOCK, items))
        # The batch is pending. Take it out of the pool, let the issuer's freeze of item 1's
        # holder mine first, then put the batch's own signed bytes back: it mines, reverts.
        pending = await pending_batch_hash(env, env.a.relayer.address)
        raw = env.node.rpc("eth_getRawTransactionByHash", [pending])
        env.node.rpc("anvil_dropTransaction", [pending])
        env.node.rpc("evm_setAutomine", [True])
        deploy.set_frozen(env.a.w3, env.a.admin.private_key, env.a.token, bad.address)
        env.a.w3.eth.send_raw_transaction(raw)
        with pytest.raises(LedgerRejected) as info:
            await asyncio.wait_for(task, 30)
    finally:
        env.node.rpc("evm_setAutomine", [True])
    assert info.value.reason is ErrorReason.HOLDER_FROZEN, info.value
    assert refused_item(info.value) == 1
    assert env.a.balance(good.address) == 2 and env.a.balance(bad.address) == 2
    # The rest go again without it and lock.
    again = await a.submit_batch(Action.LOCK, items[:1])
    assert [r.state for r in again.items] == [LegState.LOCKED]
    await a.close()


async def test_a_batch_the_node_dropped_is_not_waited_for(two_ledgers: TwoLedgers) -> None:
    """anvil skipped a batch that did not fit a full block and dropped it; the relayer asked
    for its receipt once a block until the coordinator's 30 s deadline (the end-of-day
    bench's 20-25 s tails). Now, from the third block without a receipt, it asks whether
    the node knows it, and when two blocks in a row say not, Unavailable says it was
    dropped; the retry sends it again and every item is locked once."""
    from bridge.ledgers.evm.adapter import LOST_AFTER_BLOCKS

    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=60)
    sender, bob = env.a.holder(6), env.b.holder()
    ts = [env.terms(sender, bob, 2) for _ in range(3)]
    items = [BatchItem(t, instruct(t)) for t in ts]
    relayer = env.a.relayer.address
    mined_before = env.a.w3.eth.get_transaction_count(relayer)
    env.node.rpc("evm_setAutomine", [False])
    try:
        task = asyncio.create_task(a.submit_batch(Action.LOCK, items))
        env.node.rpc("anvil_dropTransaction", [await pending_batch_hash(env, relayer)])
        began = asyncio.get_running_loop().time()
        for _ in range(LOST_AFTER_BLOCKS + 20):  # blocks without it, until the verdict
            env.node.rpc("anvil_mine", [hex(1)])
            await asyncio.sleep(0.3)
            if task.done():
                break
        with pytest.raises(Unavailable, match="was dropped by"):
            await asyncio.wait_for(task, 1)
        assert asyncio.get_running_loop().time() - began < 10, "waited as for a live one"
    finally:
        env.node.rpc("evm_setAutomine", [True])
    assert env.a.w3.eth.get_transaction_count(relayer) == mined_before, "nothing mined"
    again = await a.submit_batch(Action.LOCK, items)  # the retry sends it again
    assert [r.skipped for r in again.items] == [False] * 3
    assert [r.state for r in again.items] == [LegState.LOCKED] * 3
    assert env.a.w3.eth.get_transaction_count(relayer) == mined_before + 1, "one batch mined"
    assert env.a.balance(sender.address) == 0
    await a.close()


async def test_a_batch_queued_behind_a_nonce_gap_is_waited_for_not_resent(
    two_ledgers: TwoLedgers,
) -> None:
    """Review helper-105: a transaction the node holds queued behind a nonce gap is known,
    not dropped. Resending it would fill the gap and mine both copies; it is waited for
    while blocks pass, and mines once the gap is filled."""
    from eth_account import Account

    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=60)
    sender, bob = env.a.holder(4), env.b.holder()
    ts = [env.terms(sender, bob, 2) for _ in range(2)]
    items = [BatchItem(t, instruct(t)) for t in ts]
    relayer = env.a.relayer.address
    gap = env.a.w3.eth.get_transaction_count(relayer, "pending")
    real = a._nonces.next_nonce

    async def one_ahead() -> int:  # the batch takes nonce gap + 1: queued, not executable
        return await real() + 1

    a._nonces.next_nonce = one_ahead  # type: ignore[method-assign]
    task = asyncio.create_task(a.submit_batch(Action.LOCK, items))
    for _ in range(100):
        if env.node.rpc("txpool_content", [])["queued"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the batch was not queued")
    a._nonces.next_nonce = real  # type: ignore[method-assign]
    for _ in range(8):  # blocks pass; the batch is known (queued): no verdict
        env.node.rpc("anvil_mine", [hex(1)])
        await asyncio.sleep(0.3)
    assert not task.done(), task
    fill = Account.sign_transaction(
        {"to": relayer, "value": 0, "gas": 21_000, "nonce": gap, "chainId": env.a.w3.eth.chain_id,
         "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9},
        env.a.relayer.private_key,
    )  # fmt: skip
    env.a.w3.eth.send_raw_transaction(fill.raw_transaction)
    done = await asyncio.wait_for(task, 20)
    assert [r.state for r in done.items] == [LegState.LOCKED] * 2
    assert env.a.w3.eth.get_transaction_count(relayer) == gap + 2, "the fill and one batch"
    await a.close()
