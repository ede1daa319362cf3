"""The depository kill switch on BridgeEndpoint and SecurityToken, against a real anvil.

Reuses the contract test fixture (two endpoints on one anvil, module-scoped here). Every
refusal is mined with a fixed gas limit and checked by its custom error, and the test then
checks that no balance, leg or halt flag moved.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from bridge.core.words import evm_network_word
from bridge.devnet.anvil import AnvilNode
from bridge.devnet.processes import REPO_ROOT
from bridge.domain.claims import ClaimKind
from bridge.domain.governance import (
    ZERO_WORD,
    Order,
    OrderAction,
    SignedOrder,
    make_order,
    order_from_json,
    sign_order,
)
from bridge.domain.ids import SecurityId
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.evm.deploy import (
    deploy_security_token,
    order_abi_tuple,
    register_security,
    set_depository,
    set_paused,
)
from tests.integration.test_evm_contracts import (
    CHAIN_ID,
    IN_NONE,
    ISIN,
    LOCKED,
    MINTED,
    PREPARED,
    RELEASED,
    Env,
    Ledger,
    _setup,
    cert,
    finish,
    in_leg,
    lock,
    locked,
    make_terms,
    now,
    out_leg,
    prepare,
    prepared,
    reverts,
    snapshot,
    time_travel,
    tx,
)

pytestmark = [pytest.mark.integration, pytest.mark.governance, pytest.mark.security]

DEPOSITORY = LocalKeySigner(secrets.token_bytes(32))
OTHER_ISIN = SecurityId("KR7005930003")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode(
        name="halt", chain_id=CHAIN_ID, block_time=0, workdir=Path(tmp_path_factory.mktemp("a"))
    ).start()
    try:
        e = _setup(node)
        key = e.admin.private_key
        for ledger in (e.a, e.b):
            set_depository(e.w3, key, ledger.endpoint, Web3.to_checksum_address(DEPOSITORY.address))
        yield e
    finally:
        node.stop()


_SEQUENCE = [0]


def next_sequence() -> int:
    _SEQUENCE[0] = max(_SEQUENCE[0] + 1, time.time_ns() // 1000)
    return _SEQUENCE[0]


def order(
    env: Env,
    on: Ledger,
    action: OrderAction,
    *,
    security: bytes | None = ISIN.word,
    ledger: bytes | None = None,
    sequence: int | None = None,
    expiry: int | None = None,
    new_key: bytes | None = None,
) -> Order:
    return make_order(
        network=evm_network_word(CHAIN_ID),
        ledger=on.ledger.word if ledger is None else ledger,
        security=security,
        action=action,
        sequence=next_sequence() if sequence is None else sequence,
        expiry=now(env) + 600 if expiry is None else expiry,
        new_key=new_key,
    )


def apply(env: Env, on: Ledger, signed: SignedOrder) -> Any:
    return tx(
        env, on.endpoint.functions.applyOrder(order_abi_tuple(signed.order), signed.signature)
    )


def apply_fn(on: Ledger, signed: SignedOrder) -> Any:
    return on.endpoint.functions.applyOrder(order_abi_tuple(signed.order), signed.signature)


def halt_status(on: Ledger, security: bytes = ISIN.word) -> tuple[bool, bool, int]:
    s, whole, q = on.endpoint.functions.haltStatus(security).call()
    return (bool(s), bool(whole), int(q))


def halt(env: Env, on: Ledger, **kw: Any) -> SignedOrder:
    signed = sign_order(DEPOSITORY, order(env, on, OrderAction.HALT, **kw))
    apply(env, on, signed)
    return signed


def release(env: Env, on: Ledger, **kw: Any) -> SignedOrder:
    signed = sign_order(DEPOSITORY, order(env, on, OrderAction.RELEASE, **kw))
    apply(env, on, signed)
    return signed


@pytest.fixture(autouse=True)
def released(env: Env) -> Iterator[None]:
    """Every test starts and ends with nothing halted on A or B."""
    yield
    for on in (env.a, env.b):
        for sec in (ISIN.word, ZERO_WORD):
            s, whole, _ = halt_status(on, sec)
            if s or (sec == ZERO_WORD and whole):
                release(env, on, security=None if sec == ZERO_WORD else sec)


# --------------------------------------------------------------------------- configuration


def test_order_digest_matches_the_core_vectors(env: Env) -> None:
    """``BridgeTypes.orderDigest`` computes the golden vectors byte for byte."""
    vectors = json.loads((REPO_ROOT / "bridge" / "core" / "vectors.json").read_text())
    fns = env.a.endpoint.functions
    for case in vectors["orders"]["cases"]:
        o = order_from_json(case["order"])
        assert bytes(fns.orderDigestOf(order_abi_tuple(o)).call()).hex() == case["digest"][2:]
    o = order(env, env.a, OrderAction.HALT)
    assert bytes(fns.orderDigestOf(order_abi_tuple(o)).call()) == o.digest


def test_set_depository_is_admin_only_and_once(env: Env) -> None:
    fns = env.a.endpoint.functions
    assert bytes.fromhex(fns.depository().call()[2:]) == DEPOSITORY.address
    stranger = LocalKeySigner(secrets.token_bytes(32))
    addr = Web3.to_checksum_address(stranger.address)
    reverts(env, "NotAdmin", fns.setDepository(addr), env.relayer)
    # SECURITY: the admin cannot replace the key once set (it could lift a halt).
    reverts(env, "DepositoryAlreadySet", fns.setDepository(addr), env.admin)
    assert bytes.fromhex(fns.depository().call()[2:]) == DEPOSITORY.address


def test_order_without_a_depository_is_refused(env: Env) -> None:
    fresh = env.b_twin  # deployed without setDepository
    o = make_order(
        network=evm_network_word(CHAIN_ID),
        ledger=env.b.ledger.word,
        security=ISIN.word,
        action=OrderAction.HALT,
        sequence=1,
        expiry=now(env) + 600,
    )
    signed = sign_order(DEPOSITORY, o)
    reverts(env, "NoDepository", fresh.functions.applyOrder(order_abi_tuple(o), signed.signature))


# --------------------------------------------------------------------------- orders


def test_halt_by_the_depository_stops_lock_and_anyone_may_submit(env: Env) -> None:
    signed = sign_order(DEPOSITORY, order(env, env.a, OrderAction.HALT))
    apply(env, env.a, signed)  # submitted by the relayer account: not a privileged caller
    assert halt_status(env.a)[:2] == (True, False)
    assert halt_status(env.a)[2] == signed.order.sequence
    t = make_terms(env)
    before = snapshot(env, t)
    detail = reverts(
        env, "SecurityHalted", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice
    )
    assert ISIN.word.hex() in detail
    assert snapshot(env, t) == before
    release(env, env.a)
    assert halt_status(env.a)[:2] == (False, False)
    lock(env, t)
    assert out_leg(env, t)[0] == LOCKED


def test_halt_signed_by_anyone_else_is_refused(env: Env) -> None:
    stranger = LocalKeySigner(secrets.token_bytes(32))
    before = halt_status(env.a)
    signed = sign_order(stranger, order(env, env.a, OrderAction.HALT))
    detail = reverts(env, "NotDepository", apply_fn(env.a, signed))
    assert stranger.address.hex() in detail.lower()
    # The admin key is not the depository either.
    admin = LocalKeySigner(env.admin.private_key)
    reverts(env, "NotDepository", apply_fn(env.a, sign_order(admin, signed.order)))
    assert halt_status(env.a) == before


def test_replayed_lower_and_expired_orders_are_refused(env: Env) -> None:
    first = halt(env, env.a)
    state = halt_status(env.a)
    reverts(env, "StaleOrder", apply_fn(env.a, first))  # replay
    lower = sign_order(
        DEPOSITORY, order(env, env.a, OrderAction.RELEASE, sequence=first.order.sequence - 1)
    )
    reverts(env, "StaleOrder", apply_fn(env.a, lower))
    stale = sign_order(DEPOSITORY, order(env, env.a, OrderAction.RELEASE, expiry=now(env) - 1))
    reverts(env, "OrderExpired", apply_fn(env.a, stale))
    # A signed order kept for later is refused once its expiry passes.
    kept = sign_order(DEPOSITORY, order(env, env.a, OrderAction.RELEASE, expiry=now(env) + 30))
    time_travel(env, 60)
    reverts(env, "OrderExpired", apply_fn(env.a, kept))
    assert halt_status(env.a) == state  # still halted


def test_release_without_a_valid_signature_is_impossible(env: Env) -> None:
    halt(env, env.a)
    state = halt_status(env.a)
    o = order(env, env.a, OrderAction.RELEASE)
    reverts(env, "InvalidSignature", env.a.endpoint.functions.applyOrder(order_abi_tuple(o), b""))
    good = sign_order(DEPOSITORY, o).signature
    reverts(
        env, "InvalidSignature", env.a.endpoint.functions.applyOrder(order_abi_tuple(o), good[:64])
    )
    # A signature over another order (here: the halt's fields with another sequence).
    other = sign_order(DEPOSITORY, order(env, env.a, OrderAction.HALT)).signature
    reverts(env, "NotDepository", env.a.endpoint.functions.applyOrder(order_abi_tuple(o), other))
    # The admin cannot release either: there is no admin entry point, and its signature
    # is not the depository's.
    admin = LocalKeySigner(env.admin.private_key)
    reverts(env, "NotDepository", apply_fn(env.a, sign_order(admin, o)))
    assert halt_status(env.a) == state


def test_orders_for_another_network_or_ledger_are_refused(env: Env) -> None:
    state = halt_status(env.a)
    wrong_net = make_order(
        network=evm_network_word(1),
        ledger=env.a.ledger.word,
        security=ISIN.word,
        action=OrderAction.HALT,
        sequence=next_sequence(),
        expiry=now(env) + 600,
    )
    reverts(env, "WrongLedger", apply_fn(env.a, sign_order(DEPOSITORY, wrong_net)))
    for_b = sign_order(DEPOSITORY, order(env, env.b, OrderAction.HALT))
    reverts(env, "WrongLedger", apply_fn(env.a, for_b))
    reverts(env, "InvalidOrder", apply_fn(env.a, sign_order(DEPOSITORY, order(env, env.a, 4))))  # type: ignore[arg-type]
    assert halt_status(env.a) == state


# --------------------------------------------------------------------------- enforcement


def test_halted_target_refuses_prepare_until_release(env: Env) -> None:
    t = locked(env)
    halt(env, env.b)
    before = snapshot(env, t)
    reverts(
        env,
        "SecurityHalted",
        env.b.endpoint.functions.prepare(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)),
    )
    assert snapshot(env, t) == before and in_leg(env, t)[0] == IN_NONE
    release(env, env.b)
    prepare(env, t)
    assert in_leg(env, t)[0] == PREPARED


def test_halted_target_refuses_the_mint_but_burn_goes_and_mint_follows_release(env: Env) -> None:
    t = prepared(env, amount=7)
    halt(env, env.b)
    before = snapshot(env, t)
    fn = env.b.endpoint.functions.commit(t.as_abi_tuple(), cert(env, env.b, ClaimKind.COMMIT, t))
    reverts(env, "SecurityHalted", fn)
    assert snapshot(env, t) == before
    finish(env, env.a, ClaimKind.COMMIT, t)  # the source burn is not halted there
    release(env, env.b)
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert in_leg(env, t)[0] == MINTED


def test_expiry_marker_and_abort_still_work_while_halted(env: Env) -> None:
    t = locked(env, deadline=now(env) + 5)
    halt(env, env.b)
    halt(env, env.a)
    time_travel(env, 10)
    fns = env.b.endpoint.functions
    tx(env, fns.markExpired(t.as_abi_tuple(), cert(env, env.b, ClaimKind.LOCKED, t)))
    finish(env, env.a, ClaimKind.ABORT, t)  # the escrow returns to the sender
    finish(env, env.b, ClaimKind.ABORT, t)
    assert out_leg(env, t)[0] == RELEASED


def test_other_securities_are_not_affected(env: Env) -> None:
    token = deploy_security_token(env.w3, env.admin.private_key, OTHER_ISIN)
    register_security(env.w3, env.admin.private_key, env.a.endpoint, token)
    halt(env, env.a)
    assert halt_status(env.a, OTHER_ISIN.word)[:2] == (False, False)
    t = make_terms(env)
    reverts(env, "SecurityHalted", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice)
    # The other security's lock gets past the halt check (it fails later, on its own token).
    other = dataclasses.replace(make_terms(env), security=OTHER_ISIN.word)
    reverts(
        env,
        "HolderNotEligible",
        env.a.endpoint.functions.lock(other.as_abi_tuple(), b""),
        env.alice,
    )


def test_ledger_wide_halt_and_every_ledger_scope(env: Env) -> None:
    halt(env, env.a, security=None)
    assert halt_status(env.a)[:2] == (False, True)
    t = make_terms(env)
    reverts(env, "SecurityHalted", env.a.endpoint.functions.lock(t.as_abi_tuple(), b""), env.alice)
    release(env, env.a, security=None)
    # Ledger word zero: one order valid on every ledger of the network (both endpoints).
    everywhere = sign_order(DEPOSITORY, order(env, env.a, OrderAction.HALT, ledger=ZERO_WORD))
    apply(env, env.a, everywhere)
    apply(env, env.b, everywhere)
    assert halt_status(env.a)[0] and halt_status(env.b)[0]
    reverts(env, "StaleOrder", apply_fn(env.b, everywhere))


def test_depository_key_changes_only_by_its_own_signed_order(env: Env) -> None:
    successor = LocalKeySigner(secrets.token_bytes(32))
    stranger = LocalKeySigner(secrets.token_bytes(32))
    fns = env.b.endpoint.functions
    forged = sign_order(
        stranger,
        order(env, env.b, OrderAction.SET_DEPOSITORY, security=None, new_key=stranger.address),
    )
    reverts(env, "NotDepository", apply_fn(env.b, forged))
    rotate = sign_order(
        DEPOSITORY,
        order(env, env.b, OrderAction.SET_DEPOSITORY, security=None, new_key=successor.address),
    )
    apply(env, env.b, rotate)
    assert bytes.fromhex(fns.depository().call()[2:]) == successor.address
    old = sign_order(DEPOSITORY, order(env, env.b, OrderAction.HALT))
    reverts(env, "NotDepository", apply_fn(env.b, old))
    back = sign_order(
        successor,
        order(env, env.b, OrderAction.SET_DEPOSITORY, security=None, new_key=DEPOSITORY.address),
    )
    apply(env, env.b, back)
    assert bytes.fromhex(fns.depository().call()[2:]) == DEPOSITORY.address


# --------------------------------------------------------------------------- token pause


def test_paused_token_stops_bridge_mint_and_release(env: Env) -> None:
    key = env.admin.private_key
    to_mint = prepared(env, amount=3)
    finish(env, env.a, ClaimKind.COMMIT, to_mint)
    to_release = locked(env, amount=4)
    set_paused(env.w3, key, env.b.token, True)
    set_paused(env.w3, key, env.a.token, True)
    try:
        before = snapshot(env, to_mint)
        reverts(
            env,
            "TokenPaused",
            env.b.endpoint.functions.commit(
                to_mint.as_abi_tuple(), cert(env, env.b, ClaimKind.COMMIT, to_mint)
            ),
        )
        assert snapshot(env, to_mint) == before
        before = snapshot(env, to_release)
        reverts(
            env,
            "TokenPaused",
            env.a.endpoint.functions.abort(
                to_release.as_abi_tuple(), cert(env, env.a, ClaimKind.ABORT, to_release)
            ),
        )
        assert snapshot(env, to_release) == before and out_leg(env, to_release)[0] == LOCKED
    finally:
        set_paused(env.w3, key, env.a.token, False)
        set_paused(env.w3, key, env.b.token, False)
    finish(env, env.b, ClaimKind.COMMIT, to_mint)
    finish(env, env.a, ClaimKind.ABORT, to_release)
    assert in_leg(env, to_mint)[0] == MINTED and out_leg(env, to_release)[0] == RELEASED
