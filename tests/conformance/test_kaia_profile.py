"""What the ``kaia`` EVM profile adds on top of the conformance suite (ADR 0019).

Against the Kaia-like node (chain id 1001, base fee held at the 25 gkei floor, no minimum
tip, a block per transaction): the relayer's transactions bid the node's unit price (fee cap
never below the base fee, the tip only what the cap leaves above it; exactly the base fee
when the node suggests no tip, tests/unit/test_evm_profiles.py), a step is final in the
block that includes it, and a relayer opened on a Kaia ledger with a wrong chain id is
refused at start.
"""

from __future__ import annotations

import pytest
from web3 import Web3

from bridge.devnet.kaia import KAIA_BASE_FEE
from bridge.domain.legs import Action
from bridge.ledgers.startup import LedgerMismatch
from tests.conformance.conftest import EvmHarness
from tests.conformance.harness import Terms

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.kaia]


async def test_a_step_pays_exactly_the_fixed_base_fee_and_is_final_in_its_block(
    kaia_harness: EvmHarness,
) -> None:
    h = kaia_harness
    relayer = h.relayer()
    try:
        sender = await h.holder(5)
        t = Terms(h).outbound(sender, 5)
        # The node sits at Kaia's fixed base fee: the latest block (whose base fee the relayer
        # reads) and the next one (which mines the lock); the stand-in's miner pins it.
        w3 = Web3(Web3.HTTPProvider(h.node.rpc_url))
        # What the node suggests now (no block is made before the lock: one per transaction).
        # The stand-in's suggestion follows the tips of the blocks earlier tests left, so the
        # exact fields are derived from it: the cap is the node's unit price, never below the
        # base fee, and the tip only what the cap leaves above the base fee.
        price, tip = int(w3.eth.gas_price), int(w3.eth.max_priority_fee)
        out = await relayer.submit(Action.LOCK, t, None, Terms(h).instruction(t))
        # instant finality: final as soon as it is in a block, at the latest height
        assert out.height == await relayer.finalized_height()
        tx = w3.eth.get_transaction(out.tx_id)  # type: ignore[arg-type]
        block = w3.eth.get_block(out.height)
        assert block["baseFeePerGas"] == KAIA_BASE_FEE
        assert tx["type"] == 2
        cap = max(price, KAIA_BASE_FEE)
        assert tx["maxFeePerGas"] == cap, "the node's unit price, not 2 x base fee + tip"
        assert tx["maxPriorityFeePerGas"] == min(tip, cap - KAIA_BASE_FEE)
        receipt = w3.eth.get_transaction_receipt(out.tx_id)  # type: ignore[arg-type]
        assert receipt["effectiveGasPrice"] == KAIA_BASE_FEE + tx["maxPriorityFeePerGas"]
        # every block the stand-in made, the holder's setup included, sits at the floor
        fees = {w3.eth.get_block(n)["baseFeePerGas"] for n in range(out.height + 1)}
        assert fees == {KAIA_BASE_FEE}
    finally:
        await relayer.close()


async def test_a_kaia_ledger_reached_on_another_chain_is_refused(
    kaia_harness: EvmHarness, evm_harness: EvmHarness
) -> None:
    """The Kaia ledger's config pointed at a node of another chain (31337): LedgerMismatch."""
    from dataclasses import replace

    from bridge.ledgers.kinds import get_kind

    config = replace(kaia_harness.config, rpc_url=evm_harness.node.rpc_url)
    reader = get_kind("evm").open(config, None, None, False)
    try:
        with pytest.raises(LedgerMismatch, match="chain id"):
            await get_kind("evm").check_reached(config, reader)
    finally:
        await reader.close()
