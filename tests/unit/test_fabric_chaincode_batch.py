"""Batched steps and many-leg reads of the chaincode protocol (issue 14 items 2-4, ADR 0025).

The pure protocol over in-memory stores (the fixtures of test_fabric_chaincode_protocol):
every whole-invocation refusal leaves both stores and the event streams unchanged; replays
are skipped; the supply counters stay exact. The same rules run through the real Fabric
network in tests/integration/fabric/test_fabric_batch.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace as dataclass_replace
from typing import Any

import pytest

from bridge.core import batch as core_batch
from bridge.core.digests import claim_digest
from bridge.domain.claims import ClaimKind
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from tests.unit.test_fabric_chaincode_protocol import (
    BURNED,
    EPOCH,
    ISIN,
    LOCKED,
    MINTED,
    OTHER_ISIN,
    PREPARED,
    REJECTED,
    Env,
    Ledger,
    cert,
    env,
    ins,
    make_terms,
    p,
    rejects,
    tj,
    word_of,
)

pytestmark = [pytest.mark.unit, pytest.mark.batch]

_ = env  # the fixture


def leaf(on: Ledger, kind: ClaimKind, t: TransferTerms, epoch: int = EPOCH) -> bytes:
    return core_batch.batch_leaf(
        claim_digest(on.network, on.word, on.bridge, epoch, int(kind), t.transfer_id, t.terms_hash)
    )


def batch_args(
    env: Env,
    on: Ledger,
    kind: ClaimKind,
    items: Sequence[TransferTerms],
    *,
    tree_of: Sequence[TransferTerms] | None = None,
    signers: Sequence[LocalKeySigner] | None = None,
    cert_kind: ClaimKind | None = None,
    epoch: int = EPOCH,
    leaf_on: Ledger | None = None,
) -> tuple[str, str]:
    """(items JSON, batch certificate JSON): a root over ``tree_of`` (default: the items)
    signed by three members for ``on``; each item with its proof."""
    terms = list(tree_of if tree_of is not None else items)
    lon = leaf_on or on
    tree = core_batch.build_tree(leaf(lon, kind, t, epoch) for t in terms)
    chosen = sorted(signers if signers is not None else env.signers[1:], key=lambda s: s.address)
    digest = core_batch.batch_root_digest(
        on.network, on.word, on.bridge, epoch, int(cert_cod := cert_kind or kind), tree.root,
        tree.count,
    )  # fmt: skip
    cert_json = json.dumps(
        {
            "epoch": epoch,
            "kind": int(cert_cod),
            "root": "0x" + tree.root.hex(),
            "count": tree.count,
            "signatures": ["0x" + s.sign_digest(digest).hex() for s in chosen],
        }
    )
    rows = []
    for t in items:
        lf = leaf(lon, kind, t, epoch)
        proof = tree.proof(lf) if lf in tree.leaves else ()
        rows.append({"terms": json.loads(tj(t)), "proof": ["0x" + x.hex() for x in proof]})
    return json.dumps(rows), cert_json


def lock_items(on: Ledger, items: Sequence[TransferTerms]) -> str:
    return json.dumps(
        [{"terms": json.loads(tj(t)), "instruction": ins(on, tj(t))[1]} for t in items]
    )


def balance(on: Ledger, holder: str) -> int:
    return int(on.call(holder, "HolderStatus", ISIN.isin, holder)["balance"])


def supply(on: Ledger) -> dict[str, Any]:
    return dict(on.call("x:" + "0" * 64, "Supply", ISIN.isin))


def test_lock_batch_locks_each_item_and_skips_a_replay(env: Env) -> None:
    items = [make_terms(env, amount=10 + i) for i in range(3)]
    out = env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    assert (out["applied"], out["skipped"]) == (3, 0)
    assert balance(env.a, env.alice) == 10000 - 33
    name, payload = env.a.events[-1]
    assert name == "LegStatesChanged" and len(payload["legs"]) == 3
    assert [leg["terms"]["amount"] for leg in payload["legs"]] == ["10", "11", "12"]
    events = len(env.a.events)
    again = env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    assert (again["applied"], again["skipped"]) == (0, 3)
    assert all(r["skipped"] and r["state"] == LOCKED for r in again["items"])
    assert balance(env.a, env.alice) == 10000 - 33
    assert len(env.a.events) == events  # nothing applied, no event


def test_commit_batch_on_both_sides_and_replay(env: Env) -> None:
    items = [make_terms(env, amount=5) for _ in range(5)]
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    env.b.call(env.relayer, "PrepareBatch", *batch_args(env, env.b, ClaimKind.LOCKED, items))
    for on in (env.a, env.b):
        args = batch_args(env, on, ClaimKind.COMMIT, items)
        out = on.call(env.relayer, "CommitBatch", *args)
        assert out["applied"] == 5
        again = on.call(env.relayer, "CommitBatch", *args)
        assert (again["applied"], again["skipped"]) == (0, 5)
    assert balance(env.b, env.bob) == 25
    assert supply(env.a)["burned_out"] == "25" and supply(env.b)["minted_in"] == "25"
    assert {r["state"] for r in again["items"]} == {MINTED}
    out_legs = env.a.call(env.relayer, "Legs", "outbound", json.dumps(
        ["0x" + t.transfer_id.hex() for t in items]))  # fmt: skip
    assert [leg["state"] for leg in out_legs["legs"]] == [BURNED] * 5


def test_prepare_batch_rejects_ineligible_recipient_per_item(env: Env) -> None:
    good = make_terms(env)
    bad = make_terms(env, recipient=word_of(env.carol))
    out = env.b.call(
        env.relayer, "PrepareBatch", *batch_args(env, env.b, ClaimKind.LOCKED, [good, bad])
    )
    assert [r["state"] for r in out["items"]] == [PREPARED, REJECTED]
    again = env.b.call(
        env.relayer, "PrepareBatch", *batch_args(env, env.b, ClaimKind.LOCKED, [good, bad])
    )
    assert again["skipped"] == 2


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("other_root", "InvalidBatchProof"),
        ("other_ledger", "InvalidBatchProof"),
        ("root_for_other_ledger", "NotCommitteeMember"),
        ("other_epoch", "WrongEpoch"),
        ("duplicate", "DuplicateBatchItem"),
        ("too_few", "TooFewSignatures"),
        ("wrong_kind", "WrongBatchKind"),
        # Review helper-107: kind before epoch, as the EVM endpoint checks them.
        ("wrong_kind_unknown_epoch", "WrongBatchKind"),
        ("outsider", "NotCommitteeMember"),
    ],
)
def test_whole_batch_refusals_change_nothing(env: Env, case: str, error: str) -> None:
    items = [make_terms(env, amount=3) for _ in range(3)]
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    kw: dict[str, Any] = {}
    batch = items
    if case == "other_root":
        kw["tree_of"] = [*items[:2], make_terms(env)]
    elif case == "other_epoch":
        kw["epoch"] = EPOCH + 1
    elif case == "duplicate":
        batch = [*items, items[0]]  # under a root counting four claims
        kw["tree_of"] = [*items, make_terms(env)]
    elif case == "too_few":
        kw["signers"] = env.signers[:2]
    elif case == "wrong_kind":
        kw["cert_kind"] = ClaimKind.ABORT
    elif case == "wrong_kind_unknown_epoch":
        kw["cert_kind"], kw["epoch"] = ClaimKind.ABORT, EPOCH + 7
    elif case == "outsider":
        kw["signers"] = [*env.signers[:2], env.outsider]
    on = env.a
    args = batch_args(env, on, ClaimKind.COMMIT, batch, **kw)
    if case == "other_ledger":  # leaves of ledger B's claims under a root signed for A
        args = batch_args(env, on, ClaimKind.COMMIT, batch, leaf_on=env.b)
    if case == "root_for_other_ledger":  # a root certified for ledger B presented to A
        args = batch_args(env, env.b, ClaimKind.COMMIT, batch)
    detail = rejects(env, on, error, env.relayer, "CommitBatch", *args)
    if case == "other_root":
        assert "item=2" in detail


def test_single_certificate_is_not_a_root(env: Env) -> None:
    t = make_terms(env)
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, [t]))
    single = json.loads(cert(env, env.a, ClaimKind.COMMIT, t))
    items, _ = batch_args(env, env.a, ClaimKind.COMMIT, [t])
    # the single certificate's signatures are over the claim digest, never a root digest:
    # they recover to strangers whatever root they are presented with (and vice versa)
    forged = {"epoch": EPOCH, "kind": 2, "root": "0x" + claim_digest(
        env.a.network, env.a.word, env.a.bridge, EPOCH, 2, t.transfer_id, t.terms_hash).hex(),
        "count": 1, "signatures": single["signatures"]}  # fmt: skip
    rejects(env, env.a, "NotCommitteeMember", env.relayer, "CommitBatch", items, json.dumps(forged))
    _, root_cert = batch_args(env, env.a, ClaimKind.COMMIT, [t])
    as_single = json.dumps({"epoch": EPOCH, "signatures": json.loads(root_cert)["signatures"]})
    rejects(env, env.a, "NotCommitteeMember", env.relayer, "Commit", tj(t), as_single)


def test_bounds(env: Env) -> None:
    too_many = json.dumps(["0x" + "11" * 32] * (p.MAX_LEG_READS + 1))
    rejects(env, env.a, "InvalidBatch", env.relayer, "Legs", "outbound", too_many)
    items = [make_terms(env) for _ in range(p.MAX_BATCH_ITEMS + 1)]
    rejects(env, env.a, "InvalidBatch", env.relayer, "LockBatch", lock_items(env.a, items))
    rejects(env, env.a, "InvalidBatch", env.relayer, "LockBatch", "[]")
    rejects(env, env.a, "NotRelayer", env.stranger, "LockBatch", lock_items(env.a, items[:1]))


def test_an_overlong_proof_is_refused_at_its_item_before_its_words_are_parsed(env: Env) -> None:
    """Review s20 finding 2: a proof over MAX_PROOF_LENGTH is InvalidBatchProof naming its
    item (as the EVM's InvalidBatchProof(index)) even when its words are not words at all,
    so no peer parses more than the bound; nothing moves."""
    items = [make_terms(env, amount=3) for _ in range(2)]
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    rows, cert_json = batch_args(env, env.a, ClaimKind.COMMIT, items)
    parsed = json.loads(rows)
    parsed[1]["proof"] = ["not a word"] * (core_batch.MAX_PROOF_LENGTH + 1)
    before = supply(env.a)
    detail = rejects(env, env.a, "InvalidBatchProof", env.relayer, "CommitBatch",
                     json.dumps(parsed), cert_json)  # fmt: skip
    assert detail.startswith("item=1, ")
    # at the bound, malformed words are still InvalidArgument (parsed, then refused)
    parsed[1]["proof"] = ["not a word"] * core_batch.MAX_PROOF_LENGTH
    rejects(
        env, env.a, "InvalidArgument", env.relayer, "CommitBatch", json.dumps(parsed), cert_json
    )
    assert supply(env.a) == before


def test_an_overlong_proof_is_refused_in_the_evms_order(env: Env) -> None:
    """Review helper-108 L3: an overlong proof is refused at its item's turn, after the
    certificate and the earlier items (the EVM's order): a wrong-kind certificate is
    WrongBatchKind, an unknown epoch WrongEpoch, an earlier item's repeat
    DuplicateBatchItem, whatever a later item's proof length."""
    items = [make_terms(env, amount=3) for _ in range(2)]
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    long_proof = ["not a word"] * (core_batch.MAX_PROOF_LENGTH + 1)

    def with_long_proof(rows: str, at: int) -> str:
        parsed = json.loads(rows)
        parsed[at]["proof"] = long_proof
        return json.dumps(parsed)

    before = supply(env.a)
    rows, wrong_kind = batch_args(env, env.a, ClaimKind.COMMIT, items, cert_kind=ClaimKind.ABORT)
    rejects(env, env.a, "WrongBatchKind", env.relayer, "CommitBatch",
            with_long_proof(rows, 1), wrong_kind)  # fmt: skip
    rows, unknown = batch_args(env, env.a, ClaimKind.COMMIT, items, epoch=EPOCH + 7)
    rejects(env, env.a, "WrongEpoch", env.relayer, "CommitBatch",
            with_long_proof(rows, 1), unknown)  # fmt: skip
    batch = [items[0], items[0], items[1]]  # item 1 repeats item 0, item 2's proof is long
    rows, cert_json = batch_args(env, env.a, ClaimKind.COMMIT, batch,
                                 tree_of=[*items, make_terms(env)])  # fmt: skip
    detail = rejects(env, env.a, "DuplicateBatchItem", env.relayer, "CommitBatch",
                     with_long_proof(rows, 2), cert_json)  # fmt: skip
    assert detail == "item=1"
    assert supply(env.a) == before


def test_oversized_batch_text_is_refused_before_it_is_decoded(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-107: items or a certificate longer than the bound allows are
    InvalidBatch before any JSON is decoded (a relayer could make every endorsing peer
    decode a proposal-sized text first); nothing moves. At the bound they are decoded."""
    from kstb_chaincode import protocol

    items = [make_terms(env, amount=3) for _ in range(2)]
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, items))
    rows, cert_json = batch_args(env, env.a, ClaimKind.COMMIT, items)
    decoded: list[str] = []
    loads = protocol._loads

    def counted(name: str, text: str) -> Any:
        decoded.append(name)
        return loads(name, text)

    monkeypatch.setattr(protocol, "_loads", counted)
    before = supply(env.a)
    limit = protocol.MAX_BATCH_ITEMS * protocol.MAX_ENTRY_CHARS
    huge = rows[:-1] + "," + " " * limit + "]"
    detail = rejects(env, env.a, "InvalidBatch", env.relayer, "CommitBatch", huge, cert_json)
    assert f"max={limit}" in detail and "items" not in decoded
    padded = cert_json[:-1] + " " * protocol.MAX_CERTIFICATE_CHARS + "}"
    rejects(env, env.a, "InvalidBatch", env.relayer, "CommitBatch", rows, padded)
    assert "batch certificate" not in decoded
    assert supply(env.a) == before
    out = env.a.call(env.relayer, "CommitBatch", rows, cert_json)
    assert out["applied"] == 2


def test_business_refusal_names_its_item(env: Env) -> None:
    items = [make_terms(env, amount=1), make_terms(env, amount=10**6)]
    detail = rejects(
        env, env.a, "InsufficientBalance", env.relayer, "LockBatch", lock_items(env.a, items)
    )
    assert detail.startswith("item=1, ")


def test_a_lock_item_past_its_deadline_names_its_item(env: Env) -> None:
    """A LockBatch item whose deadline the ledger time has reached refuses the batch at that
    item (as a single Lock would), and nothing of the batch is escrowed."""
    items = [make_terms(env, amount=1), make_terms(env, amount=2)]
    items[1] = dataclass_replace(items[1], deadline=env.a.now)
    detail = rejects(
        env, env.a, "DeadlinePassed", env.relayer, "LockBatch", lock_items(env.a, items)
    )
    assert detail.startswith("item=1, ")


def test_settled_leg_with_other_terms_is_terms_mismatch(env: Env) -> None:
    t = make_terms(env, amount=4)
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, [t]))
    env.a.call(env.relayer, "CommitBatch", *batch_args(env, env.a, ClaimKind.COMMIT, [t]))
    other = dataclass_replace(t, amount=5)  # same transfer id, other terms
    assert other.transfer_id == t.transfer_id
    detail = rejects(
        env, env.a, "TermsMismatch", env.relayer, "CommitBatch",
        *batch_args(env, env.a, ClaimKind.COMMIT, [other]),
    )  # fmt: skip
    assert detail.startswith("item=0, ")
    # a lock replayed after its commit is skipped too (the leg is recorded with its terms)
    again = env.a.call(env.relayer, "LockBatch", lock_items(env.a, [t]))
    assert again["skipped"] == 1 and again["items"][0]["state"] == BURNED


def test_prepare_replay_after_abort_is_skipped(env: Env) -> None:
    t = make_terms(env)
    env.b.call(env.relayer, "AbortBatch", *batch_args(env, env.b, ClaimKind.ABORT, [t]))
    out = env.b.call(env.relayer, "PrepareBatch", *batch_args(env, env.b, ClaimKind.LOCKED, [t]))
    assert out["skipped"] == 1 and out["items"][0]["state"] == 5  # the tombstone holds
    assert balance(env.b, env.bob) == 0


def test_legs_answers_what_get_leg_and_not_before_answer(env: Env) -> None:
    # a large-transfer delay on the lane to B, so some legs carry a not-before
    env.a.call(
        env.admin, "SetFlowLimit", ISIN.isin, env.b.name, "1000000", "1000000", "3600", "0",
        "50", "600",
    )  # fmt: skip
    small, large, burned = make_terms(env, amount=5), make_terms(env, amount=60), make_terms(env)
    env.a.call(env.relayer, "LockBatch", lock_items(env.a, [small, large, burned]))
    env.a.call(env.relayer, "CommitBatch", *batch_args(env, env.a, ClaimKind.COMMIT, [small]))
    ids = [t.transfer_id for t in (small, large, burned)] + [bytes(32)]
    got = env.a.call(env.relayer, "Legs", "outbound", json.dumps(["0x" + t.hex() for t in ids]))[
        "legs"
    ]
    for tid, rec in zip(ids, got, strict=True):
        one = env.a.call(env.relayer, "GetLeg", "0x" + tid.hex(), "outbound")
        nb = env.a.call(env.relayer, "NotBefore", "0x" + tid.hex())["outbound"]
        assert rec == {
            **one,
            "transfer_id": "0x" + tid.hex(),
            "not_before": nb if one["state"] == LOCKED else 0,
        }
    assert got[1]["not_before"] > 0 and got[0]["state"] == BURNED


# ---- HolderStatuses: many holders of one security per read (issue 14 item 4)


def _statuses(env: Env, on: Ledger, isin: str, holders: Sequence[str]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = on.call(
        env.stranger, "HolderStatuses", isin, json.dumps(holders)
    )["holders"]
    return records


@pytest.mark.parametrize("paused", [False, True])
def test_holder_statuses_answer_what_holder_status_answers(env: Env, paused: bool) -> None:
    if paused:
        env.b.call(env.admin, "SetPaused", ISIN.isin, "true")
    zero = "0x" + "00" * 20
    # eligible with units, eligible, not eligible, eligible but frozen, unknown, the zero
    # account, and one holder again (answered twice) in upper case
    holders = [
        env.alice, env.bob, env.carol, env.dave, "0x" + "ab" * 20, zero,
        "0x" + env.bob[2:].upper(),
    ]  # fmt: skip
    for on in (env.a, env.b):
        got = _statuses(env, on, ISIN.isin, holders)
        assert len(got) == len(holders)
        for holder, rec in zip(holders, got, strict=True):
            one = on.call(env.stranger, "HolderStatus", ISIN.isin, holder)
            assert rec == {**one, "holder": holder.lower()}
    b = dict(zip(holders, _statuses(env, env.b, ISIN.isin, holders), strict=True))
    # ok, not eligible, frozen (all paused: 4 while the token is), the zero account 5
    assert [b[h]["receive_status"] for h in (env.bob, env.carol, env.dave, zero)] == (
        [4, 4, 4, 5] if paused else [0, 2, 3, 5]
    )
    assert {r["paused"] for r in b.values()} == {paused}
    assert (
        int(_statuses(env, env.a, ISIN.isin, [env.alice])[0]["balance"])
        == balance(env.a, env.alice)
        > 0
    )


def test_holder_statuses_of_an_unregistered_security(env: Env) -> None:
    got = _statuses(env, env.a, OTHER_ISIN.isin, [env.alice])
    one = env.a.call(env.stranger, "HolderStatus", OTHER_ISIN.isin, env.alice)
    assert got == [{**one, "holder": env.alice.lower()}]
    assert got[0]["registered"] is False and got[0]["receive_status"] == 1


def test_holder_statuses_bounds_and_malformed_lists_are_refused(env: Env) -> None:
    for entry in (env.alice, "not an account"):  # the bound is checked before any entry
        over = json.dumps([entry] * (p.MAX_HOLDER_READS + 1))
        detail = rejects(
            env, env.a, "InvalidBatch", env.stranger, "HolderStatuses", ISIN.isin, over
        )
        assert detail == f"count={p.MAX_HOLDER_READS + 1}, max={p.MAX_HOLDER_READS}"
    fresh = Ledger("fabric-c", "kstb")  # never initialised
    with pytest.raises(p.ChaincodeError) as info:
        fresh.call(env.stranger, "HolderStatuses", ISIN.isin, json.dumps([env.alice]))
    assert info.value.name == "NotInitialized"
    at_bound = _statuses(env, env.a, ISIN.isin, [env.alice] * p.MAX_HOLDER_READS)
    assert len(at_bound) == p.MAX_HOLDER_READS
    assert _statuses(env, env.a, ISIN.isin, []) == []
    for bad in (
        '{"holder": 1}', "not json", json.dumps([env.alice, "0x1234"]), json.dumps([env.alice, 7]),
    ):  # fmt: skip
        rejects(env, env.a, "InvalidArgument", env.stranger, "HolderStatuses", ISIN.isin, bad)
    rejects(
        env, env.a, "InvalidArgument", env.stranger, "HolderStatuses", "NOT-AN-ISIN",
        json.dumps([env.alice]),
    )  # fmt: skip
