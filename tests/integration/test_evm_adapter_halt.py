"""The EVM adapter's depository-halt calls against a real anvil (halt_status, apply_order).

Guarantees checked: the status is read at finality, ``apply_order`` is idempotent by the
endpoint's sequence (a repeat sends no transaction), and a refusal surfaces as LedgerRejected
with the contract's error name while nothing changes.
"""

from __future__ import annotations

import secrets
import time

import pytest
from web3 import Web3

from bridge.core.words import evm_network_word
from bridge.domain.errors import LedgerRejected
from bridge.domain.governance import Order, OrderAction, make_order, sign_order
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EvmAdapter
from tests.integration.conftest import ISIN, TwoLedgers

pytestmark = [pytest.mark.integration, pytest.mark.governance]

DEPOSITORY = LocalKeySigner(secrets.token_bytes(32))


def _order(env: TwoLedgers, action: OrderAction, sequence: int, expiry: int | None = None) -> Order:
    return make_order(
        network=evm_network_word(env.a.node.chain_id),
        ledger=LedgerId(env.a.name).word,
        security=SecurityId(ISIN).word,
        action=action,
        sequence=sequence,
        expiry=int(time.time()) + 600 if expiry is None else expiry,
    )


async def test_halt_status_and_idempotent_apply_order(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    a = EvmAdapter(env.a.config(), env.a.relayer.private_key)
    try:
        current = env.a.endpoint.functions.depository().call()
        if int(current, 16) == 0:
            deploy.set_depository(
                env.a.w3,
                env.a.admin.private_key,
                env.a.endpoint,
                Web3.to_checksum_address(DEPOSITORY.address),
            )
        status = await a.halt_status(SecurityId(ISIN))
        assert status.depository == DEPOSITORY.address and not status.halted
        sequence = status.sequence + 1
        halt = sign_order(DEPOSITORY, _order(env, OrderAction.HALT, sequence))
        first = await a.apply_order(halt.order, halt.signature)
        assert not first.already_applied and first.tx_id.startswith("0x")
        assert (await a.halt_status(SecurityId(ISIN))).security_halted
        assert (await a.halt_status(None)).sequence == sequence
        nonce = env.a.w3.eth.get_transaction_count(env.a.relayer.address)
        again = await a.apply_order(halt.order, halt.signature)
        assert again.already_applied and again.tx_id == ""
        assert env.a.w3.eth.get_transaction_count(env.a.relayer.address) == nonce
        forged = sign_order(
            LocalKeySigner(secrets.token_bytes(32)),
            _order(env, OrderAction.RELEASE, sequence + 1),
        )
        with pytest.raises(LedgerRejected) as info:
            await a.apply_order(forged.order, forged.signature)
        assert info.value.reason == "NotDepository"
        expired = sign_order(DEPOSITORY, _order(env, OrderAction.RELEASE, sequence + 1, 1))
        with pytest.raises(LedgerRejected) as info:
            await a.apply_order(expired.order, expired.signature)
        assert info.value.reason == "OrderExpired"
        assert (await a.halt_status(SecurityId(ISIN))).security_halted
        release = sign_order(DEPOSITORY, _order(env, OrderAction.RELEASE, sequence + 2))
        await a.apply_order(release.order, release.signature)
        assert not (await a.halt_status(SecurityId(ISIN))).halted
    finally:
        await a.close()
