"""The EVM ledger adapter against a real anvil: events, idempotent steps, nonces, errors."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

import pytest

from bridge.devnet.processes import free_port
from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.ids import SecurityId
from bridge.domain.legs import Action, Leg, LegState
from bridge.ledgers.evm.adapter import EvmAdapter
from tests.integration.conftest import ISIN, TwoLedgers, address_word, instruct
from tests.support import eventually

pytestmark = pytest.mark.integration


def adapters(env: TwoLedgers) -> tuple[EvmAdapter, EvmAdapter]:
    return (
        EvmAdapter(env.a.config(), env.a.relayer.private_key),
        EvmAdapter(env.b.config(), env.b.relayer.private_key),
    )


async def test_one_nonce_owner_under_concurrency_and_resync_after_outside_use(
    two_ledgers: TwoLedgers,
) -> None:
    env = two_ledgers
    a, _ = adapters(env)
    holders = [env.a.holder(1) for _ in range(8)]
    bob = env.b.holder()
    terms = [env.terms(h, bob, 1) for h in holders]
    results = await asyncio.gather(*(a.submit(Action.LOCK, t, None, instruct(t)) for t in terms))
    assert len({r.tx_id for r in results}) == 8
    # Someone else uses the operator key: the adapter's cached nonce is now stale.
    raw = env.a.w3.eth.account.sign_transaction(
        {
            "to": env.a.relayer.address,
            "value": 0,
            "gas": 21_000,
            "gasPrice": env.a.w3.eth.gas_price * 2,
            "nonce": env.a.w3.eth.get_transaction_count(env.a.relayer.address, "pending"),
            "chainId": env.a.node.chain_id,
        },
        env.a.relayer.private_key,
    )
    env.a.w3.eth.send_raw_transaction(raw.raw_transaction)
    late = env.terms(env.a.holder(1), bob, 1)
    out = await a.submit(Action.LOCK, late, None, instruct(late))
    assert not out.already_applied
    assert (await a.get_leg(late.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    await a.close()


async def test_finality_depth_hides_recent_blocks(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    deep = EvmAdapter(env.a.config(finality_depth=3))
    latest = env.a.w3.eth.block_number
    assert await deep.finalized_height() == latest - 3
    alice, bob = env.a.holder(1), env.b.holder()
    t = env.terms(alice, bob, 1)
    shallow = EvmAdapter(env.a.config(), env.a.relayer.private_key)
    submit = asyncio.create_task(shallow.submit(Action.LOCK, t, None, instruct(t)))

    async def mined() -> bool:  # at depth 0: the lock's block exists
        return (await shallow.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED

    await eventually(mined, 30, "the lock mined at depth 0")
    assert (await deep.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    env.node.rpc("anvil_mine", [hex(3)])
    await submit
    assert (await deep.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    await deep.close()
    await shallow.close()


async def test_holder_status_and_address_parsing(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    a = EvmAdapter(env.a.config())
    alice = env.a.holder(7)
    status = await a.holder_status(SecurityId(ISIN), address_word(alice.address))
    assert (status.balance, status.eligible, status.frozen, status.paused) == (
        7,
        True,
        False,
        False,
    )
    unknown = await a.holder_status(SecurityId("US0378331005"), address_word(alice.address))
    assert not unknown.security_registered
    with pytest.raises(InvalidInput):
        a.parse_address("0x1234")
    assert a.format_address(a.parse_address(alice.address.lower())) == alice.address
    await a.close()


async def test_unreachable_ledger_is_unavailable_not_an_error(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    dead = EvmAdapter(env.a.config(rpc_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(Unavailable):
        await dead.finalized_height()
    await dead.close()


async def test_a_dropped_transaction_does_not_wedge_later_sends(two_ledgers: TwoLedgers) -> None:
    """The node evicts a pending transaction: the adapter re-reads its nonce instead of
    queueing every later transaction behind the gap."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=1.5)
    alice, bob = env.a.holder(2), env.b.holder()
    first, second = env.terms(alice, bob, 1), env.terms(alice, bob, 1)
    env.node.rpc("evm_setAutomine", [False])
    try:
        with pytest.raises(Unavailable):
            await a.submit(Action.LOCK, first, None, instruct(first))
        env.node.rpc("anvil_dropAllTransactions", [])
    finally:
        env.node.rpc("evm_setAutomine", [True])
    out = await a.submit(Action.LOCK, second, None, instruct(second))
    assert not out.already_applied
    assert (await a.get_leg(second.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    assert (await a.get_leg(first.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    await a.close()


async def test_a_retried_step_waits_for_its_pending_transaction(two_ledgers: TwoLedgers) -> None:
    """A stalled ledger: the first attempt's lock is pending when the retry comes. The retry
    must wait for it, not send a second lock that would revert (and cost gas) once the
    first is mined."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=1.5)
    alice, bob = env.a.holder(1), env.b.holder()
    t = env.terms(alice, bob, 1)
    relayer = env.a.relayer.address
    mined_before = env.a.w3.eth.get_transaction_count(relayer)
    env.node.rpc("evm_setAutomine", [False])
    try:
        for _ in range(2):  # the first attempt, then a retry while it is still pending
            with pytest.raises(Unavailable, match="not final"):
                await a.submit(Action.LOCK, t, None, instruct(t))
        pending = env.a.w3.eth.get_transaction_count(relayer, "pending")
        assert pending == mined_before + 1, "the retry sent a second transaction"
        env.node.rpc("anvil_mine", [hex(1)])
    finally:
        env.node.rpc("evm_setAutomine", [True])
    assert (await a.submit(Action.LOCK, t, None, instruct(t))).already_applied
    assert env.a.w3.eth.get_transaction_count(relayer) == mined_before + 1, "one lock sent"
    assert (await a.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED

    # A pending transaction the node drops is not waited for: the retry sends anew.
    u = env.terms(env.a.holder(1), bob, 1)
    env.node.rpc("evm_setAutomine", [False])
    try:
        with pytest.raises(Unavailable, match="not final"):
            await a.submit(Action.LOCK, u, None, instruct(u))
        env.node.rpc("anvil_dropAllTransactions", [])
    finally:
        env.node.rpc("evm_setAutomine", [True])
    assert not (await a.submit(Action.LOCK, u, None, instruct(u))).already_applied
    assert (await a.get_leg(u.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    await a.close()


async def test_a_step_queued_behind_a_nonce_gap_is_sent_again(two_ledgers: TwoLedgers) -> None:
    """The node lost the transaction before ours (a geth pool eviction): ours is queued
    behind the gap and is never mined by itself. The retry must not wait for it but send
    again, which fills the gap."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=1.5)
    t = env.terms(env.a.holder(1), env.b.holder(), 1)
    relayer = env.a.relayer
    nonce = env.a.w3.eth.get_transaction_count(relayer.address, "pending")
    tx = env.a.endpoint.functions.lock(t.as_abi_tuple(), instruct(t)).build_transaction(
        {"from": relayer.address, "nonce": nonce + 1, "gas": 500_000,
         "gasPrice": env.a.w3.eth.gas_price, "chainId": env.a.w3.eth.chain_id}
    )  # fmt: skip
    signed = env.a.w3.eth.account.sign_transaction(tx, relayer.private_key)
    queued = env.a.w3.eth.send_raw_transaction(signed.raw_transaction)
    a._sent[(Action.LOCK, t.transfer_id)] = bytes(queued)  # an earlier attempt's, as tracked
    assert not await a._is_pending(bytes(queued)), "queued behind a gap is not pending"
    out = await a.submit(Action.LOCK, t, None, instruct(t))
    assert not out.already_applied and out.tx_id != "0x" + bytes(queued).hex()
    assert (await a.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    await a.close()


async def test_cancelled_reads_never_wedge_the_adapter(two_ledgers: TwoLedgers) -> None:
    """web3 8's session lock breaks when a request is cancelled while waiting for it, after
    which every later request of the process hangs. Callers cancel requests routinely (the
    coordinator cancels the slower verifiers once it has a quorum), so the adapter must not
    let a cancellation reach web3."""
    env = two_ledgers
    a = EvmAdapter(env.a.config())
    tid = secrets.token_bytes(32)
    for _ in range(20):
        tasks = [asyncio.create_task(a.get_leg(tid, Leg.OUTBOUND)) for _ in range(40)]
        await asyncio.sleep(0.002)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    status = await asyncio.wait_for(a.get_leg(tid, Leg.OUTBOUND), timeout=10)
    assert status.state is LegState.NONE
    await a.close()


async def test_the_price_paid_does_not_compound_when_the_relayer_is_all_the_traffic(
    two_ledgers: TwoLedgers,
) -> None:
    """The soak drained a relayer's 1,000 ETH: it bid twice the node's suggested price, the
    node derived its suggestion from recent prices (its own), and the price doubled block
    after block to 10^6 gwei. The fee must follow the base fee, not its own history."""
    env = two_ledgers
    a, _ = adapters(env)
    bob = env.b.holder()
    paid = []
    for _ in range(12):
        t = env.terms(env.a.holder(1), bob, 1)
        out = await a.submit(Action.LOCK, t, None, instruct(t))
        receipt = env.a.w3.eth.get_transaction_receipt(out.tx_id)
        paid.append(int(receipt["effectiveGasPrice"]))
    await a.close()
    assert max(paid) <= 2 * max(paid[:3]), f"prices paid grew: {paid}"
    cap = int(env.a.config().max_gas_price_gwei * 10**9)
    assert all(p <= cap for p in paid)


async def test_a_receipt_dropped_by_a_reorg_shallower_than_the_depth_is_not_final(
    two_ledgers: TwoLedgers,
) -> None:
    """SECURITY: with ``finality_depth`` 2, a lock whose receipt was seen and whose block is
    then reorganised away (anvil's ``evm_revert``) is not reported final; the retry sends it
    again and only the re-mined one, ``finality_depth`` deep, counts."""
    env = two_ledgers
    deep = EvmAdapter(env.a.config(finality_depth=2), env.a.relayer.private_key, confirm_s=6)
    reader = EvmAdapter(env.a.config())
    t = env.terms(env.a.holder(1), env.b.holder(), 1)
    seen = asyncio.Event()
    receipt_of = deep._receipt

    async def watched(tx_hash: bytes) -> Mapping[str, Any] | None:
        receipt = await receipt_of(tx_hash)
        if receipt is not None:
            seen.set()
        return receipt

    deep._receipt = watched  # type: ignore[method-assign]
    snapshot = env.node.rpc("evm_snapshot", [])
    submit = asyncio.create_task(deep.submit(Action.LOCK, t, None, instruct(t)))
    await asyncio.wait_for(seen.wait(), 30)
    mined_at = env.a.w3.eth.block_number
    env.node.rpc("evm_revert", [snapshot])
    env.node.rpc("anvil_mine", [hex(4)])  # the head passes the old receipt's block by 3
    assert env.a.w3.eth.block_number == mined_at + 3
    assert (await reader.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    with pytest.raises(Unavailable, match="not final"):
        await submit
    assert (await deep.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    # The retry sends the lock again; it is final once two blocks cover its new block.
    again = asyncio.create_task(deep.submit(Action.LOCK, t, None, instruct(t)))
    await eventually(
        lambda: _leg_is(reader, t.transfer_id, LegState.LOCKED), 30, "the lock re-mined"
    )
    assert not again.done()
    env.node.rpc("anvil_mine", [hex(2)])
    out = await again
    assert not out.already_applied
    assert out.height == env.a.w3.eth.block_number - 2
    assert (await deep.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    await deep.close()
    await reader.close()


async def _leg_is(adapter: EvmAdapter, transfer_id: bytes, state: LegState) -> bool:
    return (await adapter.get_leg(transfer_id, Leg.OUTBOUND)).state is state
