# ruff: noqa: F811 (``env`` is the imported fixture, used as a parameter)
"""The depository kill switch in the Fabric chaincode's pure protocol.

Mirrors tests/integration/test_evm_halt.py on two in-memory chaincode endpoints (the
fixtures of tests/unit/test_fabric_chaincode_protocol.py): who may set the depository key,
the order rule with its precise refusals (nothing written on a refusal), and the halt's
enforcement on Lock, Prepare and the target Commit; the token pause on mint and release.
An order's expiry is checked against the transaction time (the chaincode's ledger time,
bounded by each endorser's clock, ADR 0008).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.governance import (
    ZERO_WORD,
    Order,
    OrderAction,
    SignedOrder,
    make_order,
    order_to_json,
    sign_order,
)
from bridge.domain.signer import LocalKeySigner
from tests.unit.test_fabric_chaincode_protocol import (
    ABORTED,
    IN_NONE,
    ISIN,
    LOCKED,
    MINTED,
    OTHER_ISIN,
    PREPARED,
    RELEASED,
    Env,
    Ledger,
    cert,
    env,  # noqa: F401 (the fixture)
    finish,
    in_leg,
    ins,
    leg,
    lock,
    locked,
    make_terms,
    out_leg,
    prepare,
    rejects,
    tj,
)

pytestmark = [pytest.mark.unit, pytest.mark.governance, pytest.mark.security]

DEPOSITORY = LocalKeySigner(secrets.token_bytes(32))
_SEQ = [0]


T_NOW = 1_900_000_000
"""The proposals' timestamp in these tests (``Ledger.now``)."""


def seq() -> int:
    _SEQ[0] += 1
    return _SEQ[0]


def order(
    on: Ledger,
    action: OrderAction,
    *,
    security: bytes | None = ISIN.word,
    ledger: bytes | None = None,
    sequence: int | None = None,
    new_key: bytes | None = None,
    network: bytes | None = None,
    expiry: int = 2_000_000_000,
) -> Order:
    return make_order(
        network=on.network if network is None else network,
        ledger=on.word if ledger is None else ledger,
        security=security,
        action=action,
        sequence=seq() if sequence is None else sequence,
        expiry=expiry,
        new_key=new_key,
    )


def args(signed: SignedOrder) -> tuple[str, str]:
    return json.dumps(order_to_json(signed.order)), "0x" + signed.signature.hex()


def apply(env: Env, on: Ledger, signed: SignedOrder, caller: str | None = None) -> Any:
    return on.call(caller or env.stranger, "ApplyOrder", *args(signed))


def halt(env: Env, on: Ledger, **kw: Any) -> SignedOrder:
    signed = sign_order(DEPOSITORY, order(on, OrderAction.HALT, **kw))
    apply(env, on, signed)
    return signed


def release(env: Env, on: Ledger, **kw: Any) -> SignedOrder:
    signed = sign_order(DEPOSITORY, order(on, OrderAction.RELEASE, **kw))
    apply(env, on, signed)
    return signed


def status(env: Env, on: Ledger, security: bytes = ISIN.word) -> Any:
    return on.call(env.stranger, "HaltStatus", "0x" + security.hex())


@pytest.fixture
def henv(env: Env) -> Env:
    for on in env.ledgers():
        on.call(env.admin, "SetDepository", "0x" + DEPOSITORY.address.hex())
    return env


def test_set_depository_is_admin_only_and_once(env: Env) -> None:
    key = "0x" + DEPOSITORY.address.hex()
    assert status(env, env.a)["depository"] is None
    rejects(env, env.a, "NotAdmin", env.relayer, "SetDepository", key)
    env.a.call(env.admin, "SetDepository", key)
    assert status(env, env.a)["depository"] == key
    # SECURITY: the admin cannot replace the key once set (it could lift a halt).
    detail = rejects(env, env.a, "DepositoryAlreadySet", env.admin, "SetDepository", account())
    assert detail == f"depository={key}"


def account() -> str:
    return "0x" + secrets.token_hex(20)


def test_order_without_a_depository_is_refused(env: Env) -> None:
    signed = sign_order(DEPOSITORY, order(env.a, OrderAction.HALT))
    rejects(env, env.a, "NoDepository", env.stranger, "ApplyOrder", *args(signed))


def test_order_digest_query_matches_the_core(henv: Env) -> None:
    o = order(henv.a, OrderAction.HALT)
    got = henv.a.call(henv.stranger, "OrderDigest", json.dumps(order_to_json(o)))
    assert got == {"digest": "0x" + o.digest.hex()}


def test_halt_by_the_depository_stops_lock_until_release(henv: Env) -> None:
    env = henv
    signed = halt(env, env.a)
    assert status(env, env.a) == {
        "security_halted": True,
        "ledger_halted": False,
        "sequence": signed.order.sequence,
        "depository": "0x" + DEPOSITORY.address.hex(),
    }
    t = make_terms(env)
    detail = rejects(env, env.a, "SecurityHalted", env.relayer, "Lock", *ins(env.a, tj(t)))
    assert detail == "securityId=0x" + ISIN.word.hex()
    release(env, env.a)
    assert status(env, env.a)["security_halted"] is False
    lock(env, t)
    assert out_leg(env, t)["state"] == LOCKED


def test_orders_refused_with_the_precise_reason(henv: Env) -> None:
    env = henv
    first = halt(env, env.a)
    stranger = LocalKeySigner(secrets.token_bytes(32))
    cases = [
        ("NotDepository", sign_order(stranger, order(env.a, OrderAction.RELEASE))),
        ("StaleOrder", first),  # replay
        (
            "StaleOrder",
            sign_order(
                DEPOSITORY, order(env.a, OrderAction.RELEASE, sequence=first.order.sequence - 1)
            ),
        ),
        ("WrongLedger", sign_order(DEPOSITORY, order(env.b, OrderAction.RELEASE))),
        (
            "WrongLedger",
            sign_order(DEPOSITORY, order(env.a, OrderAction.RELEASE, network=env.b.network)),
        ),
        (
            "InvalidOrder",
            sign_order(DEPOSITORY, order(env.a, OrderAction.RELEASE, new_key=stranger.address)),
        ),
        # Expired at the transaction time (a signed order held back and submitted too late).
        ("OrderExpired", sign_order(DEPOSITORY, order(env.a, OrderAction.RELEASE, expiry=T_NOW))),
    ]
    for error, signed in cases:
        rejects(env, env.a, error, env.stranger, "ApplyOrder", *args(signed))
    # A release without a (valid) signature.
    o = json.dumps(order_to_json(order(env.a, OrderAction.RELEASE)))
    rejects(env, env.a, "InvalidSignature", env.stranger, "ApplyOrder", o, "0x")
    rejects(env, env.a, "InvalidArgument", env.stranger, "ApplyOrder", o, "nope")
    rejects(env, env.a, "InvalidArgument", env.stranger, "ApplyOrder", "{}", "0x")
    assert status(env, env.a)["security_halted"] is True


def test_halted_target_refuses_prepare_and_mint(henv: Env) -> None:
    env = henv
    t = locked(env)
    halt(env, env.b)
    rejects(
        env,
        env.b,
        "SecurityHalted",
        env.relayer,
        "Prepare",
        tj(t),
        cert(env, env.b, ClaimKind.LOCKED, t),
    )
    assert in_leg(env, t)["state"] == IN_NONE
    release(env, env.b)
    prepare(env, t)
    halt(env, env.b)
    rejects(
        env,
        env.b,
        "SecurityHalted",
        env.relayer,
        "Commit",
        tj(t),
        cert(env, env.b, ClaimKind.COMMIT, t),
    )
    assert in_leg(env, t) == leg(PREPARED, t)
    finish(env, env.a, ClaimKind.COMMIT, t)  # the source burn is not halted
    release(env, env.b)
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert in_leg(env, t)["state"] == MINTED


def test_expiry_marker_and_abort_still_work_while_halted(henv: Env) -> None:
    env = henv
    t = locked(env)
    halt(env, env.a)
    halt(env, env.b, security=None)
    env.b.now = t.deadline + 1
    env.b.call(env.relayer, "MarkExpired", tj(t), cert(env, env.b, ClaimKind.LOCKED, t))
    finish(env, env.a, ClaimKind.ABORT, t)
    finish(env, env.b, ClaimKind.ABORT, t)
    assert (out_leg(env, t)["state"], in_leg(env, t)["state"]) == (RELEASED, ABORTED)


def test_other_securities_unaffected_and_ledger_wide_halt(henv: Env) -> None:
    env = henv
    env.a.call(env.admin, "RegisterSecurity", OTHER_ISIN.isin)
    halt(env, env.a)
    assert status(env, env.a, OTHER_ISIN.word)["security_halted"] is False
    other = make_terms(env, security=OTHER_ISIN.word)
    # Past the halt check: it fails on the other token's own rules.
    rejects(env, env.a, "HolderNotEligible", env.relayer, "Lock", *ins(env.a, tj(other)))
    halt(env, env.a, security=None)
    assert status(env, env.a, OTHER_ISIN.word)["ledger_halted"] is True
    rejects(env, env.a, "SecurityHalted", env.relayer, "Lock", *ins(env.a, tj(other)))
    release(env, env.a, security=None)
    rejects(env, env.a, "HolderNotEligible", env.relayer, "Lock", *ins(env.a, tj(other)))
    # Ledger word zero: valid on any ledger of its network.
    everywhere = sign_order(DEPOSITORY, order(env.b, OrderAction.HALT, ledger=ZERO_WORD))
    apply(env, env.b, everywhere)
    assert status(env, env.b)["security_halted"] is True


def test_depository_key_changes_only_by_its_own_order(henv: Env) -> None:
    env = henv
    successor = LocalKeySigner(secrets.token_bytes(32))
    forged = sign_order(
        successor,
        order(env.a, OrderAction.SET_DEPOSITORY, security=None, new_key=successor.address),
    )
    rejects(env, env.a, "NotDepository", env.stranger, "ApplyOrder", *args(forged))
    apply(
        env,
        env.a,
        sign_order(
            DEPOSITORY,
            order(env.a, OrderAction.SET_DEPOSITORY, security=None, new_key=successor.address),
        ),
    )
    assert status(env, env.a)["depository"] == "0x" + successor.address.hex()
    old = sign_order(DEPOSITORY, order(env.a, OrderAction.HALT))
    rejects(env, env.a, "NotDepository", env.stranger, "ApplyOrder", *args(old))


def test_paused_token_stops_mint_and_release(henv: Env) -> None:
    env = henv
    to_mint = locked(env, amount=3)
    prepare(env, to_mint)
    to_release = locked(env, amount=4)
    env.a.call(env.admin, "SetPaused", ISIN.isin, "true")
    env.b.call(env.admin, "SetPaused", ISIN.isin, "true")
    rejects(
        env,
        env.b,
        "TokenPaused",
        env.relayer,
        "Commit",
        tj(to_mint),
        cert(env, env.b, ClaimKind.COMMIT, to_mint),
    )
    rejects(
        env,
        env.a,
        "TokenPaused",
        env.relayer,
        "Abort",
        tj(to_release),
        cert(env, env.a, ClaimKind.ABORT, to_release),
    )
    env.a.call(env.admin, "SetPaused", ISIN.isin, "false")
    env.b.call(env.admin, "SetPaused", ISIN.isin, "false")
    finish(env, env.b, ClaimKind.COMMIT, to_mint)
    finish(env, env.a, ClaimKind.ABORT, to_release)
    assert in_leg(env, to_mint)["state"] == MINTED
    assert out_leg(env, to_release)["state"] == RELEASED
