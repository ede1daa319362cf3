"""A relayer whose EVM account key lives in a PKCS#11 token (SoftHSM2) applies every step on
a real anvil ledger; the transactions it sends recover to the token's address."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.legs import Action, Leg, LegState
from bridge.keys.loader import open_signer, token_session
from bridge.keys.pkcs11_token import Pkcs11Signer, generate_key
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EvmAdapter
from tests.integration.conftest import TwoLedgers, instruct
from tests.softhsm import MODULE, new_label, process_softhsm

pytestmark = [pytest.mark.integration, pytest.mark.security, pytest.mark.hsm]


def hsm_relayer(env: TwoLedgers) -> Pkcs11Signer:
    """A relayer account generated inside the token, funded and allowed on both endpoints."""
    hsm = process_softhsm()
    label = new_label("relayer")
    generate_key(token_session(MODULE, hsm.token_label, hsm.pin), label, "secp256k1")
    signer = open_signer(hsm.ref(label))
    assert isinstance(signer, Pkcs11Signer)
    address = to_checksum_address(signer.address)
    env.node.fund(address)
    for ledger in (env.a, env.b):
        deploy.set_relayer(ledger.w3, ledger.admin.private_key, ledger.endpoint, address, True)
    return signer


async def test_hsm_relayer_locks_prepares_and_commits(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    signer = hsm_relayer(env)
    a = EvmAdapter(env.a.config(), signer=signer)
    b = EvmAdapter(env.b.config(), signer=signer)
    assert a.operator == to_checksum_address(signer.address)
    alice, bob = env.a.holder(50), env.b.holder()
    t = env.terms(alice, bob, 30)
    try:
        lock = await a.submit(Action.LOCK, t, None, instruct(t))
        tx = env.a.w3.eth.get_transaction(lock.tx_id)
        assert tx["from"] == to_checksum_address(signer.address), "sent from the token's account"
        raw = env.a.w3.eth.get_raw_transaction(lock.tx_id)
        assert Account.recover_transaction(raw) == to_checksum_address(signer.address)
        await b.submit(Action.PREPARE, t, env.cert(ClaimKind.LOCKED, t, env.b))
        await a.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.a))
        await b.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.b))
        assert (await a.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.BURNED
        assert (await b.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.MINTED
        assert env.a.balance(alice.address) == 20
        assert env.b.balance(bob.address) == 30
        # Nonces advance through the seam exactly as with a key file: a retried step sends nothing.
        count = env.a.w3.eth.get_transaction_count(to_checksum_address(signer.address))
        assert (await a.submit(Action.LOCK, t, None, instruct(t))).already_applied
        assert env.a.w3.eth.get_transaction_count(to_checksum_address(signer.address)) == count
    finally:
        await a.close()
        await b.close()


async def test_token_account_not_registered_as_relayer_is_refused(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    hsm = process_softhsm()
    label = new_label("stranger")
    generate_key(token_session(MODULE, hsm.token_label, hsm.pin), label, "secp256k1")
    signer = open_signer(hsm.ref(label))
    env.node.fund(to_checksum_address(signer.address))
    b = EvmAdapter(env.b.config(), signer=signer)
    alice, bob = env.a.holder(5), env.b.holder()
    t = env.terms(alice, bob, 5)
    try:
        # A valid LOCKED certificate, but the token's account is not a relayer of B.
        with pytest.raises(LedgerRejected) as info:
            await b.submit(Action.PREPARE, t, env.cert(ClaimKind.LOCKED, t, env.b))
        assert info.value.reason == "NotRelayer"
        assert (await b.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.NONE
        assert env.b.balance(bob.address) == 0
    finally:
        await b.close()
