"""Flow limits on the EVM endpoint (ADR 0010), against a real anvil ledger.

Two endpoints (``evm-a``, ``evm-b``) on one anvil, as in ``test_evm_contracts``. Each test
uses its own lane limit and a fresh security-lane state where it matters; time moves with
``evm_increaseTime``. Every refusal is mined (fixed gas) and checked for its custom error,
its arguments, and that nothing moved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from web3.contract.contract import ContractFunction

from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.domain.claims import ClaimKind
from bridge.domain.flow import FlowLimit, FlowStatus
from bridge.domain.ids import LedgerId, evm_address_word
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm.deploy import set_flow_limit
from tests.integration.test_evm_contracts import (
    BURNED,
    CHAIN_ID,
    EXPIRED,
    IN_NONE,
    ISIN,
    LOCKED,
    MINTED,
    PREPARED,
    REJECTED,
    RELEASED,
    Env,
    Ledger,
    _setup,
    cert,
    finish,
    in_leg,
    lock,
    make_terms,
    now,
    out_leg,
    prepare,
    reverts,
    snapshot,
    time_travel,
    tx,
)

pytestmark = [pytest.mark.integration, pytest.mark.governance]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode(
        name="flow-limits",
        chain_id=CHAIN_ID,
        block_time=0,
        workdir=Path(tmp_path_factory.mktemp("anvil")),
    ).start()
    try:
        yield _setup(node)
    finally:
        node.stop()


@pytest.fixture(autouse=True)
def _no_limits(env: Env) -> Iterator[None]:
    """Each test starts and ends with both lanes unlimited (all zero removes a limit)."""
    yield
    limit(env, env.a, env.b.ledger, FlowLimit())
    limit(env, env.b, env.a.ledger, FlowLimit())


def limit(env: Env, on: Ledger, counterpart: LedgerId, lim: FlowLimit) -> None:
    set_flow_limit(env.w3, env.admin.private_key, on.endpoint, ISIN, counterpart, lim)


def status(env: Env, on: Ledger, counterpart: LedgerId) -> FlowStatus:
    words = on.endpoint.functions.flowStatus(ISIN.word, counterpart.word).call()
    return FlowStatus.from_words(on.ledger.name, counterpart.name, ISIN.isin, now(env), words)


def not_before(on: Ledger, t: TransferTerms) -> tuple[int, int]:
    out_at, in_at = on.endpoint.functions.notBefore(t.transfer_id).call()
    return int(out_at), int(in_at)


def set_limit_fn(env: Env, **kw: int) -> ContractFunction:
    lim = {
        "outboundCapacity": 0,
        "inboundCapacity": 0,
        "window": 0,
        "shareBps": 0,
        "largeThreshold": 0,
        "largeDelay": 0,
    } | kw
    return env.a.endpoint.functions.setFlowLimit(ISIN.word, env.b.ledger.word, *lim.values())


def commit_both(env: Env, t: TransferTerms) -> None:
    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)


def abort_both(env: Env, t: TransferTerms) -> None:
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)


def from_b(env: Env, holder: DevAccount, amount: int) -> TransferTerms:
    """Holder-direct terms B -> A for ``holder`` (eligible on B)."""
    t = make_terms(env, amount=amount, src=env.b, dst=env.a)
    word = evm_address_word(holder.address)
    return dataclasses.replace(
        t, sender=word, instructor=word, recipient=evm_address_word(env.alice.address)
    )


# --------------------------------------------------------------------------- administration


def test_only_the_admin_sets_a_limit(env: Env) -> None:
    fn = set_limit_fn(env, outboundCapacity=10, window=60)
    for stranger in (env.relayer, env.alice):
        reverts(env, "NotAdmin", fn, by=stranger)
    assert not status(env, env.a, env.b.ledger).limited


@pytest.mark.parametrize(
    "kw",
    [
        {"outboundCapacity": 10},  # capacity without a window
        {"window": 60},  # window without a capacity
        {"shareBps": 10_001, "window": 60},  # more than the whole supply
        {"shareBps": 100, "outboundCapacity": 5, "window": 60},  # share and units at once
        {"largeThreshold": 10},  # threshold without a delay
        {"largeDelay": 60},  # delay without a threshold
        {"outboundCapacity": 5, "window": 30 * 86400 + 1},  # review finding 3: bounded
        {"largeThreshold": 1, "largeDelay": 30 * 86400 + 1},
        {"largeThreshold": 1, "largeDelay": 2**64 - 1},  # overflowed at lock before
    ],
)
def test_malformed_limits_are_refused(env: Env, kw: dict[str, int]) -> None:
    reverts(env, "InvalidFlowLimit", set_limit_fn(env, **kw), by=env.admin)
    assert not status(env, env.a, env.b.ledger).limited


def test_a_lane_to_itself_or_of_an_unknown_security_is_refused(env: Env) -> None:
    fns = env.a.endpoint.functions
    own = fns.setFlowLimit(ISIN.word, env.a.ledger.word, 10, 0, 60, 0, 0, 0)
    reverts(env, "WrongLedger", own, by=env.admin)
    unknown = fns.setFlowLimit(b"\x07" * 32, env.b.ledger.word, 10, 0, 60, 0, 0, 0)
    reverts(env, "UnknownSecurity", unknown, by=env.admin)


def test_share_of_supply_sizes_both_capacities_from_the_registered_supply(env: Env) -> None:
    supply = env.a.token.functions.totalSupply().call()
    limit(env, env.a, env.b.ledger, FlowLimit(window=3_600, share_bps=250))  # 2.5 %
    s = status(env, env.a, env.b.ledger)
    assert s.outbound.capacity == s.inbound.capacity == supply * 250 // 10_000
    assert s.outbound.available == s.outbound.capacity
    assert s.share_bps == 250


# --------------------------------------------------------------------------- rate limit


def test_lock_over_capacity_is_refused_and_the_bucket_refills_with_time(env: Env) -> None:
    # 100 per 100 000 s: 0.001 unit/s, so the seconds the transactions take refill nothing.
    limit(env, env.a, env.b.ledger, FlowLimit(outbound_capacity=100, window=100_000))
    first = make_terms(env, amount=60)
    lock(env, first)
    assert status(env, env.a, env.b.ledger).outbound.available == 40

    over = make_terms(env, amount=50)
    before = snapshot(env, over)
    fn = env.a.endpoint.functions.lock(over.as_abi_tuple(), b"")
    detail = reverts(env, "FlowLimitExceeded", fn, env.alice)
    assert detail == "available=40, requested=50"
    assert snapshot(env, over) == before  # nothing escrowed, no leg

    time_travel(env, 10_000)  # +10
    s = status(env, env.a, env.b.ledger)
    assert s.outbound.available == 50
    assert s.outbound.refill_per_second == 0.001
    assert s.outbound.seconds_until(60) == 10_000
    over = make_terms(env, amount=50)  # the same transfer again (its deadline passed)
    lock(env, over)
    assert out_leg(env, over)[0] == LOCKED
    time_travel(env, 200_000)
    assert status(env, env.a, env.b.ledger).outbound.available == 100  # bounded by C
    finish(env, env.a, ClaimKind.ABORT, first)  # an abort needs no deadline
    finish(env, env.a, ClaimKind.ABORT, over)


def test_refill_is_exact_however_often_the_bucket_is_used(env: Env) -> None:
    """3 units per 10 s, one unit taken every 4 s: each take leaves 0.2 units of refill
    behind, and the bucket keeps them (unit-second levels), so 5 takes later a whole unit
    is left. Block times are set exactly."""
    limit(env, env.a, env.b.ledger, FlowLimit(outbound_capacity=3, window=10))
    base = now(env) + 10
    env.node.rpc("evm_setNextBlockTimestamp", [base])
    drain = make_terms(env, amount=3)
    lock(env, drain)
    taken = [drain]
    for i in range(1, 6):
        env.node.rpc("evm_setNextBlockTimestamp", [base + 4 * i])
        t = make_terms(env, amount=1)
        taken.append(t)
        receipt = lock(env, t)
    fn = env.a.endpoint.functions.flowStatus(ISIN.word, env.b.ledger.word)
    words = fn.call(block_identifier=receipt["blockNumber"])
    # 20 s x 0.3 units/s = 6 units refilled, 5 taken: 1 left (floored levels would leave 0).
    assert int(words[2]) == 1
    for t in taken:
        finish(env, env.a, ClaimKind.ABORT, t)


def test_release_gives_capacity_back(env: Env) -> None:
    limit(env, env.a, env.b.ledger, FlowLimit(outbound_capacity=100, window=2_592_000))
    t = make_terms(env, amount=70)
    lock(env, t)
    assert status(env, env.a, env.b.ledger).outbound.available == 30
    finish(env, env.a, ClaimKind.ABORT, t)  # released: the units never left
    assert status(env, env.a, env.b.ledger).outbound.available == 100


def test_inbound_over_capacity_reverts_and_prepares_once_refilled(env: Env) -> None:
    limit(env, env.b, env.a.ledger, FlowLimit(inbound_capacity=20, window=10**6))
    t = make_terms(env, amount=30)
    lock(env, t)
    before = snapshot(env, t)
    fn = env.b.endpoint.functions.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t))
    assert reverts(env, "FlowLimitExceeded", fn) == "available=20, requested=30"
    assert snapshot(env, t) == before  # still None: nothing prepared, nothing recorded
    assert in_leg(env, t)[0] == IN_NONE
    # Over the capacity itself it can never prepare; the deadline's marker still ends it.
    time_travel(env, 3_700)
    expire = env.b.endpoint.functions.markExpired(
        t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)
    )
    tx(env, expire)
    assert in_leg(env, t)[0] == EXPIRED
    abort_both(env, t)
    assert status(env, env.b, env.a.ledger).inbound.available == 20  # Expired consumed nothing

    small = make_terms(env, amount=15)
    lock(env, small)
    prepare(env, small)
    assert in_leg(env, small)[0] == PREPARED
    assert status(env, env.b, env.a.ledger).inbound.available == 5
    finish(env, env.b, ClaimKind.ABORT, small)  # an aborted prepare gives it back
    assert status(env, env.b, env.a.ledger).inbound.available == 20
    finish(env, env.a, ClaimKind.ABORT, small)


def test_inbound_mint_offsets_outbound(env: Env) -> None:
    bob = env.bob
    limit(env, env.b, env.a.ledger, FlowLimit(outbound_capacity=100, window=2_592_000))
    incoming = make_terms(env, amount=40)
    lock(env, incoming)
    prepare(env, incoming)
    commit_both(env, incoming)  # bob holds 40 on B; B's outbound stays full (bounded by C)
    assert status(env, env.b, env.a.ledger).outbound.available == 100

    back = from_b(env, bob, 40)
    tx(env, env.b.endpoint.functions.lock(back.as_abi_tuple(), b""), bob)
    assert status(env, env.b, env.a.ledger).outbound.available == 60

    again = make_terms(env, amount=25)
    lock(env, again)
    prepare(env, again)
    commit_both(env, again)  # 25 arrived on B: 25 more may leave B
    assert status(env, env.b, env.a.ledger).outbound.available == 85
    finish(env, env.b, ClaimKind.ABORT, back)
    assert status(env, env.b, env.a.ledger).outbound.available == 100


def test_lowering_a_limit_clamps_the_bucket(env: Env) -> None:
    limit(env, env.a, env.b.ledger, FlowLimit(outbound_capacity=100, window=2_592_000))
    t = make_terms(env, amount=30)
    lock(env, t)
    limit(env, env.a, env.b.ledger, FlowLimit(outbound_capacity=50, window=2_592_000))
    assert status(env, env.a, env.b.ledger).outbound.available == 50  # min(70, 50)
    limit(env, env.a, env.b.ledger, FlowLimit(outbound_capacity=200, window=2_592_000))
    assert status(env, env.a, env.b.ledger).outbound.available == 50  # kept, not refilled
    finish(env, env.a, ClaimKind.ABORT, t)


# --------------------------------------------------------------------------- large delay


def test_large_transfer_waits_its_delay_on_the_source(env: Env) -> None:
    limit(env, env.a, env.b.ledger, FlowLimit(large_threshold=50, large_delay=600))
    t = make_terms(env, amount=60)
    lock(env, t)
    out_at, _ = not_before(env.a, t)
    assert out_at >= now(env) + 599
    prepare(env, t)
    finish(env, env.b, ClaimKind.COMMIT, t)
    before = snapshot(env, t)
    burn = env.a.endpoint.functions.commit(t.as_abi_tuple(), cert(env, env.a, ClaimKind.COMMIT, t))
    detail = reverts(env, "TooEarly", burn)
    assert detail.startswith(f"notBefore={out_at}, ")
    assert snapshot(env, t) == before
    time_travel(env, 600)
    finish(env, env.a, ClaimKind.COMMIT, t)
    assert out_leg(env, t)[0] == BURNED


def test_splitting_does_not_dodge_the_delay(env: Env) -> None:
    limit(env, env.a, env.b.ledger, FlowLimit(large_threshold=50, large_delay=600))
    parts = [make_terms(env, amount=20) for _ in range(3)]  # 60 in three legs of 20
    for t in parts:
        lock(env, t)
    delays = [not_before(env.a, t)[0] for t in parts]
    assert delays[0] == delays[1] == 0  # the first 40 fit the lane's allowance
    assert delays[2] > now(env)  # the part that crosses the threshold waits
    later = make_terms(env, amount=1)  # and the allowance is spent: even 1 unit now waits
    lock(env, later)
    assert not_before(env.a, later)[0] > now(env)
    # A sender splitting across time still moves at most 50 per 600 s undelayed.
    time_travel(env, 120)  # refills 10
    s = status(env, env.a, env.b.ledger)
    assert s.large_outbound_available == 10
    for t in [*parts, later]:
        finish(env, env.a, ClaimKind.ABORT, t)  # an abort is never delayed


def test_large_transfer_waits_its_delay_on_the_target(env: Env) -> None:
    limit(env, env.b, env.a.ledger, FlowLimit(large_threshold=10, large_delay=300))
    t = make_terms(env, amount=11)
    lock(env, t)
    prepare(env, t)
    _, in_at = not_before(env.b, t)
    assert in_at >= now(env) + 299
    before = snapshot(env, t)
    mint = env.b.endpoint.functions.commit(t.as_abi_tuple(), cert(env, env.b, ClaimKind.COMMIT, t))
    reverts(env, "TooEarly", mint)
    assert snapshot(env, t) == before  # a quorum alone cannot mint it early
    time_travel(env, 300)
    commit_both(env, t)
    assert in_leg(env, t)[0] == MINTED


@pytest.mark.security
def test_lowering_the_delay_shortens_delayed_legs(env: Env) -> None:
    """Review finding 3: commit enforces min(stored notBefore, delayed-at + the lane's
    CURRENT delay) and notBefore reports it, so removing a limit frees a delayed leg (as the
    chaincode's twin test); raising it again never goes beyond the stored notBefore."""
    limit(env, env.b, env.a.ledger, FlowLimit(large_threshold=1, large_delay=30 * 86400))
    t = make_terms(env, amount=5)
    lock(env, t)
    prepare(env, t)
    _, at = not_before(env.b, t)
    delayed_at = at - 30 * 86400
    limit(env, env.b, env.a.ledger, FlowLimit(large_threshold=1, large_delay=600))
    assert not_before(env.b, t)[1] == delayed_at + 600
    mint = env.b.endpoint.functions.commit(t.as_abi_tuple(), cert(env, env.b, ClaimKind.COMMIT, t))
    reverts(env, "TooEarly", mint)
    limit(env, env.b, env.a.ledger, FlowLimit(large_threshold=1, large_delay=30 * 86400))
    assert not_before(env.b, t)[1] == at, "never beyond the stored notBefore"
    limit(env, env.b, env.a.ledger, FlowLimit())
    assert not_before(env.b, t)[1] == delayed_at
    commit_both(env, t)
    assert in_leg(env, t)[0] == MINTED


@pytest.mark.security
def test_a_paused_token_and_an_early_commit_fail_too_early_first(env: Env) -> None:
    """Review finding 9 (paired with the chaincode's twin): a delayed mint on a paused
    token fails TooEarly before the delay is over, TokenPaused after it."""
    limit(env, env.b, env.a.ledger, FlowLimit(large_threshold=1, large_delay=300))
    t = make_terms(env, amount=5)
    lock(env, t)
    prepare(env, t)
    tx(env, env.b.token.functions.pause(), env.admin)
    try:
        mint = env.b.endpoint.functions.commit(
            t.as_abi_tuple(), cert(env, env.b, ClaimKind.COMMIT, t)
        )
        reverts(env, "TooEarly", mint)
        time_travel(env, 300)
        reverts(env, "TokenPaused", mint)
    finally:
        tx(env, env.b.token.functions.unpause(), env.admin)
    commit_both(env, t)
    assert in_leg(env, t)[0] == MINTED


@pytest.mark.security
def test_prepare_on_an_endpoint_that_is_no_longer_the_tokens_bridge_rejects(env: Env) -> None:
    """Review finding 9: once the token names another bridge, this endpoint could never
    mint; prepare records Rejected (reason 1, unknown security here) so the source is
    released instead of burning for a mint that cannot happen."""
    t = make_terms(env, amount=3)
    lock(env, t)
    tx(env, env.b.token.functions.setBridge(env.alice.address), env.admin)
    try:
        prepare(env, t)
    finally:
        tx(env, env.b.token.functions.setBridge(env.b.endpoint.address), env.admin)
    assert in_leg(env, t)[0] == REJECTED and in_leg(env, t)[4] == 1
    abort_both(env, t)
    assert out_leg(env, t)[0] == RELEASED


# --------------------------------------------------------------------------- cost


def test_gas_per_lock_with_and_without_a_limit(
    env: Env, record_property: Callable[[str, object], None]
) -> None:
    warm = make_terms(env, amount=5)  # the endpoint's escrow balance goes 0 -> nonzero here
    lock(env, warm)
    plain = lock(env, make_terms(env, amount=5))["gasUsed"]
    limit(
        env,
        env.a,
        env.b.ledger,
        FlowLimit(outbound_capacity=10**6, window=3_600, large_threshold=10**6, large_delay=60),
    )
    limited = lock(env, make_terms(env, amount=5))["gasUsed"]
    record_property("lock_gas_unlimited", plain)
    record_property("lock_gas_limited", limited)
    print(f"lock gas: unlimited {plain}, limited {limited}, extra {limited - plain}")
    assert limited - plain < 30_000


def test_unlimited_lane_behaves_as_before(env: Env) -> None:
    assert not status(env, env.a, env.b.ledger).limited
    t = make_terms(env, amount=900)
    lock(env, t)
    prepare(env, t)
    commit_both(env, t)
    assert not_before(env.a, t) == (0, 0)
    assert not_before(env.b, t) == (0, 0)
