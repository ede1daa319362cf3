"""Flow limits in the Fabric chaincode's pure protocol (ADR 0010), mirroring the EVM tests.

The endpoints of ``test_fabric_chaincode_protocol`` run over in-memory stores; every call
here carries a proposal timestamp (``tx_time``) and the server's own clock
(``local_time``), which the tests move by hand. Every refusal is checked for its error
name, its detail, and that neither store nor the event stream changed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.flow import FlowStatus
from bridge.domain.terms import TransferTerms
from tests.unit.test_fabric_chaincode_protocol import (
    BURNED,
    EXPIRED,
    IN_NONE,
    ISIN,
    LOCKED,
    MINTED,
    ORG_ADMINS,
    PREPARED,
    Env,
    Ledger,
    cert,
    env,
    ins,
    make_terms,
    p,
    snapshot,
    tj,
)

pytestmark = [pytest.mark.unit, pytest.mark.governance]

__all__ = ["env"]  # the fixture, re-exported for this module's tests

T0 = 1_900_000_000


class Clock:
    """The time every call of a test is proposed (and endorsed) at."""

    now = T0


def call(on: Ledger, caller: str, fn: str, *args: str, local: int | None = None) -> Any:
    ctx = p.Context(
        caller=caller,
        channel_id=on.channel,
        chaincode_name=on.chaincode,
        caller_roles=frozenset({"admin"}) if caller in ORG_ADMINS else frozenset({"client"}),
        tx_time=Clock.now,
        local_time=Clock.now if local is None else local,
    )
    out = p.execute(
        on.store, ctx, fn, list(args), lambda n, b: on.events.append((n, json.loads(b)))
    )
    return json.loads(out)


def rejects(env: Env, on: Ledger, error: str, caller: str, fn: str, *args: str, **kw: Any) -> str:
    before = snapshot(env)
    with pytest.raises(p.ChaincodeError) as info:
        call(on, caller, fn, *args, **kw)
    assert info.value.name == error, str(info.value)
    assert snapshot(env) == before
    return info.value.detail


def set_limit(env: Env, on: Ledger, counterpart: Ledger, **kw: int) -> Any:
    values = {
        "out": 0,
        "inn": 0,
        "window": 0,
        "share_bps": 0,
        "large_threshold": 0,
        "large_delay": 0,
    } | kw
    return call(
        on, env.admin, "SetFlowLimit", ISIN.isin, counterpart.name, *map(str, values.values())
    )


def status(on: Ledger, counterpart: Ledger) -> FlowStatus:
    raw = call(on, "x:y", "FlowStatus", ISIN.isin, counterpart.name)
    names = (
        "window",
        "outbound_capacity",
        "outbound_available",
        "inbound_capacity",
        "inbound_available",
        "share_bps",
        "large_threshold",
        "large_delay",
        "large_outbound_available",
        "large_inbound_available",
    )
    return FlowStatus.from_words(
        on.name, counterpart.name, ISIN.isin, raw["as_of"], [int(raw[n]) for n in names]
    )


def lock(env: Env, t: TransferTerms, **kw: Any) -> Any:
    return call(env.a, env.relayer, "Lock", *ins(env.a, tj(t)), **kw)


def prepare(env: Env, t: TransferTerms) -> Any:
    return call(env.b, env.relayer, "Prepare", tj(t), cert(env, env.b, ClaimKind.LOCKED, t))


def finish(env: Env, on: Ledger, kind: ClaimKind, t: TransferTerms) -> Any:
    fn = "Commit" if kind is ClaimKind.COMMIT else "Abort"
    return call(on, env.relayer, fn, tj(t), cert(env, on, kind, t))


def not_before(on: Ledger, t: TransferTerms) -> dict[str, int]:
    return dict(call(on, "x:y", "NotBefore", "0x" + t.transfer_id.hex()))


def leg_state(on: Ledger, t: TransferTerms, direction: str) -> int:
    return int(call(on, "x:y", "GetLeg", "0x" + t.transfer_id.hex(), direction)["state"])


@pytest.fixture(autouse=True)
def _clock() -> None:
    Clock.now = T0


# --------------------------------------------------------------------------- administration


def test_only_the_admin_sets_a_limit(env: Env) -> None:
    args = (ISIN.isin, env.b.name, "10", "0", "60", "0", "0", "0")
    for stranger in (env.relayer, env.stranger):
        rejects(env, env.a, "NotAdmin", stranger, "SetFlowLimit", *args)
    assert not status(env.a, env.b).limited


@pytest.mark.parametrize(
    "kw",
    [
        {"out": 10},
        {"window": 60},
        {"share_bps": 10_001, "window": 60},
        {"share_bps": 100, "out": 5, "window": 60},
        {"large_threshold": 10},
        {"large_delay": 60},
        {"out": 5, "window": 30 * 86400 + 1},  # review finding 3: periods bounded
        {"large_threshold": 1, "large_delay": 30 * 86400 + 1},
        {"large_threshold": 1, "large_delay": 2**64 - 1},
    ],
)
def test_malformed_limits_are_refused(env: Env, kw: dict[str, int]) -> None:
    before = snapshot(env)
    with pytest.raises(p.ChaincodeError) as info:
        set_limit(env, env.a, env.b, **kw)
    assert info.value.name == "InvalidFlowLimit"
    assert snapshot(env) == before


def test_a_lane_to_itself_is_refused(env: Env) -> None:
    args = (ISIN.isin, env.a.name, "10", "0", "60", "0", "0", "0")
    rejects(env, env.a, "WrongLedger", env.admin, "SetFlowLimit", *args)


def test_two_endorsers_whose_clocks_differ_return_the_same_answer(env: Env) -> None:
    """SetFlowLimit's answer is endorsed, so it is computed at the proposal's timestamp:
    two peers one second apart on either side of it sign the same payload and the same
    writes (the CI failure "ProposalResponsePayloads do not match" of stop 18)."""
    set_limit(env, env.a, env.b, out=100, window=100)
    lock(env, make_terms(env, amount=60))
    Clock.now += 7
    args = (ISIN.isin, env.b.name, "200", "0", "100", "0", "0", "0")
    answers = []
    for skew in (-1, 0, 1):
        peer = Ledger(name=env.a.name, chaincode=env.a.chaincode, channel=env.a.channel)
        peer.store.data = dict(env.a.store.data)
        answers.append(
            (call(peer, env.admin, "SetFlowLimit", *args, local=Clock.now + skew), peer.store.data)
        )
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0]["as_of"] == Clock.now
    assert (
        answers[0][0]["outbound_available"] == "47"
    )  # 40 left, 7 s refill at 1/s; kept as the cap grows


def test_share_of_supply_sizes_both_capacities(env: Env) -> None:
    set_limit(env, env.a, env.b, window=3_600, share_bps=250)  # alice holds 10 000
    s = status(env.a, env.b)
    assert s.outbound.capacity == s.inbound.capacity == 250
    assert s.outbound.available == 250


# --------------------------------------------------------------------------- rate limit


def test_lock_over_capacity_is_refused_and_the_bucket_refills(env: Env) -> None:
    set_limit(env, env.a, env.b, out=100, window=100)
    lock(env, make_terms(env, amount=60))
    assert status(env.a, env.b).outbound.available == 40
    over = make_terms(env, amount=50)
    detail = rejects(env, env.a, "FlowLimitExceeded", env.relayer, "Lock", *ins(env.a, tj(over)))
    assert detail == "available=40, requested=50"
    Clock.now += 10
    assert status(env.a, env.b).outbound.available == 50
    lock(env, over)
    assert leg_state(env.a, over, "outbound") == LOCKED
    Clock.now += 1_000
    assert status(env.a, env.b).outbound.available == 100


def test_refill_is_exact_however_often_the_bucket_is_used(env: Env) -> None:
    set_limit(env, env.a, env.b, out=3, window=10)  # 0.3 units per second
    lock(env, make_terms(env, amount=3))
    for _ in range(5):  # one unit every 4 s: 0.2 units of refill left behind each time
        Clock.now += 4
        lock(env, make_terms(env, amount=1))
    assert status(env.a, env.b).outbound.available == 1  # kept, not floored away


def test_a_proposal_time_far_from_the_servers_clock_is_refused(env: Env) -> None:
    set_limit(env, env.a, env.b, out=100, window=100)
    t = make_terms(env, amount=10)
    Clock.now += 3_600  # a relayer claiming an hour later, to refill the bucket
    detail = rejects(
        env,
        env.a,
        "TransactionTimeSkewed",
        env.relayer,
        "Lock",
        *ins(env.a, tj(t)),
        local=Clock.now - 3_600,
    )
    assert "max=60" in detail


def test_a_timestamp_going_back_refills_nothing(env: Env) -> None:
    set_limit(env, env.a, env.b, out=100, window=100)
    lock(env, make_terms(env, amount=100))
    Clock.now -= 50
    rejects(
        env,
        env.a,
        "FlowLimitExceeded",
        env.relayer,
        "Lock",
        *ins(env.a, tj(make_terms(env, amount=1))),
    )


def test_release_gives_capacity_back_and_a_lock_needs_the_ledger_time(env: Env) -> None:
    set_limit(env, env.a, env.b, out=100, window=2_592_000)
    t = make_terms(env, amount=70)
    lock(env, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert status(env.a, env.b).outbound.available == 100
    set_limit(env, env.a, env.b)  # all zero: no limit
    ctx = p.Context(caller=env.relayer, channel_id=env.a.channel, chaincode_name=env.a.chaincode)
    u = make_terms(env, amount=5)
    before = snapshot(env)
    with pytest.raises(p.ChaincodeError, match="no timestamp"):  # its deadline needs a clock
        p.execute(env.a.store, ctx, "Lock", list(ins(env.a, tj(u))), lambda n, b: None)
    assert snapshot(env) == before
    lock(env, u)  # with the proposal's timestamp, no limit: locked


def test_inbound_over_capacity_refuses_prepare_and_expiry_still_ends_it(env: Env) -> None:
    set_limit(env, env.b, env.a, inn=20, window=10**6)
    t = make_terms(env, amount=30)
    lock(env, t)
    detail = rejects(
        env, env.b, "FlowLimitExceeded", env.relayer, "Prepare", tj(t),
        cert(env, env.b, ClaimKind.LOCKED, t),
    )  # fmt: skip
    assert detail == "available=20, requested=30"
    assert leg_state(env.b, t, "inbound") == IN_NONE
    Clock.now = t.deadline + 1
    call(env.b, env.relayer, "MarkExpired", tj(t), cert(env, env.b, ClaimKind.LOCKED, t))
    assert leg_state(env.b, t, "inbound") == EXPIRED
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    small = replace(make_terms(env, amount=15), deadline=Clock.now + 3600)  # t's has passed
    lock(env, small)
    prepare(env, small)
    assert leg_state(env.b, small, "inbound") == PREPARED
    assert status(env.b, env.a).inbound.available == 5
    finish(env, env.b, ClaimKind.ABORT, small)
    assert status(env.b, env.a).inbound.available == 20


def test_inbound_mint_offsets_outbound(env: Env) -> None:
    set_limit(env, env.b, env.a, out=100, window=2_592_000)
    # Consume B's outbound towards A first: bob receives 40, then sends 40 back.
    incoming = make_terms(env, amount=40)
    lock(env, incoming)
    prepare(env, incoming)
    finish(env, env.b, ClaimKind.COMMIT, incoming)
    assert status(env.b, env.a).outbound.available == 100  # bounded by C
    back = make_terms(env, amount=40, src=env.b, dst=env.a)
    back = replace(back, sender=bytes(12) + bytes.fromhex(env.bob[2:]))
    call(env.b, env.relayer, "Lock", *ins(env.b, tj(back)))
    assert status(env.b, env.a).outbound.available == 60
    again = make_terms(env, amount=25)
    lock(env, again)
    prepare(env, again)
    finish(env, env.b, ClaimKind.COMMIT, again)
    assert status(env.b, env.a).outbound.available == 85


# --------------------------------------------------------------------------- large delay


def test_large_transfer_waits_its_delay_and_splitting_does_not_help(env: Env) -> None:
    set_limit(env, env.a, env.b, large_threshold=50, large_delay=600)
    parts = [make_terms(env, amount=20) for _ in range(3)]
    for t in parts:
        lock(env, t)
    delays = [not_before(env.a, t)["outbound"] for t in parts]
    assert delays == [0, 0, T0 + 600]
    t = parts[2]
    prepare(env, t)
    finish(env, env.b, ClaimKind.COMMIT, t)
    detail = rejects(
        env, env.a, "TooEarly", env.relayer, "Commit", tj(t), cert(env, env.a, ClaimKind.COMMIT, t)
    )
    assert detail == f"notBefore={T0 + 600}, nowTs={T0}"
    Clock.now += 600
    finish(env, env.a, ClaimKind.COMMIT, t)
    assert leg_state(env.a, t, "outbound") == BURNED


def test_large_transfer_waits_on_the_target_too(env: Env) -> None:
    set_limit(env, env.b, env.a, large_threshold=10, large_delay=300)
    t = make_terms(env, amount=11)
    lock(env, t)
    prepare(env, t)
    assert not_before(env.b, t)["inbound"] == T0 + 300
    rejects(
        env, env.b, "TooEarly", env.relayer, "Commit", tj(t), cert(env, env.b, ClaimKind.COMMIT, t)
    )
    Clock.now += 300
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert leg_state(env.b, t, "inbound") == MINTED


# ---- review findings 2 and 3 (regressions) -------------------------------------------------


@pytest.mark.security
def test_alternating_timestamps_cannot_rewind_a_rate_bucket(env: Env) -> None:
    """Review finding 2 (the PoC): proposals alternating +60 s / -60 s around the peers'
    clock used to re-earn the refill already spent (301 units in 240 s on 100/hour). The
    bucket's time never goes back now: at most capacity + refill over the elapsed time
    (plus the 60 s skew) ever moves."""
    set_limit(env, env.a, env.b, out=100, window=3600)
    lock(env, make_terms(env, amount=99))
    moved, real = 99, T0
    for _ in range(60):
        real += 2
        Clock.now = real + 60
        avail = status(env.a, env.b).outbound.available
        if avail >= 2:
            lock(env, make_terms(env, amount=avail - 1), local=real)
            moved += avail - 1
        real += 2
        Clock.now = real - 60
        if status(env.a, env.b).outbound.available >= 1:
            lock(env, make_terms(env, amount=1), local=real)
            moved += 1
    honest_max = 100 + 100 * (real - T0 + 60) // 3600
    assert moved <= honest_max


@pytest.mark.security
def test_alternating_timestamps_cannot_rewind_the_large_allowance(env: Env) -> None:
    """Review finding 2 on the large-transfer allowance: a rewound proposal time neither
    re-earns allowance nor dates a delay earlier than the bucket's own time."""
    set_limit(env, env.a, env.b, large_threshold=10, large_delay=600)
    Clock.now = T0 + 60
    lock(env, make_terms(env, amount=10), local=T0)  # allowance spent at T0 + 60
    Clock.now = T0 - 60
    t = make_terms(env, amount=1)
    lock(env, t, local=T0)
    assert not_before(env.a, t)["outbound"] == T0 + 60 + 600, "dated from the bucket's time"
    Clock.now = T0 + 60
    assert status(env.a, env.b).large_outbound_available == 0


@pytest.mark.security
def test_lowering_the_delay_shortens_delayed_legs(env: Env) -> None:
    """Review finding 3 (the PoC): a stored notBefore is capped by delayed-at + the lane's
    CURRENT delay, so removing (or lowering) the limit frees a delayed leg; NotBefore
    reports that effective value (what members check)."""
    set_limit(env, env.b, env.a, large_threshold=1, large_delay=30 * 86400)
    t = make_terms(env, amount=5)
    lock(env, t)
    prepare(env, t)
    assert not_before(env.b, t)["inbound"] == T0 + 30 * 86400
    set_limit(env, env.b, env.a, large_threshold=1, large_delay=600)
    assert not_before(env.b, t)["inbound"] == T0 + 600
    Clock.now = T0 + 599
    rejects(
        env, env.b, "TooEarly", env.relayer, "Commit", tj(t), cert(env, env.b, ClaimKind.COMMIT, t)
    )
    set_limit(env, env.b, env.a)  # removed: the leg may commit at once
    assert not_before(env.b, t)["inbound"] == T0
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert leg_state(env.b, t, "inbound") == MINTED
    # raising the delay again never lengthens a stored one
    t2 = make_terms(env, amount=5)
    set_limit(env, env.b, env.a, large_threshold=1, large_delay=60)
    lock(env, t2)
    prepare(env, t2)
    set_limit(env, env.b, env.a, large_threshold=1, large_delay=86400)
    assert not_before(env.b, t2)["inbound"] == Clock.now + 60


@pytest.mark.security
def test_a_paused_token_and_an_early_commit_fail_too_early_first(env: Env) -> None:
    """Review finding 9 (paired with the EVM twin): TooEarly before TokenPaused."""
    set_limit(env, env.b, env.a, large_threshold=1, large_delay=300)
    t = make_terms(env, amount=5)
    lock(env, t)
    prepare(env, t)
    call(env.b, env.admin, "SetPaused", ISIN.isin, "true")
    c = cert(env, env.b, ClaimKind.COMMIT, t)
    rejects(env, env.b, "TooEarly", env.relayer, "Commit", tj(t), c)
    Clock.now += 300
    rejects(env, env.b, "TokenPaused", env.relayer, "Commit", tj(t), c)
    call(env.b, env.admin, "SetPaused", ISIN.isin, "false")
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert leg_state(env.b, t, "inbound") == MINTED
