"""Admin rotation and parking on the real contracts (issue 10 items 2 and 5), on anvil.

Two-step admin transfer of ``BridgeEndpoint`` and ``SecurityToken`` (propose by the current
admin, accept by the proposed address, cancel by proposing address(0)); parking of a
committed inbound leg whose recipient was frozen or made ineligible after prepare
(``parked``, ``releaseParked``), the supply figures while units are parked, and the
token's refusal to replace a bridge that holds prepared, escrowed or parked units. Every
refusal is mined (fixed gas) and checked for its custom error and for nothing having moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from web3.contract import Contract
from web3.logs import DISCARD

from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.domain.claims import ClaimKind
from bridge.domain.ids import evm_address_word
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm.deploy import (
    deploy_endpoint,
    deploy_security_token,
    set_eligible,
    set_frozen,
    set_paused,
)
from tests.integration.test_evm_contracts import (
    CHAIN_ID,
    ISIN,
    MINTED,
    Env,
    Ledger,
    _setup,
    cert,
    finish,
    in_leg,
    make_terms,
    net_issued,
    prepared,
    reverts,
    snapshot,
    supply_of,
    tx,
)

pytestmark = [pytest.mark.integration, pytest.mark.governance]

ZERO = "0x" + "00" * 20


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode(
        name="governance-admin",
        chain_id=CHAIN_ID,
        block_time=0,
        workdir=Path(tmp_path_factory.mktemp("anvil")),
    ).start()
    try:
        yield _setup(node)
    finally:
        node.stop()


def funded(env: Env) -> DevAccount:
    acct = DevAccount.generate()
    env.node.fund(acct.address)
    return acct


# --------------------------------------------------------------------------- admin


def _rotation(env: Env, contract: Contract, admin: DevAccount) -> None:
    """The whole two-step protocol on one contract whose admin is ``admin``."""
    fns = contract.functions
    new, stranger = funded(env), funded(env)
    assert fns.pendingAdmin().call() == ZERO
    # Nothing pending: nobody can accept.
    reverts(env, "NotPendingAdmin", fns.acceptAdmin(), new)
    # Only the admin proposes.
    reverts(env, "NotAdmin", fns.proposeAdmin(stranger.address), stranger)
    receipt = tx(env, fns.proposeAdmin(new.address), admin)
    (ev,) = contract.events.AdminProposed().process_receipt(receipt, errors=DISCARD)
    assert (ev["args"]["admin"], ev["args"]["proposed"]) == (admin.address, new.address)
    assert fns.pendingAdmin().call() == new.address
    assert fns.admin().call() == admin.address  # nothing changes before the accept
    # Accept by anyone but the proposed address, the old admin included.
    for who in (stranger, admin):
        reverts(env, "NotPendingAdmin", fns.acceptAdmin(), who)
    # Cancel, then the once-proposed address can no longer accept.
    tx(env, fns.proposeAdmin(ZERO), admin)
    assert fns.pendingAdmin().call() == ZERO
    reverts(env, "NotPendingAdmin", fns.acceptAdmin(), new)
    assert fns.admin().call() == admin.address
    # Propose again and accept.
    tx(env, fns.proposeAdmin(new.address), admin)
    receipt = tx(env, fns.acceptAdmin(), new)
    (ev,) = contract.events.AdminTransferred().process_receipt(receipt, errors=DISCARD)
    assert (ev["args"]["previousAdmin"], ev["args"]["newAdmin"]) == (admin.address, new.address)
    assert (fns.admin().call(), fns.pendingAdmin().call()) == (new.address, ZERO)
    # The proposal is consumed; the old admin has no rights left.
    reverts(env, "NotPendingAdmin", fns.acceptAdmin(), new)
    reverts(env, "NotAdmin", fns.proposeAdmin(admin.address), admin)


def test_endpoint_admin_two_step_transfer(env: Env) -> None:
    admin = funded(env)
    endpoint = deploy_endpoint(env.w3, admin.private_key, env.b.ledger, env.committee)
    _rotation(env, endpoint, admin)
    relayer = funded(env)
    reverts(env, "NotAdmin", endpoint.functions.setRelayer(relayer.address, True), admin)
    assert not endpoint.functions.isRelayer(relayer.address).call()


def test_token_admin_two_step_transfer(env: Env) -> None:
    admin = funded(env)
    token = deploy_security_token(env.w3, admin.private_key, ISIN)
    holder = funded(env)
    _rotation(env, token, admin)
    reverts(env, "NotAdmin", token.functions.setEligible(holder.address, True), admin)
    assert not token.functions.isEligible(holder.address).call()


def test_new_token_admin_administers(env: Env) -> None:
    admin, new, holder = funded(env), funded(env), funded(env)
    token = deploy_security_token(env.w3, admin.private_key, ISIN)
    tx(env, token.functions.proposeAdmin(new.address), admin)
    tx(env, token.functions.acceptAdmin(), new)
    tx(env, token.functions.setEligible(holder.address, True), new)
    tx(env, token.functions.issue(holder.address, 5), new)
    assert token.functions.balanceOf(holder.address).call() == 5


# --------------------------------------------------------------------------- parking


def _freeze_after_prepare(env: Env, frozen: bool = True) -> tuple[DevAccount, TransferTerms]:
    """A fresh eligible recipient on B, a transfer prepared to it, then frozen (or made
    ineligible); returns the recipient and the terms."""
    recipient = funded(env)
    set_eligible(env.w3, env.admin.private_key, env.b.token, recipient.address)
    t = prepared(env, amount=7, recipient=evm_address_word(recipient.address))
    if frozen:
        set_frozen(env.w3, env.admin.private_key, env.b.token, recipient.address)
    else:
        set_eligible(env.w3, env.admin.private_key, env.b.token, recipient.address, False)
    return recipient, t


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "made-ineligible"])
def test_commit_parks_units_of_a_recipient_refused_after_prepare(env: Env, frozen: bool) -> None:
    recipient, t = _freeze_after_prepare(env, frozen)
    ep = env.b.endpoint.functions
    before = supply_of(env.b)
    issued_before = net_issued(env.b)
    parked_before = ep.parkedTotal(ISIN.word).call()
    receipt = finish(env, env.b, ClaimKind.COMMIT, t)  # COMMIT never fails at the target
    finish(env, env.a, ClaimKind.COMMIT, t)
    (ev,) = env.b.endpoint.events.Parked().process_receipt(receipt, errors=DISCARD)
    reason = 3 if frozen else 2
    assert (ev["args"]["amount"], ev["args"]["reason"]) == (7, reason)
    assert ev["args"]["recipient"] == recipient.address
    # The leg is Minted (COMMIT is the decision) and its reason says it was parked.
    assert in_leg(env, t) == [MINTED, t.terms_hash, 7, ISIN.word, reason]
    assert env.b.token.functions.balanceOf(recipient.address).call() == 0
    assert ep.parked(t.transfer_id).call() == 7
    assert ep.parkedTotal(ISIN.word).call() == parked_before + 7
    after = supply_of(env.b)
    # Parked units exist (total supply, minted in) and are not escrow; the identity is exact.
    assert after["total_supply"] == before["total_supply"] + 7
    assert after["minted_in"] == before["minted_in"] + 7
    assert after["escrowed"] == before["escrowed"]
    assert after["prepared"] == before["prepared"] - 7
    assert net_issued(env.b) == issued_before
    balance = env.b.token.functions.balanceOf(env.b.endpoint.address).call()
    assert balance == after["escrowed"] + ep.parkedTotal(ISIN.word).call()


def test_release_parked_only_by_token_admin_to_an_eligible_holder_once(env: Env) -> None:
    recipient, t = _freeze_after_prepare(env)
    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    ep = env.b.endpoint.functions
    tid = t.transfer_id
    before = snapshot(env)
    # Not the token admin: the relayer, the recipient.
    for who in (env.relayer, recipient):
        reverts(env, "NotTokenAdmin", ep.releaseParked(tid, env.bob.address), who)
    # Not to a holder who may not receive: the frozen recipient, an ineligible one, a frozen
    # one, the endpoint itself; nor while the token is paused.
    for to, status in (
        (recipient.address, 3),
        (env.carol.address, 2),
        (env.dave.address, 3),
        (env.b.endpoint.address, 5),
        (ZERO, 5),
    ):
        detail = reverts(env, "RecipientRefused", ep.releaseParked(tid, to), env.admin)
        assert f"status={status}" in detail, detail
    set_paused(env.w3, env.admin.private_key, env.b.token, True)
    try:
        reverts(env, "RecipientRefused", ep.releaseParked(tid, env.bob.address), env.admin)
    finally:
        set_paused(env.w3, env.admin.private_key, env.b.token, False)
    # Nothing parked for an unknown transfer.
    reverts(env, "NotParked", ep.releaseParked(b"\x07" * 32, env.bob.address), env.admin)
    assert snapshot(env) == before
    # The issuer unfreezes nobody and delivers to an eligible holder instead.
    parked_total = ep.parkedTotal(ISIN.word).call()
    receipt = tx(env, ep.releaseParked(tid, env.bob.address), env.admin)
    (ev,) = env.b.endpoint.events.ParkedReleased().process_receipt(receipt, errors=DISCARD)
    assert (ev["args"]["to"], ev["args"]["amount"]) == (env.bob.address, 7)
    after = snapshot(env)
    assert after["bob@B"] == before["bob@B"] + 7
    assert after["escrow@B"] == before["escrow@B"] - 7
    assert after["supply@B"] == before["supply@B"]
    assert ep.parked(tid).call() == 0
    assert ep.parkedTotal(ISIN.word).call() == parked_total - 7
    # Not twice.
    reverts(env, "NotParked", ep.releaseParked(tid, env.bob.address), env.admin)
    assert snapshot(env) == after


def test_release_parked_follows_the_token_admin_rotation(env: Env) -> None:
    _, t = _freeze_after_prepare(env)
    finish(env, env.b, ClaimKind.COMMIT, t)
    ep = env.b.endpoint.functions
    new = funded(env)
    tok = env.b.token.functions
    tx(env, tok.proposeAdmin(new.address), env.admin)
    tx(env, tok.acceptAdmin(), new)
    try:
        reverts(env, "NotTokenAdmin", ep.releaseParked(t.transfer_id, env.bob.address), env.admin)
        tx(env, ep.releaseParked(t.transfer_id, env.bob.address), new)
        assert ep.parked(t.transfer_id).call() == 0
    finally:
        tx(env, tok.proposeAdmin(env.admin.address), new)
        tx(env, tok.acceptAdmin(), env.admin)
    finish(env, env.a, ClaimKind.COMMIT, t)


def test_bridge_cannot_be_replaced_while_prepared_or_parked(env: Env) -> None:
    """A fresh endpoint and token (the shared ones keep their bridge): prepared units, then
    parked units, block ``setBridge``; once released, the bridge can be replaced."""
    admin = funded(env)
    key = admin.private_key
    endpoint = deploy_endpoint(env.w3, key, env.b.ledger, env.committee)
    token = deploy_security_token(env.w3, key, ISIN)
    tok, ep = token.functions, endpoint.functions
    # An EOA bridge (no code) is replaced without asking it anything.
    tx(env, tok.setBridge(env.carol.address), admin)
    tx(env, tok.setBridge(endpoint.address), admin)
    tx(env, ep.registerSecurity(ISIN.word, token.address), admin)
    tx(env, ep.setRelayer(env.relayer.address, True), admin)
    holder = funded(env)
    tx(env, tok.setEligible(holder.address, True), admin)
    tx(env, tok.setEligible(env.bob.address, True), admin)
    fresh = Ledger(env.b.ledger, endpoint, token)
    t = make_terms(env, amount=4, recipient=evm_address_word(holder.address), dst=fresh)
    tx(env, ep.prepare(t.as_abi_tuple(), cert(env, fresh, ClaimKind.LOCKED, t)))
    assert ep.preparedTotal(ISIN.word).call() == 4
    detail = reverts(env, "BridgeHoldsPrepared", tok.setBridge(env.carol.address), admin)
    assert "4" in detail, detail
    assert tok.bridge().call() == endpoint.address
    # Frozen after prepare: the commit parks, and parked units block the replacement too.
    tx(env, tok.setFrozen(holder.address, True), admin)
    tx(env, ep.commit(t.as_abi_tuple(), cert(env, fresh, ClaimKind.COMMIT, t)))
    assert ep.parked(t.transfer_id).call() == 4
    reverts(env, "BridgeHoldsEscrow", tok.setBridge(env.carol.address), admin)
    assert tok.bridge().call() == endpoint.address
    # Delivered to an eligible holder: nothing held, nothing prepared, the bridge may change.
    tx(env, ep.releaseParked(t.transfer_id, env.bob.address), admin)
    assert tok.balanceOf(env.bob.address).call() == 4
    tx(env, tok.setBridge(env.carol.address), admin)
    assert tok.bridge().call() == env.carol.address
