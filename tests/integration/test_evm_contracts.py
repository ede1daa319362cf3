"""BridgeEndpoint and SecurityToken against a real anvil ledger.

Two endpoints (ledgers ``evm-a`` and ``evm-b``) live on one anvil; the contracts only know
ledger ids, so this is the same as two chains. Committee keys, admin, relayer and holders
are generated at run time. Every rejection is sent with a fixed gas limit so that it is
really mined and reverted on-chain; the test then checks the custom error and that no
balance or leg state moved.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import TxReceipt

from bridge.core.words import evm_network_word
from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.devnet.processes import REPO_ROOT
from bridge.domain.claims import Claim, ClaimKind, claim_digest
from bridge.domain.committee import SECP256K1_N, Committee
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.instructions import instruction_digest
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm.deploy import (
    TxReverted,
    claim_domain,
    connect,
    deploy_endpoint,
    deploy_security_token,
    issue,
    register_security,
    send_tx,
    set_eligible,
    set_frozen,
    set_instructor,
    set_paused,
    set_relayer,
)
from bridge.ledgers.evm.revert import decode_revert

pytestmark = pytest.mark.integration

BROKER = LocalKeySigner(bytes([0x42]) * 32)


def key_address(signer: LocalKeySigner) -> str:
    """The checksummed address of an instruction key."""
    return Web3.to_checksum_address(signer.address)


GAS = 1_000_000
ISIN = SecurityId("US0378331005")
EPOCH = 1
CHAIN_ID = 31_337
# Leg states (IBridgeEndpoint.OutState / InState).
OUT_NONE, LOCKED, BURNED, RELEASED = 0, 1, 2, 3
IN_NONE, PREPARED, REJECTED, EXPIRED, MINTED, ABORTED = 0, 1, 2, 3, 4, 5


@dataclass
class Ledger:
    ledger: LedgerId
    endpoint: Contract
    token: Contract

    @property
    def bridge_word(self) -> bytes:
        return evm_address_word(self.endpoint.address)


@dataclass
class Env:
    node: AnvilNode
    w3: Web3
    admin: DevAccount
    relayer: DevAccount
    alice: DevAccount  # holder on A (sender)
    bob: DevAccount  # eligible on B (recipient)
    carol: DevAccount  # not eligible on B
    dave: DevAccount  # eligible but frozen on B
    signers: list[LocalKeySigner]  # the committee, ascending by address
    outsider: LocalKeySigner
    committee: Committee
    a: Ledger
    b: Ledger
    b_twin: Contract  # a second endpoint for ledger B (another contract, same ledger)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode(
        name="contracts",
        chain_id=CHAIN_ID,
        block_time=0,
        workdir=Path(tmp_path_factory.mktemp("anvil")),
    ).start()
    try:
        yield _setup(node)
    finally:
        node.stop()


def _setup(node: AnvilNode) -> Env:
    w3 = connect(node.rpc_url)
    admin, relayer, alice, bob, carol, dave = (DevAccount.generate() for _ in range(6))
    for acct in (admin, relayer, alice, bob, carol, dave):
        node.fund(acct.address)
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    committee = Committee(epoch=EPOCH, threshold=3, members=tuple(s.address for s in signers))
    key = admin.private_key

    def ledger(name: str) -> Ledger:
        lid = LedgerId(name)
        endpoint = deploy_endpoint(w3, key, lid, committee)
        token = deploy_security_token(w3, key, ISIN)
        register_security(w3, key, endpoint, token)
        set_relayer(w3, key, endpoint, relayer.address)
        set_instructor(w3, key, endpoint, key_address(BROKER))
        return Ledger(lid, endpoint, token)

    a, b = ledger("evm-a"), ledger("evm-b")
    b_twin = deploy_endpoint(w3, key, b.ledger, committee)
    set_eligible(w3, key, a.token, alice.address)
    issue(w3, key, a.token, alice.address, 10_000)
    set_eligible(w3, key, b.token, bob.address)
    set_eligible(w3, key, b.token, dave.address)
    set_frozen(w3, key, b.token, dave.address)
    return Env(
        node=node,
        w3=w3,
        admin=admin,
        relayer=relayer,
        alice=alice,
        bob=bob,
        carol=carol,
        dave=dave,
        signers=list(signers),
        outsider=LocalKeySigner(secrets.token_bytes(32)),
        committee=committee,
        a=a,
        b=b,
        b_twin=b_twin,
    )


# --------------------------------------------------------------------------- helpers


def now(env: Env) -> int:
    return int(env.w3.eth.get_block("latest")["timestamp"])


def make_terms(
    env: Env,
    *,
    amount: int = 10,
    recipient: bytes | None = None,
    deadline: int | None = None,
    src: Ledger | None = None,
    dst: Ledger | None = None,
    instructor: bytes | None = None,
) -> TransferTerms:
    """Terms A -> B; by default holder-direct (``instructor`` = the sender, alice)."""
    src = src or env.a
    dst = dst or env.b
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=ISIN.word,
        amount=amount,
        src_ledger=src.ledger.word,
        src_bridge=src.bridge_word,
        dst_ledger=dst.ledger.word,
        dst_bridge=dst.bridge_word,
        sender=evm_address_word(env.alice.address),
        recipient=recipient if recipient is not None else evm_address_word(env.bob.address),
        instructor=instructor if instructor is not None else evm_address_word(env.alice.address),
        deadline=deadline if deadline is not None else now(env) + 3_600,
    )


def sign(
    signers: Sequence[LocalKeySigner],
    ledger: LedgerId,
    contract_address: str,
    kind: ClaimKind,
    t: TransferTerms,
    epoch: int = EPOCH,
) -> list[bytes]:
    """Signatures of ``signers`` (in the order given) over the claim for this endpoint."""
    digest = claim_digest(
        claim_domain(ledger, contract_address, epoch, CHAIN_ID),
        Claim(kind, t.transfer_id, t.terms_hash),
    )
    return [s.sign_digest(digest) for s in signers]


def cert(
    env: Env,
    on: Ledger,
    kind: ClaimKind,
    t: TransferTerms,
    *,
    signers: Sequence[LocalKeySigner] | None = None,
    epoch: int = EPOCH,
) -> tuple[int, bytes]:
    """A valid certificate (3 of 4, ascending) for ``on``'s endpoint, as the ABI tuple."""
    chosen = signers if signers is not None else env.signers[1:]
    return (epoch, b"".join(sign(chosen, on.ledger, on.endpoint.address, kind, t, epoch)))


def tx(env: Env, fn: ContractFunction, by: DevAccount | None = None) -> TxReceipt:
    """Send with a fixed gas limit: a revert is mined on-chain, not caught by estimation."""
    return send_tx(env.w3, (by or env.relayer).private_key, fn, gas=GAS)


def reverts(env: Env, error: str, fn: ContractFunction, by: DevAccount | None = None) -> str:
    """Assert ``fn`` is mined and reverts with custom error ``error``; return its detail."""
    with pytest.raises(TxReverted) as info:
        tx(env, fn, by)
    assert info.value.error_name == error, str(info.value)
    assert info.value.tx_hash is not None
    receipt = env.w3.eth.get_transaction_receipt(HexBytes(info.value.tx_hash))
    assert receipt["status"] == 0
    return info.value.detail


"""A brokerage instruction key, registered on both endpoints (``setInstructor``)."""


def brokered(env: Env, **kw: Any) -> TransferTerms:
    """Terms instructed by BROKER (for a relayer's lock)."""
    return make_terms(env, instructor=bytes(12) + BROKER.address, **kw)


def instruction(
    t: TransferTerms, signer: LocalKeySigner = BROKER, chain_id: int = CHAIN_ID
) -> bytes:
    """``signer``'s signature over ``t``'s instruction digest (whoever ``t`` names)."""
    return signer.sign_digest(instruction_digest(evm_network_word(chain_id), t))


def lock(
    env: Env, t: TransferTerms, by: DevAccount | None = None, signed: bytes | None = None
) -> TxReceipt:
    """Lock ``t``: by the holder (default), or by a relayer with ``signed`` (default: the
    instructor's instruction when that is BROKER)."""
    if signed is None:
        signed = instruction(t) if t.instructor == bytes(12) + BROKER.address else b""
    return tx(env, env.a.endpoint.functions.lock(t.as_abi_tuple(), signed), by or env.alice)


def prepare(env: Env, t: TransferTerms) -> TxReceipt:
    return tx(
        env,
        env.b.endpoint.functions.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)),
    )


def finish(env: Env, on: Ledger, kind: ClaimKind, t: TransferTerms) -> TxReceipt:
    fn = on.endpoint.functions.commit if kind is ClaimKind.COMMIT else on.endpoint.functions.abort
    return tx(env, fn(t.as_abi_tuple(), cert(env, on, kind, t)))


def out_leg(env: Env, t: TransferTerms) -> list[Any]:
    return list(env.a.endpoint.functions.outbound(t.transfer_id).call())


def in_leg(env: Env, t: TransferTerms) -> list[Any]:
    return list(env.b.endpoint.functions.inbound(t.transfer_id).call())


def snapshot(env: Env, t: TransferTerms | None = None) -> dict[str, Any]:
    """Every balance, supply and leg record a rejected call could have touched."""
    a, b = env.a, env.b
    bal_a = a.token.functions.balanceOf
    bal_b = b.token.functions.balanceOf
    snap: dict[str, Any] = {
        "alice@A": bal_a(env.alice.address).call(),
        "escrow@A": bal_a(a.endpoint.address).call(),
        "supply@A": a.token.functions.totalSupply().call(),
        "bob@B": bal_b(env.bob.address).call(),
        "escrow@B": bal_b(b.endpoint.address).call(),
        "supply@B": b.token.functions.totalSupply().call(),
        "prepared@B": b.endpoint.functions.preparedTotal(ISIN.word).call(),
        "counters@A": counters(a),
        "counters@B": counters(b),
    }
    if t is not None:
        snap["out"] = out_leg(env, t)
        snap["in"] = in_leg(env, t)
        snap["b_out"] = list(b.endpoint.functions.outbound(t.transfer_id).call())
        snap["a_in"] = list(a.endpoint.functions.inbound(t.transfer_id).call())
    return snap


def counters(on: Ledger) -> tuple[int, int, int, int]:
    """(burnedOut, mintedIn) of the security, and of an unregistered id (always 0, 0)."""
    fns = on.endpoint.functions
    other = SecurityId("KR7005930003").word
    return (
        fns.burnedOut(ISIN.word).call(),
        fns.mintedIn(ISIN.word).call(),
        fns.burnedOut(other).call(),
        fns.mintedIn(other).call(),
    )


def supply_of(on: Ledger, block: int | str = "latest") -> dict[str, int]:
    names = ("total_supply", "escrowed", "prepared", "burned_out", "minted_in")
    values = on.endpoint.functions.supplyOf(ISIN.word).call(block_identifier=block)
    return dict(zip(names, (int(v) for v in values), strict=True))


def net_issued(on: Ledger) -> int:
    """``totalSupply + burnedOut - mintedIn``: what was issued on ``on`` outside the bridge."""
    s = supply_of(on)
    return s["total_supply"] + s["burned_out"] - s["minted_in"]


def locked(env: Env, **kw: Any) -> TransferTerms:
    t = make_terms(env, **kw)
    lock(env, t)
    assert out_leg(env, t)[0] == LOCKED
    return t


def prepared(env: Env, **kw: Any) -> TransferTerms:
    t = locked(env, **kw)
    prepare(env, t)
    assert in_leg(env, t)[0] == PREPARED
    return t


def time_travel(env: Env, seconds: int) -> None:
    env.node.rpc("evm_increaseTime", [seconds])
    env.node.rpc("evm_mine", [])


# --------------------------------------------------------------------------- digests


def test_python_digests_equal_the_contract_digests(env: Env) -> None:
    rnd = secrets.SystemRandom()
    for _ in range(8):
        t = TransferTerms(
            nonce=secrets.token_bytes(32),
            security=secrets.token_bytes(32),
            amount=rnd.randrange(1, 2**256),
            src_ledger=secrets.token_bytes(32),
            src_bridge=secrets.token_bytes(32),
            dst_ledger=secrets.token_bytes(32),
            dst_bridge=secrets.token_bytes(32),
            sender=secrets.token_bytes(32),
            recipient=secrets.token_bytes(32),
            instructor=b"\0" * 12 + b"\x1e" * 20,
            deadline=rnd.randrange(0, 2**64),
        )
        for endpoint, ledger in (
            (env.a.endpoint, env.a.ledger),
            (env.b.endpoint, env.b.ledger),
            (env.b_twin, env.b.ledger),
        ):
            fns = endpoint.functions
            assert bytes(fns.transferIdOf(t.as_abi_tuple()).call()) == t.transfer_id
            assert bytes(fns.termsHashOf(t.as_abi_tuple()).call()) == t.terms_hash
            epoch = rnd.randrange(0, 2**64)
            for kind in ClaimKind:
                on_chain = fns.claimDigestOf(epoch, int(kind), t.transfer_id, t.terms_hash).call()
                domain = claim_domain(ledger, endpoint.address, epoch, CHAIN_ID)
                assert bytes(on_chain) == claim_digest(
                    domain, Claim(kind, t.transfer_id, t.terms_hash)
                )


def test_deployment_reports_its_configuration(env: Env) -> None:
    fns = env.a.endpoint.functions
    assert bytes(fns.ledgerId().call()) == env.a.ledger.word
    assert fns.admin().call() == env.admin.address
    assert fns.isRelayer(env.relayer.address).call()
    assert fns.tokenOf(ISIN.word).call() == env.a.token.address
    epoch, threshold, members = fns.committee().call()
    assert (epoch, threshold) == (EPOCH, 3)
    assert [bytes.fromhex(m[2:]) for m in members] == [s.address for s in env.signers]
    token = env.a.token.functions
    assert token.bridge().call() == env.a.endpoint.address
    assert token.decimals().call() == 0
    assert token.symbol().call() == ISIN.isin
    assert bytes(token.securityId().call()) == ISIN.word


# --------------------------------------------------------------------------- happy paths


def test_commit_path_moves_units_from_a_to_b(env: Env) -> None:
    before = snapshot(env)
    t = make_terms(env, amount=25)
    receipt = lock(env, t)  # the sender locks for itself
    events = env.a.endpoint.events.TransferLocked().process_receipt(receipt, errors=DISCARD)
    assert len(events) == 1
    assert bytes(events[0]["args"]["termsHash"]) == t.terms_hash
    assert out_leg(env, t) == [LOCKED, t.terms_hash, 25, ISIN.word]
    mid = snapshot(env)
    assert mid["alice@A"] == before["alice@A"] - 25
    assert mid["escrow@A"] == before["escrow@A"] + 25

    prepare(env, t)
    assert in_leg(env, t) == [PREPARED, t.terms_hash, 25, ISIN.word, 0]
    assert snapshot(env)["prepared@B"] == before["prepared@B"] + 25

    finish(env, env.b, ClaimKind.COMMIT, t)
    receipt = finish(env, env.a, ClaimKind.COMMIT, t)
    changes = env.a.endpoint.events.LegStateChanged().process_receipt(receipt, errors=DISCARD)
    assert [(e["args"]["leg"], e["args"]["state"]) for e in changes] == [(0, BURNED)]

    after = snapshot(env)
    assert out_leg(env, t)[0] == BURNED
    assert in_leg(env, t)[0] == MINTED
    assert after["alice@A"] == before["alice@A"] - 25
    assert after["bob@B"] == before["bob@B"] + 25
    assert after["escrow@A"] == before["escrow@A"] == 0
    assert after["escrow@B"] == 0
    assert after["supply@A"] == before["supply@A"] - 25
    assert after["supply@B"] == before["supply@B"] + 25
    assert after["prepared@B"] == before["prepared@B"]


def test_abort_path_releases_units_to_the_sender(env: Env) -> None:
    before = snapshot(env)
    t = prepared(env, amount=7)
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert out_leg(env, t)[0] == RELEASED
    assert in_leg(env, t)[0] == ABORTED
    assert snapshot(env) == before


def test_relayer_may_lock_for_the_sender_but_a_stranger_may_not(env: Env) -> None:
    t = brokered(env)
    before = snapshot(env, t)
    reverts(env, "NotSender", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.bob)
    assert snapshot(env, t) == before
    lock(env, t, by=env.relayer)
    assert out_leg(env, t)[0] == LOCKED
    finish(env, env.a, ClaimKind.ABORT, t)


# --------------------------------------------------------------------------- certificates


def _prepare_rejects(env: Env, t: TransferTerms, certificate: tuple[int, bytes], error: str) -> str:
    before = snapshot(env, t)
    fn = env.b.endpoint.functions.prepare(t.as_abi_tuple(), certificate)
    detail = reverts(env, error, fn)
    assert snapshot(env, t) == before
    return detail


def test_corrupted_signature_recovers_a_stranger(env: Env) -> None:
    t = locked(env)
    epoch, blob = cert(env, env.b, ClaimKind.LOCKED, t)
    bad = bytearray(blob)
    bad[63] ^= 0x01  # low byte of s in the first signature: still low-s, wrong signer
    _prepare_rejects(env, t, (epoch, bytes(bad)), "NotCommitteeMember")


def test_signature_with_bad_v_is_invalid(env: Env) -> None:
    t = locked(env)
    epoch, blob = cert(env, env.b, ClaimKind.LOCKED, t)
    bad = bytearray(blob)
    bad[65 + 64] = 29  # v of the second signature
    assert "index=1" in _prepare_rejects(env, t, (epoch, bytes(bad)), "InvalidSignature")


def test_too_few_signatures(env: Env) -> None:
    t = locked(env)
    certificate = cert(env, env.b, ClaimKind.LOCKED, t, signers=env.signers[:2])
    detail = _prepare_rejects(env, t, certificate, "TooFewSignatures")
    assert detail == "got=2, threshold=3"


def test_duplicate_signer(env: Env) -> None:
    t = locked(env)
    s = env.signers
    certificate = cert(env, env.b, ClaimKind.LOCKED, t, signers=[s[0], s[0], s[1]])
    assert "index=1" in _prepare_rejects(env, t, certificate, "SignersNotAscending")


def test_signers_not_ascending(env: Env) -> None:
    t = locked(env)
    s = env.signers
    certificate = cert(env, env.b, ClaimKind.LOCKED, t, signers=[s[0], s[2], s[1]])
    assert "index=2" in _prepare_rejects(env, t, certificate, "SignersNotAscending")


def test_non_member_signer(env: Env) -> None:
    t = locked(env)
    signers = sorted([*env.signers[:2], env.outsider], key=lambda s: s.address)
    certificate = cert(env, env.b, ClaimKind.LOCKED, t, signers=signers)
    detail = _prepare_rejects(env, t, certificate, "NotCommitteeMember")
    assert Web3.to_checksum_address(env.outsider.address).lower() in detail.lower()


def test_wrong_epoch(env: Env) -> None:
    t = locked(env)
    certificate = cert(env, env.b, ClaimKind.LOCKED, t, epoch=EPOCH + 1)
    assert (
        _prepare_rejects(env, t, certificate, "WrongEpoch") == f"got={EPOCH + 1}, current={EPOCH}"
    )


def test_high_s_signature_is_refused(env: Env) -> None:
    t = locked(env)
    sigs = sign(env.signers[1:], env.b.ledger, env.b.endpoint.address, ClaimKind.LOCKED, t)
    r, s, v = sigs[0][:32], int.from_bytes(sigs[0][32:64], "big"), sigs[0][64]
    sigs[0] = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # the malleable twin
    detail = _prepare_rejects(env, t, (EPOCH, b"".join(sigs)), "InvalidSignature")
    assert detail == "index=0"


def test_malformed_signature_blob(env: Env) -> None:
    t = locked(env)
    epoch, blob = cert(env, env.b, ClaimKind.LOCKED, t)
    _prepare_rejects(env, t, (epoch, blob + b"\0"), "MalformedSignatures")


def test_claim_signed_for_another_ledger(env: Env) -> None:
    t = locked(env)
    # A LOCKED claim signed in ledger A's domain (a valid certificate there), replayed to B.
    _prepare_rejects(env, t, cert(env, env.a, ClaimKind.LOCKED, t), "NotCommitteeMember")


def test_claim_signed_for_another_contract_on_the_same_ledger(env: Env) -> None:
    t = locked(env)
    sigs = sign(env.signers[1:], env.b.ledger, env.b_twin.address, ClaimKind.LOCKED, t)
    _prepare_rejects(env, t, (EPOCH, b"".join(sigs)), "NotCommitteeMember")


def test_locked_certificate_used_as_commit(env: Env) -> None:
    t = locked(env)
    before = snapshot(env, t)
    fn = env.a.endpoint.functions.commit(t.as_abi_tuple(), cert(env, env.a, ClaimKind.LOCKED, t))
    reverts(env, "NotCommitteeMember", fn)
    assert snapshot(env, t) == before
    finish(env, env.a, ClaimKind.ABORT, t)


# --------------------------------------------------------------------------- replays and states


def test_replayed_commit_and_prepare(env: Env) -> None:
    t = prepared(env)
    before = snapshot(env, t)
    fn = env.b.endpoint.functions.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t))
    assert f"state={PREPARED}" in reverts(env, "BadState", fn)
    assert snapshot(env, t) == before

    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    before = snapshot(env, t)
    for on, state in ((env.a, BURNED), (env.b, MINTED)):
        fn = on.endpoint.functions.commit(t.as_abi_tuple(), cert(env, on, ClaimKind.COMMIT, t))
        assert f"state={state}" in reverts(env, "BadState", fn)
    assert snapshot(env, t) == before


def test_mint_without_lock_or_prepare(env: Env) -> None:
    t = make_terms(env)  # never locked, never prepared
    before = snapshot(env, t)
    fn = env.b.endpoint.functions.commit(t.as_abi_tuple(), cert(env, env.b, ClaimKind.COMMIT, t))
    assert f"state={IN_NONE}" in reverts(env, "BadState", fn)
    assert snapshot(env, t) == before


def test_release_after_burn_and_abort_after_mint(env: Env) -> None:
    t = prepared(env)
    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    before = snapshot(env, t)
    for on, state in ((env.a, BURNED), (env.b, MINTED)):
        fn = on.endpoint.functions.abort(t.as_abi_tuple(), cert(env, on, ClaimKind.ABORT, t))
        assert f"state={state}" in reverts(env, "BadState", fn)
    assert snapshot(env, t) == before


def test_commit_with_different_terms_for_the_same_id(env: Env) -> None:
    t = locked(env, amount=5)
    forged = TransferTerms(**{**{f: getattr(t, f) for f in t.__slots__}, "amount": 500})
    assert forged.transfer_id == t.transfer_id
    before = snapshot(env, t)
    fn = env.a.endpoint.functions.commit(
        forged.as_abi_tuple(), cert(env, env.a, ClaimKind.COMMIT, forged)
    )
    reverts(env, "TermsMismatch", fn)
    assert snapshot(env, t) == before
    finish(env, env.a, ClaimKind.ABORT, t)


def test_abort_before_prepare_leaves_a_tombstone(env: Env) -> None:
    t = locked(env)
    finish(env, env.b, ClaimKind.ABORT, t)
    assert in_leg(env, t) == [ABORTED, t.terms_hash, t.amount, ISIN.word, 0]
    fn = env.b.endpoint.functions.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t))
    assert f"state={ABORTED}" in reverts(env, "BadState", fn)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert out_leg(env, t)[0] == RELEASED


# --------------------------------------------------------------------------- compliance


def _rejected_then_aborted(env: Env, t: TransferTerms, reason: int) -> None:
    before = snapshot(env)
    prepare(env, t)
    assert in_leg(env, t) == [REJECTED, t.terms_hash, t.amount, ISIN.word, reason]
    assert snapshot(env) == before  # a rejection moves nothing and prepares nothing
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert in_leg(env, t)[0] == ABORTED
    assert out_leg(env, t)[0] == RELEASED
    after = snapshot(env)
    assert after["alice@A"] == before["alice@A"] + t.amount
    assert after["escrow@A"] == before["escrow@A"] - t.amount


def test_ineligible_recipient_is_rejected_and_the_abort_releases(env: Env) -> None:
    t = locked(env, recipient=evm_address_word(env.carol.address))
    _rejected_then_aborted(env, t, reason=2)


def test_frozen_recipient_is_rejected(env: Env) -> None:
    t = locked(env, recipient=evm_address_word(env.dave.address))
    _rejected_then_aborted(env, t, reason=3)


def test_recipient_that_is_not_an_evm_address_is_rejected(env: Env) -> None:
    t = locked(env, recipient=b"\x01" * 32)
    _rejected_then_aborted(env, t, reason=5)


def test_paused_token(env: Env) -> None:
    key = env.admin.private_key
    t = make_terms(env)
    before = snapshot(env, t)
    set_paused(env.w3, key, env.a.token, True)
    try:
        reverts(env, "TokenPaused", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice)
    finally:
        set_paused(env.w3, key, env.a.token, False)
    assert snapshot(env, t) == before

    t = locked(env)
    set_paused(env.w3, key, env.b.token, True)
    try:
        assert env.b.token.functions.receiveStatus(env.bob.address).call() == 4
        _rejected_then_aborted(env, t, reason=4)
    finally:
        set_paused(env.w3, key, env.b.token, False)


def test_frozen_sender_cannot_lock(env: Env) -> None:
    key = env.admin.private_key
    t = make_terms(env)
    before = snapshot(env, t)
    set_frozen(env.w3, key, env.a.token, env.alice.address)
    try:
        fn = env.a.endpoint.functions.lock(t.as_abi_tuple(), b"")
        detail = reverts(env, "HolderFrozen", fn, env.alice)
        assert env.alice.address.lower() in detail.lower()
    finally:
        set_frozen(env.w3, key, env.a.token, env.alice.address, frozen=False)
    assert snapshot(env, t) == before


# --------------------------------------------------------------------------- roles


def test_non_relayer_cannot_move_legs(env: Env) -> None:
    t = locked(env)
    before = snapshot(env, t)
    b = env.b.endpoint.functions
    a = env.a.endpoint.functions
    calls = [
        b.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)),
        b.markExpired(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)),
        a.commit(t.as_abi_tuple(), cert(env, env.a, ClaimKind.COMMIT, t)),
        a.abort(t.as_abi_tuple(), cert(env, env.a, ClaimKind.ABORT, t)),
    ]
    for fn in calls:
        reverts(env, "NotRelayer", fn, env.alice)
    assert snapshot(env, t) == before
    finish(env, env.a, ClaimKind.ABORT, t)


def test_non_admin_cannot_administer(env: Env) -> None:
    before = snapshot(env)
    ep = env.a.endpoint.functions
    tok = env.a.token.functions
    for fn in (
        ep.setRelayer(env.alice.address, True),
        ep.setInstructor(env.alice.address, True),
        ep.registerSecurity(b"\x01" * 32, env.a.token.address),
        tok.setEligible(env.carol.address, True),
        tok.setFrozen(env.alice.address, True),
        tok.issue(env.alice.address, 1),
        tok.redeem(env.alice.address, 1),
        tok.pause(),
        tok.setBridge(env.relayer.address),
    ):
        reverts(env, "NotAdmin", fn, env.relayer)
    # The simulated path refuses before sending anything and still names the error.
    with pytest.raises(TxReverted) as info:
        send_tx(env.w3, env.alice.private_key, ep.setRelayer(env.alice.address, True))
    assert (info.value.error_name, info.value.tx_hash) == ("NotAdmin", None)
    assert not ep.isRelayer(env.alice.address).call()
    assert not ep.isInstructor(env.alice.address).call()
    assert snapshot(env) == before


def test_only_the_bridge_may_call_bridge_functions(env: Env) -> None:
    before = snapshot(env)
    tok = env.a.token.functions
    for fn in (
        tok.bridgeEscrow(env.alice.address, 1),
        tok.bridgeRelease(env.alice.address, 1),
        tok.bridgeBurn(1),
        tok.bridgeMint(env.alice.address, 1),
    ):
        for caller in (env.admin, env.relayer, env.alice):
            reverts(env, "NotBridge", fn, caller)
    assert snapshot(env) == before


# --------------------------------------------------------------------------- time and lock checks


def test_mark_expired_only_after_the_deadline(env: Env) -> None:
    deadline = now(env) + 120
    t = locked(env, deadline=deadline)
    before = snapshot(env, t)
    fn = env.b.endpoint.functions.markExpired(
        t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)
    )
    reverts(env, "NotExpired", fn)
    assert snapshot(env, t) == before

    time_travel(env, 240)
    assert now(env) > deadline
    tx(env, fn)
    assert in_leg(env, t) == [EXPIRED, t.terms_hash, t.amount, ISIN.word, 0]
    fn = env.b.endpoint.functions.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t))
    assert f"state={EXPIRED}" in reverts(env, "BadState", fn)
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert (out_leg(env, t)[0], in_leg(env, t)[0]) == (RELEASED, ABORTED)


def test_lock_with_deadline_passed(env: Env) -> None:
    t = make_terms(env, deadline=now(env) - 1)
    before = snapshot(env, t)
    reverts(env, "DeadlinePassed", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice)
    assert snapshot(env, t) == before


def test_lock_for_the_wrong_source_ledger(env: Env) -> None:
    fns = env.a.endpoint.functions
    # Source ledger B (but this endpoint's address), and source bridge B on ledger A.
    wrong_ledger = make_terms(env, src=Ledger(env.b.ledger, env.a.endpoint, env.a.token), dst=env.a)
    wrong_bridge = make_terms(env, src=Ledger(env.a.ledger, env.b.endpoint, env.a.token))
    for t in (wrong_ledger, wrong_bridge):
        before = snapshot(env, t)
        reverts(env, "WrongLedger", fns.lock(t.as_abi_tuple(), b""), env.alice)
        assert snapshot(env, t) == before


def test_lock_of_zero_amount(env: Env) -> None:
    t = make_terms(env)
    zero = list(t.as_abi_tuple())
    zero[2] = 0  # TransferTerms itself refuses 0; the contract must too
    before = snapshot(env, t)
    reverts(env, "ZeroAmount", env.a.endpoint.functions.lock(tuple(zero), b""), env.alice)
    assert snapshot(env, t) == before


def test_lock_twice_is_refused(env: Env) -> None:
    t = locked(env)
    before = snapshot(env, t)
    reverts(env, "TransferExists", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice)
    assert snapshot(env, t) == before
    finish(env, env.a, ClaimKind.ABORT, t)


# --------------------------------------------------------------------------- supply


def test_supply_of_reports_the_token_escrow_and_counters(env: Env) -> None:
    t = locked(env, amount=3)  # something in escrow on A
    prepare(env, t)  # and something prepared on B
    for on in (env.a, env.b):
        fns = on.endpoint.functions
        assert supply_of(on) == {
            "total_supply": on.token.functions.totalSupply().call(),
            "escrowed": on.token.functions.balanceOf(on.endpoint.address).call(),
            "prepared": fns.preparedTotal(ISIN.word).call(),
            "burned_out": fns.burnedOut(ISIN.word).call(),
            "minted_in": fns.mintedIn(ISIN.word).call(),
        }
    assert supply_of(env.a)["escrowed"] >= 3 and supply_of(env.b)["prepared"] >= 3
    unknown = SecurityId("KR7005930003")
    with pytest.raises(ContractCustomError) as info:
        env.a.endpoint.functions.supplyOf(unknown.word).call()
    assert decode_revert(bytes.fromhex(str(info.value.data)[2:])) == (
        "UnknownSecurity",
        f"securityId=0x{unknown.word.hex()}",
    )
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)


def test_counters_move_exactly_with_the_commit_on_each_side(env: Env) -> None:
    base_a, base_b = supply_of(env.a), supply_of(env.b)
    counters_a, counters_b = counters(env.a), counters(env.b)
    issued_a, issued_b = net_issued(env.a), net_issued(env.b)
    t = locked(env, amount=25)
    assert (counters(env.a), counters(env.b)) == (counters_a, counters_b)
    prepare(env, t)
    assert (counters(env.a), counters(env.b)) == (counters_a, counters_b)
    assert (net_issued(env.a), net_issued(env.b)) == (issued_a, issued_b)

    finish(env, env.b, ClaimKind.COMMIT, t)  # the target commits first: minted, A unchanged
    b1 = supply_of(env.b)
    assert (b1["burned_out"], b1["minted_in"]) == (base_b["burned_out"], base_b["minted_in"] + 25)
    assert counters(env.a) == counters_a
    assert net_issued(env.b) == issued_b

    finish(env, env.a, ClaimKind.COMMIT, t)
    a1 = supply_of(env.a)
    assert (a1["burned_out"], a1["minted_in"]) == (base_a["burned_out"] + 25, base_a["minted_in"])
    assert a1["total_supply"] == base_a["total_supply"] - 25
    assert supply_of(env.b)["total_supply"] == base_b["total_supply"] + 25
    assert (net_issued(env.a), net_issued(env.b)) == (issued_a, issued_b)
    # the other security's counters never move
    assert counters(env.a)[2:] == counters(env.b)[2:] == (0, 0)
    # a replayed commit is refused and counts nothing twice
    before = snapshot(env, t)
    for on in (env.a, env.b):
        fn = on.endpoint.functions.commit(t.as_abi_tuple(), cert(env, on, ClaimKind.COMMIT, t))
        reverts(env, "BadState", fn)
    assert snapshot(env, t) == before


def test_counters_do_not_move_on_abort_release_reject_or_expiry(env: Env) -> None:
    before = (supply_of(env.a), supply_of(env.b), counters(env.a), counters(env.b))
    issued = (net_issued(env.a), net_issued(env.b))
    aborted = prepared(env, amount=7)  # Prepared -> Aborted, Locked -> Released
    finish(env, env.b, ClaimKind.ABORT, aborted)
    finish(env, env.a, ClaimKind.ABORT, aborted)
    assert (net_issued(env.a), net_issued(env.b)) == issued
    rejected = locked(env, amount=3, recipient=evm_address_word(env.carol.address))
    prepare(env, rejected)  # Rejected -> Aborted
    assert in_leg(env, rejected)[0] == REJECTED
    finish(env, env.b, ClaimKind.ABORT, rejected)
    finish(env, env.a, ClaimKind.ABORT, rejected)
    tomb = locked(env, amount=2)  # None -> Aborted (tombstone)
    finish(env, env.b, ClaimKind.ABORT, tomb)
    finish(env, env.a, ClaimKind.ABORT, tomb)
    expired = locked(env, amount=1, deadline=now(env) + 60)  # Expired -> Aborted
    time_travel(env, 120)
    mark = env.b.endpoint.functions.markExpired(
        expired.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, expired)
    )
    tx(env, mark)
    finish(env, env.b, ClaimKind.ABORT, expired)
    finish(env, env.a, ClaimKind.ABORT, expired)
    assert (supply_of(env.a), supply_of(env.b), counters(env.a), counters(env.b)) == before
    assert (net_issued(env.a), net_issued(env.b)) == issued


def test_issue_outside_the_bridge_changes_net_issued_by_exactly_that(env: Env) -> None:
    t = prepared(env, amount=40)
    finish(env, env.a, ClaimKind.COMMIT, t)  # in flight: burned on A, still prepared on B
    issued_a, issued_b = net_issued(env.a), net_issued(env.b)
    key = env.admin.private_key
    issue(env.w3, key, env.b.token, env.bob.address, 11)
    assert (net_issued(env.a), net_issued(env.b)) == (issued_a, issued_b + 11)
    send_tx(env.w3, key, env.a.token.functions.redeem(env.alice.address, 6))
    assert (net_issued(env.a), net_issued(env.b)) == (issued_a - 6, issued_b + 11)
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert (net_issued(env.a), net_issued(env.b)) == (issued_a - 6, issued_b + 11)


def test_supply_of_reads_past_blocks(env: Env) -> None:
    h0 = env.w3.eth.block_number
    past = supply_of(env.a, h0)
    t = locked(env, amount=5)
    assert supply_of(env.a, h0) == past
    assert supply_of(env.a)["escrowed"] == past["escrowed"] + 5
    finish(env, env.a, ClaimKind.ABORT, t)


# --------------------------------------------------------------------------- protocol v2


@pytest.mark.security
def test_a_relayer_lock_needs_the_instructors_signature(env: Env) -> None:
    t = brokered(env)
    other = brokered(env)  # another nonce: other terms
    stranger = LocalKeySigner(bytes([0x43]) * 32)
    good = instruction(t)
    cases = [
        ("MissingInstruction", b""),
        ("InvalidInstruction", instruction(t, stranger)),  # forged
        ("InvalidInstruction", instruction(other)),  # another terms' instruction
        ("InvalidInstruction", instruction(t, chain_id=1)),  # signed for another network
        ("InvalidInstruction", good[:64] + bytes([good[64] - 27])),  # v not 27/28
        ("InvalidInstruction", good[:64]),  # truncated
    ]
    before = snapshot(env, t)
    for error, signed in cases:
        reverts(env, error, env.a.endpoint.functions.lock(t.as_abi_tuple(), signed), env.relayer)
        assert snapshot(env, t) == before, error
    fns = env.a.endpoint.functions
    assert bytes(fns.instructionDigestOf(t.as_abi_tuple()).call()) == (
        instruction_digest(evm_network_word(CHAIN_ID), t)
    )
    lock(env, t, by=env.relayer, signed=good)
    assert out_leg(env, t)[0] == LOCKED
    finish(env, env.a, ClaimKind.ABORT, t)


@pytest.mark.security
def test_holder_direct_lock_needs_the_holder_as_instructor(env: Env) -> None:
    t = brokered(env)  # instructor is a brokerage, not alice
    before = snapshot(env, t)
    reverts(
        env, "InvalidInstruction", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice
    )
    reverts(
        env,
        "InvalidInstruction",
        env.a.endpoint.functions.lock(t.as_abi_tuple(), instruction(t)),
        env.alice,
    )
    assert snapshot(env, t) == before
    own = make_terms(env)  # instructor = alice: her own transaction is the instruction
    lock(env, own)
    assert out_leg(env, own)[0] == LOCKED
    finish(env, env.a, ClaimKind.ABORT, own)


@pytest.mark.security
def test_a_relayer_may_carry_the_holders_own_signature(env: Env) -> None:
    t = make_terms(env)  # instructor = alice
    alice = LocalKeySigner(env.alice.private_key)
    lock(env, t, by=env.relayer, signed=instruction(t, alice))
    assert out_leg(env, t)[0] == LOCKED
    finish(env, env.a, ClaimKind.ABORT, t)


@pytest.mark.security
def test_squatting_the_transfer_id_is_impossible(env: Env) -> None:
    """The id binds sender and instructor: the same nonce under another instructor (or for
    another sender) is another transfer; the same id with other terms needs the
    instructor's signature over those terms."""
    t = brokered(env)
    rogue = LocalKeySigner(bytes([0x44]) * 32)
    squat = dataclasses.replace(
        t, recipient=evm_address_word(env.carol.address), instructor=bytes(12) + rogue.address
    )
    assert squat.transfer_id != t.transfer_id
    # An unregistered key cannot instruct at all; registered, it only makes its own transfer.
    reverts(
        env,
        "UnknownInstructor",
        env.a.endpoint.functions.lock(squat.as_abi_tuple(), instruction(squat, rogue)),
        env.relayer,
    )
    send_tx(
        env.w3,
        env.admin.private_key,
        env.a.endpoint.functions.setInstructor(key_address(rogue), True),
    )
    lock(env, squat, by=env.relayer, signed=instruction(squat, rogue))  # its own transfer
    send_tx(
        env.w3,
        env.admin.private_key,
        env.a.endpoint.functions.setInstructor(key_address(rogue), False),
    )
    lock(env, t, by=env.relayer)  # the brokerage's transfer is unaffected
    assert out_leg(env, t)[0] == LOCKED
    same_id = dataclasses.replace(t, recipient=evm_address_word(env.carol.address))
    assert same_id.transfer_id == t.transfer_id
    reverts(
        env,
        "InvalidInstruction",
        env.a.endpoint.functions.lock(same_id.as_abi_tuple(), instruction(t)),
        env.relayer,
    )
    for done in (squat, t):
        finish(env, env.a, ClaimKind.ABORT, done)


@pytest.mark.security
def test_a_claim_signed_for_another_network_is_refused(env: Env) -> None:
    t = locked(env)
    digest = claim_digest(
        claim_domain(env.b.ledger, env.b.endpoint.address, EPOCH, CHAIN_ID + 1),
        Claim(ClaimKind.LOCKED, t.transfer_id, t.terms_hash),
    )
    staging = (EPOCH, b"".join(s.sign_digest(digest) for s in env.signers[1:]))
    before = snapshot(env, t)
    reverts(env, "NotCommitteeMember", env.b.endpoint.functions.prepare(t.as_abi_tuple(), staging))
    assert snapshot(env, t) == before
    assert bytes(env.b.endpoint.functions.networkWord().call()) == evm_network_word(CHAIN_ID)
    finish(env, env.a, ClaimKind.ABORT, t)


@pytest.mark.security
def test_solidity_matches_the_core_vectors(env: Env) -> None:
    """BridgeTypes computes the golden vectors of bridge/core/vectors.json byte for byte."""
    vectors = json.loads((REPO_ROOT / "bridge" / "core" / "vectors.json").read_text())
    fns = env.a.endpoint.functions

    def b(text: str) -> bytes:
        return bytes.fromhex(text[2:])

    for case in vectors["terms"]:
        obj = case["terms"]
        t = (
            b(obj["nonce"]), b(obj["security"]), int(obj["amount"]), b(obj["src_ledger"]),
            b(obj["src_bridge"]), b(obj["dst_ledger"]), b(obj["dst_bridge"]), b(obj["sender"]),
            b(obj["recipient"]), b(obj["instructor"]), obj["deadline"],
        )  # fmt: skip
        assert bytes(fns.transferIdOf(t).call()) == b(case["transfer_id"])
        assert bytes(fns.termsHashOf(t).call()) == b(case["terms_hash"])
    for c in vectors["claims"]:
        got = fns.claimDigestFor(
            b(c["network"]), b(c["ledger"]), b(c["bridge"]), c["epoch"], c["kind"],
            b(c["transfer_id"]), b(c["terms_hash"]),
        ).call()  # fmt: skip
        assert bytes(got) == b(c["digest"])
    for c in vectors["instructions"]:
        got = fns.instructionDigestFor(b(c["network"]), b(c["terms_hash"])).call()
        assert bytes(got) == b(c["digest"])
    assert len(vectors["terms"]) >= 4 and len(vectors["claims"]) >= 6


@pytest.mark.security
def test_a_relayer_lock_needs_a_registered_instructor(env: Env) -> None:
    """A relayer naming its own (validly signing) key as instructor escrows nothing: the key
    is not in the endpoint's registry (finding: stuck escrow towards an unknown ledger)."""
    own = LocalKeySigner(env.relayer.private_key)
    t = dataclasses.replace(
        make_terms(env, instructor=bytes(12) + own.address), dst_ledger=LedgerId("nowhere").word
    )
    ep = env.a.endpoint.functions
    assert not ep.isInstructor(key_address(own)).call()
    before = snapshot(env, t)
    detail = reverts(
        env, "UnknownInstructor", ep.lock(t.as_abi_tuple(), instruction(t, own)), env.relayer
    )
    assert detail.lower().endswith(own.address.hex()), detail
    assert snapshot(env, t) == before
    assert out_leg(env, t)[0] == 0


@pytest.mark.security
def test_only_the_admin_registers_instructors_and_removal_takes_effect(env: Env) -> None:
    key = LocalKeySigner(bytes([0x45]) * 32)
    ep = env.a.endpoint.functions
    for by in (env.relayer, env.alice):
        reverts(env, "NotAdmin", ep.setInstructor(key_address(key), True), by)
    assert not ep.isInstructor(key_address(key)).call()
    reverts(env, "ZeroAddress", ep.setInstructor("0x" + "00" * 20, True), env.admin)
    receipt = tx(env, ep.setInstructor(key_address(key), True), env.admin)
    events = env.a.endpoint.events.InstructorSet().process_receipt(receipt)
    assert [(e.args.instructor, e.args.enabled) for e in events] == [(key_address(key), True)]
    assert ep.isInstructor(key_address(key)).call()
    t = make_terms(env, instructor=bytes(12) + key.address)
    lock(env, t, by=env.relayer, signed=instruction(t, key))
    assert out_leg(env, t)[0] == LOCKED
    tx(env, ep.setInstructor(key_address(key), False), env.admin)
    assert not ep.isInstructor(key_address(key)).call()
    later = make_terms(env, instructor=bytes(12) + key.address)
    before = snapshot(env, later)
    reverts(
        env,
        "UnknownInstructor",
        ep.lock(later.as_abi_tuple(), instruction(later, key)),
        env.relayer,
    )
    assert snapshot(env, later) == before
    # A lock made while the key was registered still finishes.
    finish(env, env.a, ClaimKind.ABORT, t)
    assert out_leg(env, t)[0] == RELEASED
