"""Fewer state reads per step (issue 14): a leg the chaincode recorded says what its index key
holds and whether it has a delay, so the steps and ``Legs`` do not read those keys.

Each state read is one round trip between the chaincode and its peer; the Fabric chaincode
server saturated first in the end-of-day benchmark, almost all of its CPU in those round
trips. These tests trace what reaches the store with the check off (production) and show
the rule's limits: a delayed leg still reads its delay, a leg recorded by an earlier version
(no ``delayed`` field) reads everything as before, and with ``CHECK_ASSUMED`` (the whole
test suite) a key that does not hold what its leg says fails the call, nothing written.
"""

from __future__ import annotations

import json

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.terms import TransferTerms
from tests.unit.test_fabric_chaincode_protocol import (
    ISIN,
    Env,
    Ledger,
    TracingStore,
    env,
    finish,
    ins,
    lock,
    make_terms,
    out_leg,
    p,
    prepare,
    supply,
    tj,
)

pytestmark = [pytest.mark.unit, pytest.mark.batch]

_ = env  # the fixture

INDEX = ("escrow/", "prepared/", "burned/", "minted/", "notbefore/")


def traced(
    env: Env, on: Ledger, fn: str, *args: str, store: TracingStore | None = None
) -> TracingStore:
    """Run ``fn`` over a store that records every key read and written."""
    store = store or TracingStore(on.store.data)
    ctx = p.Context(
        caller=env.relayer, channel_id=on.channel, chaincode_name=on.chaincode, tx_time=on.now
    )
    p.execute(store, ctx, fn, list(args), lambda name, payload: None)
    return store


def stored_leg(on: Ledger, direction: str, t: TransferTerms) -> dict[str, object]:
    raw = on.store.get(f"{direction}/{t.transfer_id.hex()}")
    assert raw is not None
    record: dict[str, object] = json.loads(raw)
    return record


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production: values taken from legs are not read again."""
    monkeypatch.setattr(p, "CHECK_ASSUMED", False)


@pytest.mark.usefixtures("unchecked")
def test_steps_of_a_recorded_leg_read_no_index_or_delay_key(env: Env) -> None:
    committed, aborted = make_terms(env, amount=7), make_terms(env, amount=5)
    steps = [(env.a, "Lock", t, lambda t: ins(env.a, tj(t))) for t in (committed, aborted)] + [
        (env.b, "Prepare", t, lambda t: (tj(t), cert_of(env, env.b, ClaimKind.LOCKED, t)))
        for t in (committed, aborted)
    ]
    for on, fn, t, args in steps:
        store = traced(env, on, fn, *args(t))
        assert not [k for k in store.reads if k.startswith(INDEX)], (fn, store.reads)
        assert any(k.startswith(("escrow/", "prepared/")) for k in store.writes)
    for on, kind, t in (
        (env.b, ClaimKind.COMMIT, committed),
        (env.a, ClaimKind.COMMIT, committed),
        (env.a, ClaimKind.ABORT, aborted),
        (env.b, ClaimKind.ABORT, aborted),
    ):
        fn = "Commit" if kind is ClaimKind.COMMIT else "Abort"
        store = traced(env, on, fn, tj(t), cert_of(env, on, kind, t))
        assert not [k for k in store.reads if k.startswith(INDEX)], (fn, store.reads)
    legs = traced(env, env.a, "Legs", "outbound", json.dumps(["0x" + committed.transfer_id.hex()]))
    assert not [k for k in legs.reads if k.startswith(INDEX)]
    # the counters moved exactly as if every key had been read
    assert supply(env.a) == {**supply(env.a), "escrowed": 0, "burned_out": 7}
    assert supply(env.b) == {**supply(env.b), "prepared": 0, "minted_in": 7}
    assert stored_leg(env.a, "out", committed)["delayed"] is False


def cert_of(env: Env, on: Ledger, kind: ClaimKind, t: TransferTerms) -> str:
    from tests.unit.test_fabric_chaincode_protocol import cert

    return cert(env, on, kind, t)


@pytest.mark.usefixtures("unchecked")
def test_a_delayed_leg_still_reads_and_enforces_its_delay(env: Env) -> None:
    env.a.call(
        env.admin, "SetFlowLimit", ISIN.isin, env.b.name, "1000000", "1000000", "3600", "0",
        "50", "600",
    )  # fmt: skip
    large = make_terms(env, amount=60)
    locked = traced(env, env.a, "Lock", *ins(env.a, tj(large)))
    delay = f"notbefore/out/{large.transfer_id.hex()}"
    # written blind: a key the counters do not cover is not read before it is written
    assert delay in locked.writes and delay not in locked.reads
    assert stored_leg(env.a, "out", large)["delayed"] is True
    store = TracingStore(env.a.store.data)
    commit = (tj(large), cert_of(env, env.a, ClaimKind.COMMIT, large))
    with pytest.raises(p.ChaincodeError) as info:
        traced(env, env.a, "Commit", *commit, store=store)
    assert info.value.name == "TooEarly"
    assert f"notbefore/out/{large.transfer_id.hex()}" in store.reads
    legs = env.a.call(env.relayer, "Legs", "outbound", json.dumps(["0x" + large.transfer_id.hex()]))
    assert legs["legs"][0]["not_before"] > 0


@pytest.mark.usefixtures("unchecked")
def test_a_leg_recorded_before_the_field_reads_its_keys_as_before(env: Env) -> None:
    """Upgrade: a Locked leg written by an earlier chaincode has no ``delayed``; its delay
    record and index key are read, so a delay written then is still enforced and the
    counters still move by what the key held."""
    t = make_terms(env, amount=9)
    lock(env, t)
    key = f"out/{t.transfer_id.hex()}"
    old = {k: v for k, v in stored_leg(env.a, "out", t).items() if k != "delayed"}
    env.a.store.put(key, p.canonical_json(old))
    env.a.store.put(
        f"notbefore/out/{t.transfer_id.hex()}",
        p.canonical_json(
            {"at": env.a.now + 100, "since": env.a.now, "sec": ISIN.word.hex(),
             "lane": env.b.word.hex()}
        ),
    )  # fmt: skip
    env.a.call(  # the lane's delay is still 600 s, so the stored 100 s holds
        env.admin, "SetFlowLimit", ISIN.isin, env.b.name, "0", "0", "0", "0", "1", "600"
    )
    with pytest.raises(p.ChaincodeError) as info:
        finish(env, env.a, ClaimKind.COMMIT, t)
    assert info.value.name == "TooEarly"
    env.a.now += 100
    store = traced(env, env.a, "Commit", tj(t), cert_of(env, env.a, ClaimKind.COMMIT, t))
    assert {f"escrow/{ISIN.word.hex()}/{t.transfer_id.hex()}",
            f"burned/{ISIN.word.hex()}/{t.transfer_id.hex()}"} <= store.reads  # fmt: skip
    assert "delayed" not in stored_leg(env.a, "out", t)  # not invented for an old leg
    assert supply(env.a)["escrowed"] == 0 and supply(env.a)["burned_out"] == 9


def test_check_assumed_refuses_a_key_that_is_not_what_its_leg_says(env: Env) -> None:
    """The test suite's guard (CHECK_ASSUMED): the call fails and writes nothing."""
    assert p.CHECK_ASSUMED, "tests/conftest.py turns the check on for the whole suite"
    t = make_terms(env, amount=4)
    lock(env, t)
    escrow = f"escrow/{ISIN.word.hex()}/{t.transfer_id.hex()}"
    env.a.store.put(escrow, b"5")  # not the leg's 4
    before = dict(env.a.store.data)
    with pytest.raises(AssertionError, match="its leg says"):
        finish(env, env.a, ClaimKind.COMMIT, t)
    assert env.a.store.data == before


def test_the_delay_marker_is_stored_but_never_reported(env: Env) -> None:
    """GetLeg, Legs and the LegStateChanged event keep the EVM endpoint's fields."""
    t = make_terms(env)
    lock(env, t)
    prepare(env, t)
    assert set(out_leg(env, t)) == {"state", "terms_hash", "amount", "security", "reason"}
    assert stored_leg(env.a, "out", t)["delayed"] is False
    assert stored_leg(env.b, "in", t)["delayed"] is False
    for name, payload in env.a.events + env.b.events:
        assert "delayed" not in payload, name


def test_check_assumed_refuses_a_delay_its_leg_does_not_say(env: Env) -> None:
    t = make_terms(env, amount=4)
    lock(env, t)
    env.a.store.put(
        f"notbefore/out/{t.transfer_id.hex()}",
        p.canonical_json({"at": env.a.now + 100, "since": env.a.now, "sec": ISIN.word.hex(),
                          "lane": env.b.word.hex()}),
    )  # fmt: skip
    before = dict(env.a.store.data)
    with pytest.raises(AssertionError, match="has a delay its leg does not say"):
        finish(env, env.a, ClaimKind.COMMIT, t)
    assert env.a.store.data == before
