"""The supply identity and the depository's record verification (pure logic)."""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import replace

import pytest

from bridge.domain.committee import SECP256K1_N, Committee
from bridge.domain.errors import InvalidInput
from bridge.domain.hashing import keccak256
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import (
    GENESIS_HASH,
    SUPPLY_TAG,
    SignedRecord,
    SupplyReading,
    balance,
    make_record,
    verify_records,
)

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"


def reading(
    ledger: str, total: int, escrowed: int = 0, burned: int = 0, minted: int = 0, height: int = 7
) -> SupplyReading:
    return SupplyReading(
        ledger, height, bytes([height % 256]) * 32, total, escrowed, 0, burned, minted
    )


# -- the identity --------------------------------------------------------------------------


def test_identity_through_every_step_of_a_transfer() -> None:
    """1000 issued on A; 250 move A -> B. Every intermediate cut balances, including the
    causally inconsistent ones (B read after the mint, A read before the burn)."""
    registered = {"a": 1000, "b": 0}
    cuts = {
        "before": [reading("a", 1000), reading("b", 0)],
        "locked": [reading("a", 1000, escrowed=250), reading("b", 0)],
        "minted, A not yet burned": [
            reading("a", 1000, escrowed=250),
            reading("b", 250, minted=250),
        ],
        "burned, B read before mint": [reading("a", 750, burned=250), reading("b", 0)],
        "done": [reading("a", 750, burned=250), reading("b", 250, minted=250)],
        "released after abort": [reading("a", 1000), reading("b", 0)],
    }
    for name, cut in cuts.items():
        result = balance(cut, registered)
        assert result.holds, name
        assert result.free + result.in_transit == 1000, name
    locked = balance(cuts["locked"], registered)
    assert (locked.free, locked.in_transit) == (750, 250)
    inconsistent = balance(cuts["minted, A not yet burned"], registered)
    assert (inconsistent.free, inconsistent.in_transit) == (1000, 0)


def test_an_out_of_band_mint_is_attributed_to_its_ledger() -> None:
    registered = {"a": 1000, "b": 0}
    result = balance([reading("a", 750, burned=250), reading("b", 255, minted=250)], registered)
    assert not result.holds
    assert result.discrepancy == 5
    assert dict(result.ledger_discrepancies) == {"b": 5}
    burned_outside = balance([reading("a", 990), reading("b", 0)], registered)
    assert dict(burned_outside.ledger_discrepancies) == {"a": -10}
    assert burned_outside.discrepancy == -10


def test_identity_inputs_are_validated() -> None:
    with pytest.raises(InvalidInput, match="read twice"):
        balance([reading("a", 1), reading("a", 1)], {"a": 1})
    with pytest.raises(InvalidInput, match="no registered issuance"):
        balance([reading("a", 1)], {})
    with pytest.raises(InvalidInput, match="escrow cannot exceed"):
        reading("a", 1, escrowed=2)
    with pytest.raises(InvalidInput, match="negative"):
        SupplyReading("a", -1, b"\0" * 32, 0, 0, 0, 0, 0)


# -- records -------------------------------------------------------------------------------


@pytest.fixture
def committee() -> tuple[Committee, list[LocalKeySigner]]:
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    return Committee(1, 3, tuple(s.address for s in signers)), signers


def chain(n: int, signers: list[LocalKeySigner], registered: int = 1000) -> list[SignedRecord]:
    out: list[SignedRecord] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        cut = [reading("a", registered - seq, burned=seq), reading("b", seq, minted=seq)]
        r = make_record(ISIN, seq, prev, 1, 1_700_000_000_000 + seq, cut, {"a": registered, "b": 0})
        out.append(SignedRecord(r, tuple(s.sign_digest(r.digest) for s in signers[:3])))
        prev = r.digest
    return out


def test_a_good_chain_verifies(committee) -> None:
    c, signers = committee
    records = chain(4, signers)
    assert verify_records(records, c) == []
    assert verify_records(records[2:], c, after=records[1].record) == []
    assert records[0].record.discrepancy == 0


def test_digest_is_domain_separated_canonical_json(committee) -> None:
    _, signers = committee
    r = chain(1, signers)[0].record
    assert r.digest == keccak256(SUPPLY_TAG + b"\0" + r.canonical())
    assert b'"sequence":1' in r.canonical()
    assert (
        r.canonical()
        == make_record(
            ISIN,
            1,
            GENESIS_HASH,
            1,
            r.produced_at_ms,
            list(reversed(r.readings)),
            dict(r.registered),
        ).canonical()
    )


def test_forged_records_fail(committee) -> None:
    c, signers = committee
    records = chain(2, signers)
    outsider = LocalKeySigner(secrets.token_bytes(32))
    forged = SignedRecord(
        records[1].record,
        (*records[1].signatures[:2], outsider.sign_digest(records[1].record.digest)),
    )
    failures = verify_records([records[0], forged], c)
    assert any("not in committee" in f for f in failures)
    assert any("2 valid member signatures, threshold 3" in f for f in failures)


def test_tampered_figures_fail_the_signatures(committee) -> None:
    c, signers = committee
    records = chain(1, signers)
    r = records[0].record
    tampered = replace(
        r,
        readings=(
            replace(r.readings[0], total_supply=r.readings[0].total_supply + 1),
            r.readings[1],
        ),
    )
    failures = verify_records([SignedRecord(tampered, records[0].signatures)], c)
    assert any("valid member signatures" in f for f in failures)
    assert any("stated identity does not match" in f for f in failures)


def test_a_committee_signed_lie_about_the_identity_is_caught(committee) -> None:
    """Even t members signing a record whose stated identity contradicts its figures fails."""
    c, signers = committee
    r = chain(1, signers)[0].record
    lie = replace(
        r,
        discrepancy=0,
        ledger_discrepancies=(),
        readings=(
            replace(r.readings[0], total_supply=r.readings[0].total_supply + 7),
            r.readings[1],
        ),
    )
    signed = SignedRecord(lie, tuple(s.sign_digest(lie.digest) for s in signers[:3]))
    assert verify_records([signed], c) == [
        f"record {ISIN}#1: the stated identity does not match its own figures"
    ]


def test_reordered_and_dropped_records_fail(committee) -> None:
    c, signers = committee
    records = chain(4, signers)
    reordered = verify_records([records[0], records[2], records[1], records[3]], c)
    assert any("expected sequence 2" in f for f in reordered)
    assert any("previous_hash" in f for f in reordered)
    dropped = verify_records([records[0], records[1], records[3]], c)
    assert any("#4: expected sequence 3" in f for f in dropped)
    duplicated = verify_records([records[0], records[0]], c)
    assert any("expected sequence 2" in f for f in duplicated)


def test_high_s_signature_and_wrong_epoch_fail(committee) -> None:
    c, signers = committee
    record = chain(1, signers)[0]
    sig = record.signatures[0]
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    failures = verify_records([SignedRecord(record.record, (high, *record.signatures[1:]))], c)
    assert any("high-s" in f for f in failures)
    other_epoch = Committee(2, c.threshold, c.members)
    assert any("epoch 1, committee epoch is 2" in f for f in verify_records([record], other_epoch))


# -- property: exact for any cut ---------------------------------------------------------------


def _simulate(seed: int) -> tuple[dict[str, list[SupplyReading]], dict[str, int]]:
    """Random transfers (some aborted) over three ledgers, as each ledger records them.

    Returns every ledger's figures after each of its own blocks, and the issuance per
    ledger. Steps of one transfer land on two ledgers at independent times, so reading the
    ledgers at random heights gives causally inconsistent cuts.
    """
    rng = random.Random(seed)
    names = ["a", "b", "f"]
    issued = {n: rng.randint(0, 500) for n in names}
    state = {n: {"total": issued[n], "escrow": 0, "prepared": 0, "burned": 0, "minted": 0}
             for n in names}  # fmt: skip
    history: dict[str, list[SupplyReading]] = {n: [] for n in names}

    def block(n: str) -> None:
        s = state[n]
        history[n].append(
            SupplyReading(n, len(history[n]), b"\1" * 32, s["total"], s["escrow"],
                          s["prepared"], s["burned"], s["minted"])
        )  # fmt: skip

    for n in names:
        block(n)
    pending: list[tuple[str, str, int, str]] = []  # (src, dst, amount, next step)
    for _ in range(rng.randint(5, 40)):
        if pending and rng.random() < 0.6:
            i = rng.randrange(len(pending))
            src, dst, amount, step = pending.pop(i)
            if step == "prepare":
                if rng.random() < 0.2:  # the target refuses: release on the source
                    state[src]["escrow"] -= amount
                    block(src)
                    continue
                state[dst]["prepared"] += amount
                block(dst)
                pending.append((src, dst, amount, "commit"))
            else:  # commit: burn on the source and mint on the target, in either order
                for led in rng.sample([src, dst], 2):
                    s = state[led]
                    if led == src:
                        s["escrow"] -= amount
                        s["total"] -= amount
                        s["burned"] += amount
                    else:
                        s["prepared"] -= amount
                        s["total"] += amount
                        s["minted"] += amount
                    block(led)
            continue
        src, dst = rng.sample(names, 2)
        free = state[src]["total"] - state[src]["escrow"]
        if free == 0:
            continue
        amount = rng.randint(1, free)
        state[src]["escrow"] += amount
        block(src)
        pending.append((src, dst, amount, "prepare"))
    return history, issued


@pytest.mark.parametrize("seed", range(200))
def test_identity_holds_at_every_cut_of_random_histories(seed: int) -> None:
    """Every combination of per-ledger heights balances, however inconsistent the cut."""
    history, issued = _simulate(seed)
    rng = random.Random(seed)
    cuts = list(itertools.product(*history.values()))
    for cut in rng.sample(cuts, min(len(cuts), 300)):
        result = balance(list(cut), issued)
        assert result.holds, (seed, cut)
    # An issue outside the register on one ledger is named, at any cut.
    led = rng.choice(list(history))
    cut = [rng.choice(h) for h in history.values()]
    off = [replace(r, total_supply=r.total_supply + 7) if r.ledger == led else r for r in cut]
    result = balance(off, issued)
    assert result.ledger_discrepancies == {led: 7}
    assert result.discrepancy == 7
