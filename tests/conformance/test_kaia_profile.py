"""What the ``kaia`` EVM profile adds on top of the conformance suite (ADR 0019).

Against the Kaia-like node (chain id 1001, base fee held at the 25 gkei floor, no minimum
tip, a block per transaction): the relayer's transactions pay exactly the base fee (fee cap
= base fee, tip 0), a step is final in the block that includes it, and a relayer opened on
a Kaia ledger with a wrong chain id is refused at start.
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
    # The node sits at Kaia's fixed base fee (earlier tests may have mined empty blocks,
    # which anvil's EIP-1559 update prices lower before the stand-in's watcher resets it).
    h.node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(KAIA_BASE_FEE)])
    h.node.rpc("evm_mine", [])
    relayer = h.relayer()
    try:
        sender = await h.holder(5)
        t = Terms(h).outbound(sender, 5)
        out = await relayer.submit(Action.LOCK, t, None, Terms(h).instruction(t))
        # instant finality: final as soon as it is in a block, at the latest height
        assert out.height == await relayer.finalized_height()
        w3 = Web3(Web3.HTTPProvider(h.node.rpc_url))
        tx = w3.eth.get_transaction(out.tx_id)  # type: ignore[arg-type]
        block = w3.eth.get_block(out.height)
        assert block["baseFeePerGas"] == KAIA_BASE_FEE
        assert tx["type"] == 2
        assert tx["maxFeePerGas"] == KAIA_BASE_FEE, "fee cap = base fee on a fixed base fee"
        assert tx["maxPriorityFeePerGas"] == 0, "Kaia suggests no tip while uncongested"
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
