"""Batched ledger steps under batched certificates on the EVM endpoint (ADR 0025, issue 14).

One anvil, the two endpoints of tests/integration/test_evm_contracts.py (ledgers ``evm-a``
and ``evm-b``). Every rejection is mined with a fixed gas limit and then checked for its
precise custom error and that no balance, counter or leg moved (the whole call reverts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from web3.logs import DISCARD
from web3.types import TxReceipt

from bridge.core import batch as core
from bridge.core.reasons import ErrorReason
from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.devnet.processes import REPO_ROOT
from bridge.domain.claims import ClaimDomain, ClaimKind
from bridge.domain.ids import evm_address_word
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm import batch as evm_batch
from bridge.ledgers.evm.batch import BatchItem, BatchStep
from bridge.ledgers.evm.deploy import TxReverted, claim_domain, issue, send_tx, set_relayer
from bridge.ledgers.evm.revert import refusal
from tests.integration.test_evm_contracts import (
    ABORTED,
    BURNED,
    CHAIN_ID,
    EPOCH,
    MINTED,
    PREPARED,
    REJECTED,
    RELEASED,
    Env,
    Ledger,
    _setup,
    brokered,
    cert,
    finish,
    in_leg,
    instruction,
    lock,
    make_terms,
    out_leg,
    prepare,
    snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.batch]

FIXED_GAS = 6_000_000


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode(
        name="batch",
        chain_id=CHAIN_ID,
        block_time=0,
        workdir=Path(tmp_path_factory.mktemp("anvil")),
    ).start()
    try:
        e = _setup(node)
        issue(e.w3, e.admin.private_key, e.a.token, e.alice.address, 100_000)
        yield e
    finally:
        node.stop()


# --------------------------------------------------------------------------- helpers


def domain(on: Ledger, epoch: int = EPOCH) -> ClaimDomain:
    return claim_domain(on.ledger, on.endpoint.address, epoch, CHAIN_ID)


def signed(
    env: Env,
    b: core.Batch,
    *,
    signers: Sequence[LocalKeySigner] | None = None,
    digest: bytes | None = None,
    epoch: int | None = None,
    count: int | None = None,
) -> core.BatchCertificate:
    """A batch certificate over ``b``'s root digest (3 of 4 ascending by default)."""
    chosen = signers if signers is not None else env.signers[1:]
    d = digest if digest is not None else b.digest
    return core.BatchCertificate(
        epoch if epoch is not None else b.epoch,
        b.kind,
        b.root,
        count if count is not None else b.count,
        tuple(s.sign_digest(d) for s in chosen),
    )


def certified(
    env: Env, on: Ledger, kind: ClaimKind, terms: Sequence[TransferTerms]
) -> tuple[list[BatchItem], core.BatchCertificate]:
    b = evm_batch.endpoint_batch(domain(on), kind, terms)
    return evm_batch.batch_items(b, domain(on), terms), signed(env, b)


def step(
    env: Env,
    on: Ledger,
    s: BatchStep,
    items: Sequence[BatchItem],
    c: core.BatchCertificate,
    *,
    by: DevAccount | None = None,
    gas: int | None = None,
) -> TxReceipt:
    fn = evm_batch.step_call(on.endpoint, s, items, c)
    return send_tx(env.w3, (by or env.relayer).private_key, fn, gas=gas)


def run(env: Env, on: Ledger, s: BatchStep, terms: Sequence[TransferTerms]) -> TxReceipt:
    """Certify ``terms`` for step ``s`` on ``on`` and run the batched step."""
    items, c = certified(env, on, s.kind, terms)
    return step(env, on, s, items, c)


def lock_all(env: Env, terms: Sequence[TransferTerms], *, gas: int | None = None) -> TxReceipt:
    """``lockBatch`` by the relayer with BROKER's instructions."""
    fn = evm_batch.lock_call(env.a.endpoint, terms, [instruction(t) for t in terms])
    return send_tx(env.w3, env.relayer.private_key, fn, gas=gas)


def refused(env: Env, error: ErrorReason, fn: Any, *, by: DevAccount | None = None) -> Any:
    """``fn`` is mined with a fixed gas limit and reverts with ``error``; its figures."""
    with pytest.raises(TxReverted) as info:
        send_tx(env.w3, (by or env.relayer).private_key, fn, gas=FIXED_GAS)
    assert info.value.error_name == error.value, str(info.value)
    assert info.value.tx_hash is not None
    assert refusal(info.value.data).reason is error  # the typed decoding of the revert
    return info.value.detail


def skipped(on: Ledger, receipt: TxReceipt) -> list[tuple[bytes, int, int]]:
    events = on.endpoint.events.BatchItemSkipped().process_receipt(receipt, errors=DISCARD)
    return [(bytes(e["args"]["transferId"]), e["args"]["leg"], e["args"]["state"]) for e in events]


def batch_of(env: Env, n: int, **kw: Any) -> list[TransferTerms]:
    return [brokered(env, **kw) for _ in range(n)]


def prepared_batch(env: Env, n: int, **kw: Any) -> list[TransferTerms]:
    ts = batch_of(env, n, **kw)
    lock_all(env, ts)
    run(env, env.b, BatchStep.PREPARE, ts)
    return ts


# --------------------------------------------------------------------------- vectors


@pytest.mark.security
def test_solidity_matches_the_batch_vectors(env: Env) -> None:
    """BridgeTypes computes the leaves, nodes, roots and root digests of vectors.json."""
    spec = json.loads((REPO_ROOT / "bridge/core/vectors.json").read_text())["batches"]
    fns = env.a.endpoint.functions

    def b(text: str) -> bytes:
        return bytes.fromhex(text[2:])

    assert bytes(fns.batchRootOf(b(spec["leaf"]["claim_digest"]), []).call()) == b(
        spec["leaf"]["leaf"]
    )
    checked = 0
    for tree in spec["trees"]:
        for item in tree["items"]:
            root = fns.batchRootOf(b(item["claim_digest"]), [b(p) for p in item["proof"]]).call()
            assert bytes(root) == b(tree["root"])
            checked += 1
        digest = fns.batchRootDigestFor(
            b(spec["network"]), b(spec["ledger"]), b(spec["bridge"]), spec["epoch"],
            spec["kind"], b(tree["root"]), tree["count"],
        ).call()  # fmt: skip
        assert bytes(digest) == b(tree["root_digest"])
    assert checked == 1 + 2 + 3 + 5
    two = spec["trees"][1]["items"]
    assert {two[0]["leaf"], two[1]["leaf"]} == {spec["node"]["a"], spec["node"]["b"]}


# --------------------------------------------------------------------------- happy paths


def test_a_batch_settles_every_item_with_exact_balances(env: Env) -> None:
    before = snapshot(env)
    ts = batch_of(env, 5, amount=3)
    lock_all(env, ts)
    assert all(out_leg(env, t)[0] == 1 for t in ts)
    run(env, env.b, BatchStep.PREPARE, ts)
    assert all(in_leg(env, t)[0] == PREPARED for t in ts)
    run(env, env.b, BatchStep.COMMIT, ts)
    run(env, env.a, BatchStep.COMMIT, ts)
    after = snapshot(env)
    assert [out_leg(env, t)[0] for t in ts] == [BURNED] * 5
    assert [in_leg(env, t)[0] for t in ts] == [MINTED] * 5
    assert after["alice@A"] == before["alice@A"] - 15
    assert after["bob@B"] == before["bob@B"] + 15
    assert after["escrow@A"] == before["escrow@A"]
    assert after["supply@A"] == before["supply@A"] - 15
    assert after["supply@B"] == before["supply@B"] + 15
    assert after["prepared@B"] == before["prepared@B"]
    assert after["counters@A"][0] == before["counters@A"][0] + 15
    assert after["counters@B"][1] == before["counters@B"][1] + 15


def test_the_holder_may_lock_its_own_transfers_in_one_batch(env: Env) -> None:
    ts = [make_terms(env, amount=2) for _ in range(3)]
    fn = evm_batch.lock_call(env.a.endpoint, ts, [b""] * 3)
    send_tx(env.w3, env.alice.private_key, fn)
    assert [out_leg(env, t)[0] for t in ts] == [1, 1, 1]
    # A stranger's batch (neither the holder nor a relayer) escrows nothing.
    more = [make_terms(env, amount=2)]
    refused(env, ErrorReason.NOT_SENDER, evm_batch.lock_call(env.a.endpoint, more, [b""]),
            by=env.bob)  # fmt: skip
    assert out_leg(env, more[0])[0] == 0


def test_a_batch_mixing_committed_and_aborted_items(env: Env) -> None:
    """Bob's items commit under a COMMIT root, Carol's (ineligible: Rejected at prepare, per
    item) abort under an ABORT root; a COMMIT root cannot abort, nor an ABORT root commit."""
    before = snapshot(env)
    good = batch_of(env, 2, amount=4)
    bad = batch_of(env, 2, amount=5, recipient=evm_address_word(env.carol.address))
    lock_all(env, good + bad)
    run(env, env.b, BatchStep.PREPARE, good + bad)
    assert [in_leg(env, t)[0] for t in good] == [PREPARED] * 2
    assert [in_leg(env, t)[0] for t in bad] == [REJECTED] * 2

    commit_items, commit_cert = certified(env, env.b, ClaimKind.COMMIT, good)
    abort_items, abort_cert = certified(env, env.b, ClaimKind.ABORT, bad)
    mid = snapshot(env)
    detail = refused(env, ErrorReason.WRONG_BATCH_KIND,
                     evm_batch.step_call(env.b.endpoint, BatchStep.ABORT, commit_items, commit_cert))  # fmt: skip
    assert "got=2" in detail and "needed=3" in detail
    refused(env, ErrorReason.WRONG_BATCH_KIND,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, abort_items, abort_cert))  # fmt: skip
    # A COMMIT root's item presented with a relabelled kind does not prove either.
    relabelled = core.BatchCertificate(
        commit_cert.epoch, int(ClaimKind.ABORT), commit_cert.root, commit_cert.count,
        commit_cert.signatures,
    )  # fmt: skip
    refused(env, ErrorReason.NOT_COMMITTEE_MEMBER,
            evm_batch.step_call(env.b.endpoint, BatchStep.ABORT, commit_items, relabelled))  # fmt: skip
    assert snapshot(env) == mid

    step(env, env.b, BatchStep.COMMIT, commit_items, commit_cert)
    step(env, env.b, BatchStep.ABORT, abort_items, abort_cert)
    run(env, env.a, BatchStep.COMMIT, good)
    run(env, env.a, BatchStep.ABORT, bad)
    assert [out_leg(env, t)[0] for t in good] == [BURNED] * 2
    assert [out_leg(env, t)[0] for t in bad] == [RELEASED] * 2
    assert [in_leg(env, t)[0] for t in good] == [MINTED] * 2
    assert [in_leg(env, t)[0] for t in bad] == [ABORTED] * 2
    after = snapshot(env)
    assert after["alice@A"] == before["alice@A"] - 8
    assert after["bob@B"] == before["bob@B"] + 8
    assert after["escrow@A"] == before["escrow@A"]
    assert after["prepared@B"] == before["prepared@B"]
    assert env.b.token.functions.balanceOf(env.carol.address).call() == 0


def test_a_replayed_batch_skips_every_item_and_moves_nothing(env: Env) -> None:
    ts = prepared_batch(env, 3, amount=2)
    items, c = certified(env, env.b, ClaimKind.COMMIT, ts)
    step(env, env.b, BatchStep.COMMIT, items, c)
    a_items, a_cert = certified(env, env.a, ClaimKind.COMMIT, ts)
    step(env, env.a, BatchStep.COMMIT, a_items, a_cert)
    before = snapshot(env)
    receipt = step(env, env.b, BatchStep.COMMIT, items, c)
    assert sorted(skipped(env.b, receipt)) == sorted((t.transfer_id, 1, MINTED) for t in ts)
    receipt = step(env, env.a, BatchStep.COMMIT, a_items, a_cert)
    assert sorted(skipped(env.a, receipt)) == sorted((t.transfer_id, 0, BURNED) for t in ts)
    # Replayed prepare and lock batches are skipped too.
    receipt = run(env, env.b, BatchStep.PREPARE, ts)
    assert len(skipped(env.b, receipt)) == 3
    receipt = lock_all(env, ts)
    assert sorted(skipped(env.a, receipt)) == sorted((t.transfer_id, 0, BURNED) for t in ts)
    assert snapshot(env) == before
    # The single-claim step still refuses a replay (its semantics are unchanged).
    with pytest.raises(TxReverted) as info:
        finish(env, env.b, ClaimKind.COMMIT, ts[0])
    assert info.value.error_name == "BadState"


def test_a_partly_settled_batch_applies_only_the_rest(env: Env) -> None:
    ts = prepared_batch(env, 3, amount=1)
    finish(env, env.b, ClaimKind.COMMIT, ts[1])  # one item committed on its own first
    before = snapshot(env)
    receipt = run(env, env.b, BatchStep.COMMIT, ts)
    assert skipped(env.b, receipt) == [(ts[1].transfer_id, 1, MINTED)]
    assert [in_leg(env, t)[0] for t in ts] == [MINTED] * 3
    assert snapshot(env)["bob@B"] == before["bob@B"] + 2


# --------------------------------------------------------------------------- rejections


@pytest.mark.security
def test_an_item_with_a_proof_for_another_root(env: Env) -> None:
    ts = prepared_batch(env, 3, amount=1)
    items, c = certified(env, env.b, ClaimKind.COMMIT, ts[:2])
    other = evm_batch.endpoint_batch(domain(env.b), ClaimKind.COMMIT, ts)
    foreign = evm_batch.batch_items(other, domain(env.b), ts[1:2])[0]
    before = snapshot(env)
    detail = refused(env, ErrorReason.INVALID_BATCH_PROOF,
                     evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, [items[0], foreign], c))  # fmt: skip
    assert detail == "index=1"
    # An item that is not in the root at all, with any proof, does not prove either.
    stranger = BatchItem(ts[2], proof=items[0].proof)
    refused(env, ErrorReason.INVALID_BATCH_PROOF,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, [stranger], c))  # fmt: skip
    assert snapshot(env) == before and [in_leg(env, t)[0] for t in ts] == [PREPARED] * 3


@pytest.mark.security
def test_an_item_or_a_root_for_another_ledger_or_endpoint(env: Env) -> None:
    ts = prepared_batch(env, 2, amount=1)
    before = snapshot(env)
    # A root of claims for ledger A's endpoint, signed for A: on B no signer is a member.
    items, c = certified(env, env.a, ClaimKind.COMMIT, ts)
    refused(env, ErrorReason.NOT_COMMITTEE_MEMBER,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, c))  # fmt: skip
    # The same root signed for B's domain: signatures verify, but B's leaf of each item
    # (bound to ledger B) is not in a tree of ledger-A claims.
    b = evm_batch.endpoint_batch(domain(env.a), ClaimKind.COMMIT, ts)
    on_b = core.batch_root_digest(*_words(env.b), EPOCH, b.kind, b.root, b.count)
    c_b = signed(env, b, digest=on_b)
    refused(env, ErrorReason.INVALID_BATCH_PROOF,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, c_b))  # fmt: skip
    # Another contract on the same ledger (B's twin) refuses B's root.
    items_b, c_good = certified(env, env.b, ClaimKind.COMMIT, ts)
    twin = Ledger(env.b.ledger, env.b_twin, env.b.token)
    set_relayer(env.w3, env.admin.private_key, twin.endpoint, env.relayer.address)
    refused(env, ErrorReason.NOT_COMMITTEE_MEMBER,
            evm_batch.step_call(twin.endpoint, BatchStep.COMMIT, items_b, c_good))  # fmt: skip
    assert snapshot(env) == before


def _words(on: Ledger) -> tuple[bytes, bytes, bytes]:
    d = domain(on)
    return (d.network, d.ledger, d.contract)


@pytest.mark.security
def test_an_item_or_a_root_of_another_epoch(env: Env) -> None:
    ts = prepared_batch(env, 2, amount=1)
    before = snapshot(env)
    b = evm_batch.endpoint_batch(domain(env.b, epoch=2), ClaimKind.COMMIT, ts)
    items = evm_batch.batch_items(b, domain(env.b, epoch=2), ts)
    detail = refused(env, ErrorReason.WRONG_EPOCH,
                     evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, signed(env, b)))  # fmt: skip
    assert "got=2" in detail
    # Epoch-2 claims under a root re-labelled (and signed) as epoch 1: the items' epoch-1
    # leaves are not in the tree.
    relabel = core.batch_root_digest(*_words(env.b), EPOCH, b.kind, b.root, b.count)
    c = signed(env, b, digest=relabel, epoch=EPOCH)
    refused(env, ErrorReason.INVALID_BATCH_PROOF,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, c))  # fmt: skip
    assert snapshot(env) == before


@pytest.mark.security
def test_a_duplicated_item_reverts_the_whole_call(env: Env) -> None:
    ts = prepared_batch(env, 2, amount=1)
    items, c = certified(env, env.b, ClaimKind.COMMIT, ts)
    before = snapshot(env)
    # Three items under a root of two claims: more items than the root covers.
    refused(env, ErrorReason.INVALID_BATCH,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT,
                                [items[0], items[1], items[0]], c))  # fmt: skip
    # The committee signed a count of 4 for that root: the repeated item is refused as such.
    big = evm_batch.endpoint_batch(domain(env.b), ClaimKind.COMMIT, ts)
    c4 = signed(env, big, digest=core.batch_root_digest(
        *_words(env.b), EPOCH, big.kind, big.root, 4), count=4)  # fmt: skip
    detail = refused(env, ErrorReason.DUPLICATE_BATCH_ITEM,
                     evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT,
                                         [items[0], items[1], items[0]], c4))  # fmt: skip
    assert detail == "index=2"
    assert snapshot(env) == before and [in_leg(env, t)[0] for t in ts] == [PREPARED] * 2
    more = batch_of(env, 2, amount=1)
    refused(env, ErrorReason.DUPLICATE_BATCH_ITEM,
            evm_batch.lock_call(env.a.endpoint, [more[0], more[1], more[0]],
                                [instruction(t) for t in (more[0], more[1], more[0])]))  # fmt: skip
    assert [out_leg(env, t)[0] for t in more] == [0, 0]


@pytest.mark.security
def test_a_root_signed_by_too_few_or_by_non_members(env: Env) -> None:
    ts = prepared_batch(env, 2, amount=1)
    b = evm_batch.endpoint_batch(domain(env.b), ClaimKind.COMMIT, ts)
    items = evm_batch.batch_items(b, domain(env.b), ts)
    before = snapshot(env)
    refused(env, ErrorReason.TOO_FEW_SIGNATURES,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items,
                                signed(env, b, signers=env.signers[:2])))  # fmt: skip
    with_outsider = sorted([*env.signers[:2], env.outsider], key=lambda s: s.address)
    refused(env, ErrorReason.NOT_COMMITTEE_MEMBER,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items,
                                signed(env, b, signers=with_outsider)))  # fmt: skip
    refused(env, ErrorReason.SIGNERS_NOT_ASCENDING,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items,
                                signed(env, b, signers=list(reversed(env.signers[1:])))))  # fmt: skip
    assert snapshot(env) == before


@pytest.mark.security
def test_single_claim_and_batch_signatures_are_not_interchangeable(env: Env) -> None:
    ts = prepared_batch(env, 1, amount=1)
    t = ts[0]
    b = evm_batch.endpoint_batch(domain(env.b), ClaimKind.COMMIT, ts)
    items = evm_batch.batch_items(b, domain(env.b), ts)
    before = snapshot(env)
    # A single-claim COMMIT certificate's signatures presented as the root's.
    _, single_sigs = cert(env, env.b, ClaimKind.COMMIT, t)
    as_root = core.BatchCertificate(
        EPOCH, b.kind, b.root, 1, tuple(single_sigs[i : i + 65] for i in range(0, 195, 65))
    )
    refused(env, ErrorReason.NOT_COMMITTEE_MEMBER,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, as_root))  # fmt: skip
    # ... even with the signed claim digest itself as the "root" of a one-item batch.
    claim = domain(env.b)
    digest = core.BatchClaim(
        claim.network, claim.ledger, claim.contract, EPOCH, b.kind, t.transfer_id, t.terms_hash
    ).digest
    claim_root = core.BatchCertificate(EPOCH, b.kind, digest, 1, as_root.signatures)
    refused(env, ErrorReason.NOT_COMMITTEE_MEMBER,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, claim_root))  # fmt: skip
    # The root's signatures presented as a single-claim certificate.
    root_sigs = b"".join(signed(env, b).signatures)
    with pytest.raises(TxReverted) as info:
        send_tx(env.w3, env.relayer.private_key,
                env.b.endpoint.functions.commit(t.as_abi_tuple(), (EPOCH, root_sigs)),
                gas=FIXED_GAS)  # fmt: skip
    assert info.value.error_name == "NotCommitteeMember"
    assert snapshot(env) == before and in_leg(env, t)[0] == PREPARED


@pytest.mark.security
def test_malformed_batches_and_callers(env: Env) -> None:
    ts = prepared_batch(env, 2, amount=1)
    items, c = certified(env, env.b, ClaimKind.COMMIT, ts)
    before = snapshot(env)
    fns = env.b.endpoint.functions
    cert_tuple = evm_batch.certificate_tuple(c)
    refused(env, ErrorReason.INVALID_BATCH, fns.commitBatch([], [], cert_tuple))
    refused(env, ErrorReason.INVALID_BATCH,
            fns.commitBatch([i.terms.as_abi_tuple() for i in items], [list(items[0].proof)],
                            cert_tuple))  # fmt: skip
    too_long = BatchItem(items[0].terms, proof=items[0].proof + (bytes(32),) * 40)
    refused(env, ErrorReason.INVALID_BATCH_PROOF,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, [too_long], c))  # fmt: skip
    refused(env, ErrorReason.NOT_RELAYER,
            evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, items, c), by=env.bob)  # fmt: skip
    refused(env, ErrorReason.INVALID_BATCH,
            evm_batch.lock_call(env.a.endpoint, [], []))  # fmt: skip
    assert snapshot(env) == before


def test_a_prepare_batch_records_rejections_per_item(env: Env) -> None:
    """Business refusals keep their per-item semantics: an ineligible or frozen recipient
    is Rejected on its own, the other items are Prepared."""
    ok = batch_of(env, 1, amount=1)
    carol = batch_of(env, 1, amount=1, recipient=evm_address_word(env.carol.address))
    dave = batch_of(env, 1, amount=1, recipient=evm_address_word(env.dave.address))
    ts = [*ok, *carol, *dave]
    lock_all(env, ts)
    run(env, env.b, BatchStep.PREPARE, ts)
    assert [in_leg(env, t)[0] for t in ts] == [PREPARED, REJECTED, REJECTED]
    assert [in_leg(env, t)[4] for t in ts] == [0, 2, 3]


def test_single_steps_still_work_beside_batches(env: Env) -> None:
    t = make_terms(env, amount=1)
    lock(env, t)
    prepare(env, t)
    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    assert (out_leg(env, t)[0], in_leg(env, t)[0]) == (BURNED, MINTED)


# --------------------------------------------------------------------------- gas


def _calldata_gas(data: bytes) -> int:
    return sum(4 if x == 0 else 16 for x in data)


def test_gas_per_batch_and_per_item(env: Env) -> None:
    """Prints gas per batch and per item for batches of 1, 10 and 50 (lock, prepare,
    commit on each side) beside the single steps, and bounds the certificate check."""
    figures: dict[str, dict[int, int]] = {"lock": {}, "prepare": {}, "commit B": {}, "commit A": {}}
    warm = batch_of(env, 1, amount=1)  # first writes of the ledgers' counters are not measured
    lock_all(env, warm)
    for on, s in ((env.b, BatchStep.PREPARE), (env.b, BatchStep.COMMIT), (env.a, BatchStep.COMMIT)):
        run(env, on, s, warm)
    for n in (1, 10, 50):
        ts = batch_of(env, n, amount=1)
        figures["lock"][n] = lock_all(env, ts)["gasUsed"]
        figures["prepare"][n] = run(env, env.b, BatchStep.PREPARE, ts)["gasUsed"]
        figures["commit B"][n] = run(env, env.b, BatchStep.COMMIT, ts)["gasUsed"]
        figures["commit A"][n] = run(env, env.a, BatchStep.COMMIT, ts)["gasUsed"]
    t = brokered(env, amount=1)
    single = {
        "lock": lock(env, t, by=env.relayer)["gasUsed"],
        "prepare": prepare(env, t)["gasUsed"],
        "commit B": finish(env, env.b, ClaimKind.COMMIT, t)["gasUsed"],
        "commit A": finish(env, env.a, ClaimKind.COMMIT, t)["gasUsed"],
    }
    print()
    print(
        f"{'step':10} {'single':>8} "
        + " ".join(f"{f'n={n} batch':>13} {'/item':>7}" for n in (1, 10, 50))
    )
    for name, by_n in figures.items():
        row = " ".join(f"{g:>13} {g // n:>7}" for n, g in by_n.items())
        print(f"{name:10} {single[name]:>8} {row}")
        marginal = (by_n[50] - by_n[10]) / 40
        print(f"{'':10} marginal per item (10->50): {marginal:.0f}")
    # The certificate check: a commit batch whose first item's proof fails runs the whole
    # certificate check and one leaf; its gas less the intrinsic 21,000 and calldata.
    ts = prepared_batch(env, 2, amount=1)
    _items, c = certified(env, env.b, ClaimKind.COMMIT, ts)
    bad = BatchItem(ts[0], proof=(bytes(32),))
    fn = evm_batch.step_call(env.b.endpoint, BatchStep.COMMIT, [bad], c)
    with pytest.raises(TxReverted) as info:
        send_tx(env.w3, env.relayer.private_key, fn, gas=FIXED_GAS)
    assert info.value.error_name == "InvalidBatchProof"
    receipt = env.w3.eth.get_transaction_receipt(info.value.tx_hash)
    data = bytes(env.w3.eth.get_transaction(info.value.tx_hash)["input"])
    check = receipt["gasUsed"] - 21_000 - _calldata_gas(data)
    print(f"certificate check (3 of 4 signatures) + one leaf: {check} gas")
    assert check <= 35_000
