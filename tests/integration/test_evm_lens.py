"""The read lens (``BridgeLens``, issue 14 item 4) against real anvil endpoints.

The lens must read exactly what the endpoint's own views read, item for item: legs in every
state (unknown ids included, flow-limit delays included), supply figures (an unregistered
security refused with the endpoint's own reason), a holder's standing. It refuses a list
longer than its bound, and the adapter trusts a lens only when its code is the committed
artifact's. Concurrent reads through the adapter are one lens call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, Web3RPCError

from bridge.devnet.anvil import DevAccount
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import NotFound, Unavailable
from bridge.domain.flow import FlowLimit
from bridge.domain.hashing import keccak256
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.legs import Action, Leg, LegState
from bridge.ledgers.bounded import READ_CONCURRENCY
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EARLIER_LENSES, LENS_MAX_ITEMS, EvmAdapter
from bridge.ledgers.evm.artifacts import load_abi
from bridge.ledgers.evm.revert import decode_revert
from tests.integration.conftest import ISIN, EvmLedger, TwoLedgers, instruct

pytestmark = [pytest.mark.integration, pytest.mark.batch]

SECURITY = SecurityId(ISIN)
UNKNOWN = SecurityId("KR5701ES0016")


@pytest.fixture(scope="module")
def lens(two_ledgers: TwoLedgers) -> str:
    """One lens on the anvil chain (it serves both endpoints)."""
    return str(deploy.deploy_lens(two_ledgers.a.w3, two_ledgers.a.admin.private_key).address)


def lens_error(exc: ContractCustomError) -> tuple[str, tuple[int, ...]]:
    """The lens's own custom error in ``exc``: its name and arguments."""
    data = bytes.fromhex(str(exc.data)[2:])
    for name in ("TooManyItems", "LengthMismatch"):
        if data[:4] == keccak256(f"{name}(uint256,uint256)".encode())[:4]:
            return name, tuple(abi_decode(["uint256", "uint256"], data[4:]))
    raise AssertionError(f"not a lens error: 0x{data.hex()}")


def lens_contract(env: TwoLedgers, lens: str) -> Contract:
    """The lens bound to its ABI, for direct calls."""
    return env.a.w3.eth.contract(address=Web3.to_checksum_address(lens), abi=load_abi("BridgeLens"))


def with_lens(
    on: EvmLedger, lens: str | None, writable: bool = True, finality_depth: int = 0
) -> EvmAdapter:
    """An adapter for ``on`` whose ledger entry names ``lens`` (None: no lens)."""
    cfg = dataclasses.replace(
        on.config(finality_depth), settings=SimpleNamespace(lens=lens, profile="ethereum")
    )
    return EvmAdapter(cfg, on.relayer.private_key if writable else None)


async def transfers_in_every_state(env: TwoLedgers) -> list[bytes]:
    """Transfer ids A -> B: locked, prepared, committed on both, committed on A only, and
    one locked and then large enough for the lane's delay."""
    a, b = with_lens(env.a, None), with_lens(env.b, None)
    alice, bob = env.a.holder(1_000), env.b.holder()
    ids = []
    for stop in ("locked", "prepared", "half", "committed"):
        t = env.terms(alice, bob, 10)
        await a.submit(Action.LOCK, t, None, instruct(t))
        if stop != "locked":
            await b.submit(Action.PREPARE, t, env.cert(ClaimKind.LOCKED, t, env.b))
        if stop in ("half", "committed"):
            await a.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.a))
        if stop == "committed":
            await b.submit(Action.COMMIT, t, env.cert(ClaimKind.COMMIT, t, env.b))
        ids.append(t.transfer_id)
    await a.close()
    await b.close()
    return ids


async def test_lens_reads_every_leg_as_the_endpoint_does(
    two_ledgers: TwoLedgers, lens: str
) -> None:
    env = two_ledgers
    ids = await transfers_in_every_state(env)
    # A large transfer under a lane delay: both legs carry a notBefore.
    delay = FlowLimit(large_threshold=50, large_delay=3600)
    for here, there in ((env.a, env.b), (env.b, env.a)):
        deploy.set_flow_limit(
            here.w3, here.admin.private_key, here.endpoint, SECURITY, LedgerId(there.name), delay
        )
    plain_a, plain_b = with_lens(env.a, None), with_lens(env.b, None)
    big = env.terms(env.a.holder(500), env.b.holder(), 100)
    try:
        await plain_a.submit(Action.LOCK, big, None, instruct(big))
        await plain_b.submit(Action.PREPARE, big, env.cert(ClaimKind.LOCKED, big, env.b))
    finally:  # the other tests' lanes have no limit
        for here, there in ((env.a, env.b), (env.b, env.a)):
            deploy.set_flow_limit(
                here.w3, here.admin.private_key, here.endpoint, SECURITY, LedgerId(there.name),
                FlowLimit(),
            )  # fmt: skip
    ids += [big.transfer_id, secrets.token_bytes(32)]  # and an id nobody used

    lensed_a, lensed_b = with_lens(env.a, lens, False), with_lens(env.b, lens, False)
    final = await plain_a.finalized_height()
    for adapter, plain, leg in (
        (lensed_a, plain_a, Leg.OUTBOUND),
        (lensed_b, plain_b, Leg.INBOUND),
    ):
        for height in (final, final - 3):
            batch = await adapter.get_legs(ids, leg, height)
            singles = [await plain.get_leg(t, leg, height) for t in ids]
            assert batch == singles
        assert await adapter.get_legs(ids, leg) == [await plain.get_leg(t, leg) for t in ids]
    outbound = await lensed_a.get_legs(ids, Leg.OUTBOUND)
    inbound = await lensed_b.get_legs(ids, Leg.INBOUND)
    assert [s.state for s in outbound] == [
        LegState.LOCKED, LegState.LOCKED, LegState.BURNED, LegState.BURNED, LegState.LOCKED,
        LegState.NONE,
    ]  # fmt: skip
    assert outbound[4].not_before > 0 and inbound[4].not_before > 0  # the delayed transfer
    assert outbound[5].terms_hash == bytes(32) and inbound[5].state is LegState.NONE
    for adapter in (plain_a, plain_b, lensed_a, lensed_b):
        await adapter.close()


async def test_concurrent_reads_are_one_lens_call(two_ledgers: TwoLedgers, lens: str) -> None:
    env = two_ledgers
    adapter = with_lens(env.a, lens, False)
    ids = [secrets.token_bytes(32) for _ in range(LENS_MAX_ITEMS + 44)]
    await adapter.get_leg(ids[0], Leg.OUTBOUND)  # checks the lens once
    before = adapter._legs.batches
    statuses = await asyncio.gather(*(adapter.get_leg(t, Leg.OUTBOUND) for t in ids))
    assert all(s.state is LegState.NONE for s in statuses)
    assert adapter._legs.batches - before == 2  # 300 legs: two calls of at most 256
    # Finality depth 0: the lens call at "latest" dates the read itself (no eth_blockNumber).
    assert adapter._lens_live is True
    head = env.a.w3.eth.block_number
    assert {s.height for s in statuses} == {head}
    heads = adapter._head_read.fetches
    await adapter.get_legs(ids[:10], Leg.OUTBOUND)
    assert adapter._head_read.fetches == heads
    # A finality depth: the head is read first, the lens reads the final block.
    deep = with_lens(env.a, lens, False, finality_depth=2)
    deep_statuses = await deep.get_legs(ids[:10], Leg.OUTBOUND)
    assert deep._lens_ok is True and deep._lens_live is False
    assert {s.height for s in deep_statuses} == {env.a.w3.eth.block_number - 2}
    await deep.close()
    await adapter.close()


async def test_lens_refuses_more_than_its_bound_and_mismatched_lists(
    two_ledgers: TwoLedgers, lens: str
) -> None:
    env = two_ledgers
    contract = lens_contract(env, lens)
    ids = [secrets.token_bytes(32) for _ in range(LENS_MAX_ITEMS + 1)]
    f = contract.functions
    assert int(f.MAX_ITEMS().call()) == LENS_MAX_ITEMS
    with pytest.raises(ContractCustomError) as exc:
        f.legsOf(env.a.endpoint.address, ids, [0] * len(ids)).call()
    assert lens_error(exc.value) == ("TooManyItems", (LENS_MAX_ITEMS + 1, LENS_MAX_ITEMS))
    with pytest.raises(ContractCustomError) as exc:
        f.suppliesOf(env.a.endpoint.address, [SECURITY.word] * (LENS_MAX_ITEMS + 1)).call()
    assert lens_error(exc.value)[0] == "TooManyItems"
    holders = [Web3.to_checksum_address("0x" + "22" * 20)] * (LENS_MAX_ITEMS + 1)
    with pytest.raises(ContractCustomError) as exc:
        f.holdersOf(env.a.token.address, holders).call()
    assert lens_error(exc.value) == ("TooManyItems", (LENS_MAX_ITEMS + 1, LENS_MAX_ITEMS))
    with pytest.raises(ContractCustomError) as exc:
        f.legsOf(env.a.endpoint.address, ids[:2], [0]).call()
    assert lens_error(exc.value) == ("LengthMismatch", (2, 1))
    # Exactly the bound is read.
    number, views = f.legsOf(env.a.endpoint.address, ids[:-1], [1] * (len(ids) - 1)).call()
    assert len(views) == LENS_MAX_ITEMS
    assert number == env.a.w3.eth.block_number  # the block it read


async def test_lens_supply_and_holder_match_the_single_reads(
    two_ledgers: TwoLedgers, lens: str
) -> None:
    env = two_ledgers
    holder = env.a.holder(77)
    plain, lensed = with_lens(env.a, None), with_lens(env.a, lens, False)
    final = await plain.finalized_height()
    for height in (None, final, final - 2):
        assert await lensed.supply(SECURITY, height) == await plain.supply(SECURITY, height)
    for adapter in (plain, lensed):
        with pytest.raises(NotFound, match="not registered"):
            await adapter.supply(UNKNOWN)
    who = evm_address_word(holder.address)
    assert await lensed.holder_status(SECURITY, who) == await plain.holder_status(SECURITY, who)
    status = await lensed.holder_status(SECURITY, who)
    assert status.balance == 77 and status.eligible
    # One suppliesOf for a registered and an unregistered security: each its own answer.
    contract = lens_contract(env, lens)
    _, views = contract.functions.suppliesOf(
        env.a.endpoint.address, [SECURITY.word, UNKNOWN.word]
    ).call()
    assert views[0][0] is True and views[1][0] is False
    assert decode_revert(bytes(views[1][1]))[0] == "UnknownSecurity"
    await plain.close()
    await lensed.close()


async def test_concurrent_holder_reads_are_one_lens_call_each_as_the_token_reads_it(
    two_ledgers: TwoLedgers, lens: str
) -> None:
    """Holders in every standing (funded, empty, never eligible, frozen; then the token
    paused), read concurrently through the lens: one ``holdersOf`` for all of them, each
    answer equal to the token's own five views at the same height."""
    env = two_ledgers
    funded, empty, frozen = env.a.holder(40), env.a.holder(), env.a.holder(9)
    stranger = DevAccount.generate()  # never made eligible
    deploy.set_frozen(env.a.w3, env.a.admin.private_key, env.a.token, frozen.address, True)
    words = [evm_address_word(x.address) for x in (funded, empty, frozen, stranger)]
    plain, lensed = with_lens(env.a, None), with_lens(env.a, lens, False)
    try:
        for paused in (False, True):
            deploy.set_paused(env.a.w3, env.a.admin.private_key, env.a.token, paused)
            expected = [await plain.holder_status(SECURITY, w) for w in words]
            await lensed.holder_status(SECURITY, words[0])  # checks the lens once
            before = lensed._holders.batches
            got = await asyncio.gather(*(lensed.holder_status(SECURITY, w) for w in words))
            assert lensed._holders.batches - before == 1
            assert got == expected
            assert [s.paused for s in got] == [paused] * 4
            # Many holders in one call: one lens call, the same answers in order.
            before = lensed._holders.batches
            assert await lensed.holder_statuses(SECURITY, [*words, words[0]]) == [
                *expected,
                expected[0],
            ]
            assert lensed._holders.batches - before == 1
        assert [(s.balance, s.eligible, s.frozen) for s in expected] == [
            (40, True, False), (0, True, False), (9, True, True), (0, False, False)
        ]  # fmt: skip
        # An unregistered security: no token, no lens call, as without a lens.
        before = lensed._holders.batches
        assert await lensed.holder_status(UNKNOWN, words[0]) == await plain.holder_status(
            UNKNOWN, words[0]
        )
        assert lensed._holders.batches == before
        assert await lensed.holder_statuses(UNKNOWN, words[:2]) == [
            await plain.holder_status(UNKNOWN, w) for w in words[:2]
        ]
        assert await lensed.holder_statuses(SECURITY, []) == []
        assert lensed._holders.batches == before
    finally:
        deploy.set_paused(env.a.w3, env.a.admin.private_key, env.a.token, False)
        deploy.set_frozen(env.a.w3, env.a.admin.private_key, env.a.token, frozen.address, False)
        await plain.close()
        await lensed.close()


async def test_an_earlier_lens_is_trusted_for_what_it_has(two_ledgers: TwoLedgers) -> None:
    """A lens deployed before ``holdersOf`` (its committed creation code, kept in
    tests/data): trusted by the hash of its code for legs and supply, as before the
    upgrade; holders are read through the token's own views. The hash in EARLIER_LENSES is
    exactly that code's; a lens with any other code is not trusted (next test)."""
    env = two_ledgers
    creation = (Path(__file__).parents[1] / "data" / "BridgeLens-before-holdersOf.hex").read_text()
    factory = env.a.w3.eth.contract(abi=[], bytecode=creation.strip())
    receipt = deploy.send_tx(env.a.w3, env.a.admin.private_key, factory.constructor())
    earlier = str(receipt["contractAddress"])
    assert keccak256(bytes(env.a.w3.eth.get_code(earlier))) in EARLIER_LENSES  # type: ignore[arg-type]
    plain, adapter = with_lens(env.a, None), with_lens(env.a, earlier, False)
    holder = evm_address_word(env.a.holder(33).address)
    ids = await transfers_in_every_state(env)
    try:
        assert await adapter.get_legs(ids, Leg.OUTBOUND) == await plain.get_legs(ids, Leg.OUTBOUND)
        assert adapter._lens_ok is True and adapter._lens_holders is False
        assert adapter._legs.batches >= 1  # the legs went through the earlier lens
        assert await adapter.supply(SECURITY) == await plain.supply(SECURITY)
        assert await adapter.holder_status(SECURITY, holder) == await plain.holder_status(
            SECURITY, holder
        )
        assert (await adapter.holder_status(SECURITY, holder)).balance == 33
    finally:
        await plain.close()
        await adapter.close()


async def test_a_lens_address_with_other_code_is_never_trusted(
    two_ledgers: TwoLedgers, lens: str
) -> None:
    """SECURITY: a lens answers for the endpoint; an address holding other code (here the
    token's, or nothing) is refused and every read goes to the endpoint's own views."""
    env = two_ledgers
    plain = with_lens(env.a, None)
    ids = await transfers_in_every_state(env)
    expected = [await plain.get_leg(t, Leg.OUTBOUND) for t in ids]
    for address in (env.a.token.address, "0x" + "11" * 20):
        adapter = with_lens(env.a, address, False)
        assert await adapter.get_legs(ids, Leg.OUTBOUND) == expected
        assert await adapter.supply(SECURITY) == await plain.supply(SECURITY)
        assert adapter._lens_ok is False
        await adapter.close()
    genuine = with_lens(env.a, lens, False)
    assert await genuine.get_legs(ids, Leg.OUTBOUND) == expected
    assert genuine._lens_ok is True
    await genuine.close()
    await plain.close()


async def test_fee_fields_once_per_block_and_forgotten_after_a_refused_send(
    two_ledgers: TwoLedgers, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = two_ledgers
    adapter = with_lens(env.a, None)
    calls: Counter[str] = Counter()
    real_rpc = adapter._rpc

    async def counting(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        calls[what] += 1
        return await real_rpc(what, call)

    monkeypatch.setattr(adapter, "_rpc", counting)
    loop = asyncio.get_running_loop()
    head = await adapter._heads.wait_above(-1, loop.time() + 5)
    first, again = await adapter._fees(), await adapter._fees()
    assert first == again and calls["eth_getBlockByNumber"] == 1  # one read for the block
    env.node.rpc("evm_mine", [])
    await adapter._heads.wait_above(head, loop.time() + 5)
    await adapter._fees()
    assert calls["eth_getBlockByNumber"] == 2  # a new block: read again

    async def refused(raw: bytes) -> bytes:
        raise Web3RPCError("max fee per gas less than block base fee")

    monkeypatch.setattr(adapter, "_send_raw", refused)
    assert adapter._fee_cache.get(adapter._heads.head) is not None
    t = env.terms(env.a.holder(5), env.b.holder(), 5)
    with pytest.raises(Unavailable, match="did not accept"):
        await adapter.submit(Action.LOCK, t, None, instruct(t))
    assert adapter._fee_cache.get(adapter._heads.head) is None  # forgotten: read again
    before = calls["eth_getBlockByNumber"]
    await adapter._fees()
    assert calls["eth_getBlockByNumber"] == before + 1
    await adapter.close()


async def test_without_a_usable_lens_many_legs_are_read_a_bounded_number_at_a_time(
    two_ledgers: TwoLedgers, lens: str
) -> None:
    """A batch of legs with no lens (or an untrusted one) is read leg by leg, at most
    READ_CONCURRENCY at once (review s21: it was every leg at once on the node's pool),
    with the same answers."""
    env = two_ledgers
    ids = await transfers_in_every_state(env)
    ids += [secrets.token_bytes(32) for _ in range(60)]
    genuine = with_lens(env.a, lens, False)
    expected = await genuine.get_legs(ids, Leg.OUTBOUND)
    await genuine.close()
    for address in (None, env.a.token.address):
        adapter = with_lens(env.a, address, False)
        inner = adapter._get_leg_single
        now = peak = 0

        async def counted(t: bytes, leg: Leg, height: int | None = None, inner: Any = inner) -> Any:
            nonlocal now, peak
            now += 1
            peak = max(peak, now)
            try:
                await asyncio.sleep(0.005)  # hold it, so that concurrent reads overlap
                return await inner(t, leg, height)
            finally:
                now -= 1

        adapter._get_leg_single = counted  # type: ignore[method-assign]
        got = await adapter.get_legs(ids, Leg.OUTBOUND)
        assert [(s.state, s.terms_hash, s.not_before) for s in got] == [
            (s.state, s.terms_hash, s.not_before) for s in expected
        ]
        assert 1 < peak <= READ_CONCURRENCY, (address, peak)
        await adapter.close()
