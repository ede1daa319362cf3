"""How the EVM adapter sizes a transaction's gas (issue 14, ``EvmAdapter._gas_limit``), on
anvil: one ``eth_createAccessList`` simulation instead of ``eth_estimateGas``'s search; the
estimate again, for good, once a transaction so sized runs out of gas or the node lacks the
method; a refusal at the simulation sends nothing, whichever method simulated it."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.ledger_batches import BatchItem
from bridge.domain.legs import Action, Leg, LegState
from bridge.ledgers.evm import adapter as adapter_module
from bridge.ledgers.evm.adapter import EvmAdapter
from tests.integration.conftest import TwoLedgers, instruct

pytestmark = [pytest.mark.integration, pytest.mark.batch]


class MethodLog:
    """The JSON-RPC methods an adapter sent to its (real) node, in order; with ``missing``,
    the node answers that method "method not found" (-32601), as a node without it does;
    with ``gas_used``, its ``eth_createAccessList`` answers carry that ``gasUsed``."""

    def __init__(self, adapter: EvmAdapter, missing: str = "", gas_used: Any = ...) -> None:
        self.methods: list[str] = []
        provider = adapter._provider
        real = provider.make_request

        async def make_request(method: Any, params: Any) -> Any:
            self.methods.append(str(method))
            if method == missing:
                return {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "error": {"code": -32601, "message": f"the method {method} does not exist"},
                }
            answer = await real(method, params)
            if method == "eth_createAccessList" and gas_used is not ... and "result" in answer:
                # The node's answer with another gasUsed (a node answering oddly).
                answer = {**answer, "result": {**answer["result"], "gasUsed": gas_used}}
            return answer

        provider.make_request = make_request  # type: ignore[method-assign]

    def count(self, method: str) -> int:
        return self.methods.count(method)


@pytest.fixture
def used_gas_headroom(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transactions sized by their access-list simulation get 90% of the gas it used: they
    run out of gas when mined (an under-sizing the headroom normally covers)."""
    monkeypatch.setattr(adapter_module, "_USED_GAS_HEADROOM", 0.9)


def _gas_limit(env: TwoLedgers, tx_id: str) -> tuple[int, int]:
    """``(gas limit, gas used)`` of a mined transaction."""
    tx = env.a.w3.eth.get_transaction(tx_id)  # type: ignore[arg-type]
    receipt = env.a.w3.eth.get_transaction_receipt(tx_id)  # type: ignore[arg-type]
    return int(tx["gas"]), int(receipt["gasUsed"])


async def test_a_batch_is_sized_by_one_simulation(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a)
    senders, bob = [env.a.holder(3) for _ in range(4)], env.b.holder()
    items = [BatchItem(t, instruct(t)) for t in (env.terms(s, bob, 3) for s in senders)]
    got = await a.submit_batch(Action.LOCK, items)
    assert [r.state for r in got.items] == [LegState.LOCKED] * 4
    assert log.count("eth_createAccessList") == 1 and log.count("eth_estimateGas") == 0
    limit, used = _gas_limit(env, got.tx_id)
    # The access list's saving and refunds put what the transaction used within a few
    # percent of the simulation's figure; the limit is that figure plus a quarter.
    assert used < limit <= used * 1.30, (limit, used)
    await a.close()


async def test_a_refusal_at_the_access_list_simulation_sends_nothing(
    two_ledgers: TwoLedgers,
) -> None:
    """An item whose holder lacks the units: the simulation reverts, the refusal names the
    reason and the item (as the estimate's did), and no transaction is sent."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a)
    rich, poor, bob = env.a.holder(5), env.a.holder(0), env.b.holder()
    ts = [env.terms(rich, bob, 5), env.terms(poor, bob, 1)]
    nonce = env.a.w3.eth.get_transaction_count(env.a.relayer.address)
    with pytest.raises(LedgerRejected) as info:
        await a.submit_batch(Action.LOCK, [BatchItem(t, instruct(t)) for t in ts])
    assert info.value.reason is ErrorReason.INSUFFICIENT_BALANCE, info.value
    assert info.value.figures.get("item") == 1
    assert log.count("eth_createAccessList") >= 1 and log.count("eth_sendRawTransaction") == 0
    assert env.a.w3.eth.get_transaction_count(env.a.relayer.address) == nonce
    assert env.a.balance(rich.address) == 5
    await a.close()


async def test_a_node_without_eth_create_access_list_is_sized_by_the_estimate(
    two_ledgers: TwoLedgers,
) -> None:
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a, missing="eth_createAccessList")
    sender, bob = env.a.holder(4), env.b.holder()
    for _ in range(2):
        t = env.terms(sender, bob, 2)
        got = await a.submit_batch(Action.LOCK, [BatchItem(t, instruct(t))])
        assert [r.state for r in got.items] == [LegState.LOCKED]
    # Asked once, then never again: each send was sized by the estimate.
    assert log.count("eth_createAccessList") == 1 and log.count("eth_estimateGas") == 2
    assert env.a.balance(sender.address) == 0
    await a.close()


@pytest.mark.usefixtures("used_gas_headroom")
async def test_a_transaction_that_ran_out_of_gas_is_sized_by_the_estimate_from_then_on(
    two_ledgers: TwoLedgers,
) -> None:
    """The access-list sizing falls short (90% of the gas used): the batch mines, runs out of
    gas and reverts; nothing moved. The retry is sized by ``eth_estimateGas`` and locks every
    item once; later sends are sized by the estimate too."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a)
    senders, bob = [env.a.holder(2) for _ in range(3)], env.b.holder()
    ts = [env.terms(s, bob, 2) for s in senders]
    items = [BatchItem(t, instruct(t)) for t in ts]
    nonce = env.a.w3.eth.get_transaction_count(env.a.relayer.address)
    with pytest.raises(Unavailable, match="reverted when mined and passes again"):
        await a.submit_batch(Action.LOCK, items)
    assert env.a.w3.eth.get_transaction_count(env.a.relayer.address) == nonce + 1
    block = env.a.w3.eth.get_block("latest", full_transactions=True)
    (reverted,) = [tx for tx in block["transactions"] if tx["nonce"] == nonce]
    limit, used = _gas_limit(env, reverted["hash"].hex())
    assert used == limit, "it ran out of gas"
    assert [env.a.balance(s.address) for s in senders] == [2, 2, 2], "nothing moved"
    sized = log.count("eth_createAccessList")

    got = await a.submit_batch(Action.LOCK, items)
    assert [r.state for r in got.items] == [LegState.LOCKED] * 3
    assert [r.skipped for r in got.items] == [False] * 3
    assert log.count("eth_createAccessList") == sized and log.count("eth_estimateGas") == 1
    assert [env.a.balance(s.address) for s in senders] == [0, 0, 0]
    for t in ts:
        assert (await a.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    # A single step afterwards: the estimate again.
    t = env.terms(env.a.holder(1), bob, 1)
    await a.submit(Action.LOCK, t, None, instruct(t))
    assert log.count("eth_createAccessList") == sized and log.count("eth_estimateGas") == 2
    await a.close()


@pytest.mark.parametrize("gas_used", ["0x0", "-0x5", "21000", None, "0x" + "f" * 300, 7.5])
async def test_an_odd_gas_figure_is_asked_of_the_estimate(
    two_ledgers: TwoLedgers, gas_used: Any
) -> None:
    """Review helper-108 L2: ``gasUsed`` zero, negative, decimal text, missing, huge or not
    an integer: that send is sized by ``eth_estimateGas`` and the lock mines."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a, gas_used=gas_used)
    sender, bob = env.a.holder(2), env.b.holder()
    t = env.terms(sender, bob, 2)
    got = await a.submit_batch(Action.LOCK, [BatchItem(t, instruct(t))])
    assert [r.state for r in got.items] == [LegState.LOCKED]
    assert log.count("eth_createAccessList") == 1 and log.count("eth_estimateGas") == 1
    assert env.a.balance(sender.address) == 0
    await a.close()


async def test_a_sized_transaction_out_of_gas_inside_the_token_call_is_resized_by_the_estimate(
    two_ledgers: TwoLedgers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-108 L1: a limit just below what a lock needs runs out inside the token's
    call; the endpoint bubbles the revert up, so the transaction reverts without using all
    its gas. Its retry is sized by the estimate (which needs more than the sizing gave, so
    the sizing is off from then on) and locks once. Before, every retry sent the same limit
    again and reverted."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a)
    sender, bob = env.a.holder(5), env.b.holder()
    t = env.terms(sender, bob, 5)  # the whole balance
    fn = a._bridge.functions.lock(t.as_abi_tuple(), instruct(t))
    used = await fn.access_list_gas({"from": a._sender})
    needed = await fn.estimate_gas({"from": a._sender})
    assert used is not None and needed > used
    monkeypatch.setattr(adapter_module, "_USED_GAS_HEADROOM", (needed - 300) / used)
    nonce = env.a.w3.eth.get_transaction_count(env.a.relayer.address)
    with pytest.raises(Unavailable):
        await a.submit(Action.LOCK, t, None, instruct(t))
    block = env.a.w3.eth.get_block("latest", full_transactions=True)
    (tx,) = [x for x in block["transactions"] if x["nonce"] == nonce]
    limit, spent = _gas_limit(env, tx["hash"].hex())
    assert spent < limit, "it reverted without using all its gas"
    assert env.a.balance(sender.address) == 5, "nothing moved"
    probes = log.count("eth_estimateGas")
    await a.submit(Action.LOCK, t, None, instruct(t))
    assert log.count("eth_estimateGas") == probes + 1
    assert env.a.balance(sender.address) == 0
    assert (await a.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
    assert env.a.w3.eth.get_transaction_count(env.a.relayer.address) == nonce + 2
    # The estimate needed more than the sizing gave: later sends are sized by it.
    t2 = env.terms(env.a.holder(1), bob, 1)
    await a.submit(Action.LOCK, t2, None, instruct(t2))
    assert log.count("eth_estimateGas") == probes + 2
    await a.close()


async def test_a_sized_batch_out_of_gas_inside_a_call_turns_the_sizing_off(
    two_ledgers: TwoLedgers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-109: a batch whose sizing falls short inside the token's call reverts
    without using all its gas, and no item fails when simulated again; its retry is another
    call (here one more item joins it), so the sizing is turned off at the revert and the
    retry is sized by the estimate and locks every item once."""
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key, confirm_s=10)
    log = MethodLog(a)
    senders, bob = [env.a.holder(4) for _ in range(3)], env.b.holder()
    ts = [env.terms(s, bob, 4) for s in senders]  # each the whole balance
    items = [BatchItem(t, instruct(t)) for t in ts]
    fn = a._batch_call(Action.LOCK, items[:2], None)
    used = await fn.access_list_gas({"from": a._sender})
    needed = await fn.estimate_gas({"from": a._sender})
    assert used is not None and needed > used
    monkeypatch.setattr(adapter_module, "_USED_GAS_HEADROOM", (needed - 300) / used)
    nonce = env.a.w3.eth.get_transaction_count(env.a.relayer.address)
    with pytest.raises(Unavailable, match="passes again"):
        await a.submit_batch(Action.LOCK, items[:2])
    block = env.a.w3.eth.get_block("latest", full_transactions=True)
    (tx,) = [x for x in block["transactions"] if x["nonce"] == nonce]
    limit, spent = _gas_limit(env, tx["hash"].hex())
    assert spent < limit, "it reverted without using all its gas"
    probes = log.count("eth_estimateGas")
    got = await a.submit_batch(Action.LOCK, items)
    assert [r.state for r in got.items] == [LegState.LOCKED] * 3
    assert [r.skipped for r in got.items] == [False] * 3
    assert log.count("eth_estimateGas") == probes + 1
    assert [env.a.balance(s.address) for s in senders] == [0, 0, 0]
    await a.close()
