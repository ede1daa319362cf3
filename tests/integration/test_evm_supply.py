"""Supply readings through the EVM adapter against real anvil ledgers, and the identity.

``registered`` plays the depository's issuance register: what each ledger's token issued
(``Issued`` minus ``Redeemed`` events) at the start of a test. The bridge must keep
``free + in_transit == registered`` at every cut, and an issue outside the register must
show up as a discrepancy on exactly the ledger where it happened.
"""

from __future__ import annotations

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import InvalidInput, NotFound
from bridge.domain.ids import SecurityId
from bridge.domain.legs import Action
from bridge.domain.supply import SupplyReading, balance
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EvmAdapter
from tests.integration.conftest import ISIN, EvmLedger, TwoLedgers, instruct

pytestmark = pytest.mark.integration

SECURITY = SecurityId(ISIN)


def adapters(env: TwoLedgers) -> tuple[EvmAdapter, EvmAdapter]:
    return (
        EvmAdapter(env.a.config(), env.a.relayer.private_key),
        EvmAdapter(env.b.config(), env.b.relayer.private_key),
    )


def issued(on: EvmLedger) -> int:
    """Units the token issued minus units it redeemed, from its own events."""
    fns = on.token.events
    plus = sum(int(e["args"]["amount"]) for e in fns.Issued().get_logs(from_block=0))
    minus = sum(int(e["args"]["amount"]) for e in fns.Redeemed().get_logs(from_block=0))
    return plus - minus


def register(env: TwoLedgers) -> dict[str, int]:
    """The issuance register as of now: every unit issued so far is registered."""
    return {env.a.name: issued(env.a), env.b.name: issued(env.b)}


async def read(a: EvmAdapter, b: EvmAdapter, height: int | None = None) -> list[SupplyReading]:
    return [await a.supply(SECURITY, height), await b.supply(SECURITY, height)]


async def test_identity_holds_at_every_step_of_a_committed_transfer(
    two_ledgers: TwoLedgers,
) -> None:
    env = two_ledgers
    a, b = adapters(env)
    alice, bob = env.a.holder(100), env.b.holder()
    registered = register(env)
    start = await read(a, b)
    assert balance(start, registered).holds

    t = env.terms(alice, bob, 40)
    await a.submit(Action.LOCK, t, None, instruct(t))
    locked = await read(a, b)
    cut = balance(locked, registered)
    assert cut.holds and cut.in_transit == balance(start, registered).in_transit + 40
    assert locked[0].escrowed == start[0].escrowed + 40

    await b.submit(Action.PREPARE, t, env.cert(ClaimKind.LOCKED, t, env.b))
    assert (await b.supply(SECURITY)).prepared == start[1].prepared + 40
    await a.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.a))
    half = await read(a, b)  # burned on A, not yet minted on B: still in transit
    assert half[0].burned_out == start[0].burned_out + 40
    assert half[0].escrowed == start[0].escrowed
    assert half[1].minted_in == start[1].minted_in
    assert balance(half, registered).holds
    assert balance(half, registered).in_transit == balance(start, registered).in_transit + 40

    await b.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.b))
    done = await read(a, b)
    result = balance(done, registered)
    assert result.holds and result.discrepancy == 0 and result.ledger_discrepancies == {}
    assert result.in_transit == balance(start, registered).in_transit
    assert done[1].minted_in == start[1].minted_in + 40
    assert done[1].prepared == start[1].prepared
    assert done[0].total_supply == start[0].total_supply - 40
    assert done[1].total_supply == start[1].total_supply + 40
    assert [r.net_issued for r in done] == [registered[env.a.name], registered[env.b.name]]
    await a.close()
    await b.close()


async def test_reading_names_its_block_and_past_heights_give_past_figures(
    two_ledgers: TwoLedgers,
) -> None:
    env = two_ledgers
    a, b = adapters(env)
    alice, bob = env.a.holder(10), env.b.holder()
    earlier = await a.supply(SECURITY)
    h = earlier.height
    assert h == await a.finalized_height()
    block = env.a.w3.eth.get_block(h)
    assert earlier.block_hash == bytes(block["hash"]) and len(earlier.block_hash) == 32
    assert earlier.ledger == env.a.name

    t = env.terms(alice, bob, 10)
    await a.submit(Action.LOCK, t, None, instruct(t))
    await a.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.a))
    now = await a.supply(SECURITY)
    assert now.height > h
    assert (now.escrowed, now.burned_out) == (earlier.escrowed, earlier.burned_out + 10)
    assert await a.supply(SECURITY, height=h) == earlier, "a past height reads past state"
    assert await a.supply(SECURITY, height=now.height) == now

    with pytest.raises(InvalidInput):
        await a.supply(SECURITY, height=now.height + 1_000)
    with pytest.raises(NotFound):
        await a.supply(SecurityId("US0378331005"))
    with pytest.raises(NotFound):
        await a.supply(SECURITY, height=0)  # before the endpoint existed
    await a.close()
    await b.close()


async def test_abort_leaves_counters_and_the_identity_alone(two_ledgers: TwoLedgers) -> None:
    env = two_ledgers
    a, b = adapters(env)
    alice, bob = env.a.holder(8), env.b.holder()
    registered = register(env)
    before = await read(a, b)
    t = env.terms(alice, bob, 8)
    await a.submit(Action.LOCK, t, None, instruct(t))
    await b.submit(Action.PREPARE, t, env.cert(ClaimKind.LOCKED, t, env.b))
    assert balance(await read(a, b), registered).holds
    await b.submit(Action.ABORT, t, env.cert(ClaimKind.ABORT, t, env.b))
    await a.submit(Action.ABORT, t, env.cert(ClaimKind.ABORT, t, env.a))
    after = await read(a, b)
    figures = [(r.total_supply, r.escrowed, r.prepared, r.burned_out, r.minted_in) for r in after]
    assert figures == [
        (r.total_supply, r.escrowed, r.prepared, r.burned_out, r.minted_in) for r in before
    ]
    assert balance(after, registered).holds
    await a.close()
    await b.close()


async def test_an_issue_outside_the_register_is_a_discrepancy_on_that_ledger(
    two_ledgers: TwoLedgers,
) -> None:
    env = two_ledgers
    a, b = adapters(env)
    alice, bob = env.a.holder(30), env.b.holder()
    t = env.terms(alice, bob, 30)
    await a.submit(Action.LOCK, t, None, instruct(t))
    await b.submit(Action.PREPARE, t, env.cert(ClaimKind.LOCKED, t, env.b))
    await a.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.a))  # in flight
    registered = register(env)
    assert balance(await read(a, b), registered).holds

    deploy.issue(env.b.w3, env.b.admin.private_key, env.b.token, bob.address, 11)
    off = balance(await read(a, b), registered)
    assert not off.holds
    assert off.discrepancy == 11
    assert off.ledger_discrepancies == {env.b.name: 11}

    await b.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.b))
    still = balance(await read(a, b), registered)
    assert (still.discrepancy, still.ledger_discrepancies) == (11, {env.b.name: 11})
    registered[env.b.name] += 11  # the depository records the issue: balanced again
    assert balance(await read(a, b), registered).holds
    await a.close()
    await b.close()
