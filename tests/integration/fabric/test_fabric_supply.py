"""Supply readings through the Fabric adapter, on the native network with the real chaincode.

The chaincode runs as its own instance (``kstbsupply``) on the session's network. Org1's
Admin administers it and Org1's User1 is the relayer (both through Org1's peer).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import until_agreed, wait_for_peers
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import InvalidInput, NotFound
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Action
from bridge.domain.supply import SupplyReading, balance
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.ledgers.fabric.gateway import GatewayClient, block_header_hash
from tests.integration.fabric.support import BridgeEnv as Env
from tests.integration.fabric.support import instruct, submit_and_wait

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

CHAINCODE = "kstbsupply"  # its own instance on the shared session network
LEDGER = LedgerId("fabric-supply")
OTHER = LedgerId("evm-other")
ISIN = "KR7005930003"
SECURITY = SecurityId(ISIN)
UNRELATED = "KR7000660001"  # another security on the same instance
CLAIMS = {
    Action.PREPARE: ClaimKind.LOCKED,
    Action.COMMIT: ClaimKind.COMMIT,
    Action.ABORT: ClaimKind.ABORT,
}


async def submit(net: FabricNetwork, client: GatewayClient, fn: str, *args: str) -> int:
    """Submit and wait until both orgs' peers committed it; return its block."""
    return await submit_and_wait(net, client, CHAINCODE, fn, *args)


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> Env:
    return await Env.new(fabric_network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def adapter(env: Env) -> AsyncIterator[FabricAdapter]:
    a = FabricAdapter(LEDGER, env.client("Org1", "User1"), CHAINCODE, "Org1MSP/User1")
    yield a
    await a.close()


async def step(env: Env, adapter: FabricAdapter, action: Action, t: TransferTerms) -> None:
    kind = CLAIMS.get(action)
    cert = env.cert(kind, t) if kind is not None else None
    lock = instruct(t) if action is Action.LOCK else b""
    outcome = await until_agreed(lambda: adapter.submit(action, t, cert, lock))
    await wait_for_peers(env.net, outcome.height)


async def header_hash(client: GatewayClient, number: int) -> bytes:
    async with aclosing(client.blocks(number, number)) as blocks:
        hashes = [block_header_hash(b.header) async for b in blocks]
    assert len(hashes) == 1
    return hashes[0]


def figures(r: SupplyReading) -> tuple[int, int, int, int, int]:
    return (r.total_supply, r.escrowed, r.prepared, r.burned_out, r.minted_in)


async def test_supply_counts_issue_lock_commit_and_names_its_block(
    env: Env, adapter: FabricAdapter
) -> None:
    start = await adapter.supply(SECURITY)
    assert figures(start) == (0, 0, 0, 0, 0)
    assert start.ledger == LEDGER.name
    assert start.height == await adapter.finalized_height()

    alice = await env.holder(ISIN, 50)
    registered = {LEDGER.name: 50}
    assert figures(await adapter.supply(SECURITY)) == (50, 0, 0, 0, 0)

    t = env.outbound(SECURITY, alice, 20, OTHER)
    await step(env, adapter, Action.LOCK, t)
    locked = await adapter.supply(SECURITY)
    assert figures(locked) == (50, 20, 0, 0, 0)
    assert balance([locked], registered).holds

    await step(env, adapter, Action.COMMIT, t)
    burned = await adapter.supply(SECURITY)
    assert figures(burned) == (30, 0, 0, 20, 0)
    assert burned.net_issued == 50 and burned.in_transit == 20
    cut = balance([burned], registered)
    assert cut.holds and (cut.free, cut.in_transit) == (30, 20)

    # The reading names the real block: its header hash, read back through Deliver.
    assert burned.height > locked.height > start.height
    assert len(burned.block_hash) == 32
    assert burned.block_hash == await header_hash(adapter.client, burned.height)
    assert start.block_hash == await header_hash(adapter.client, start.height)

    # Inbound: prepared, then minted; a Fabric ledger may receive units it never issued.
    back = env.inbound(SECURITY, alice, 7, OTHER)
    await step(env, adapter, Action.PREPARE, back)
    assert figures(await adapter.supply(SECURITY)) == (30, 0, 7, 20, 0)
    await step(env, adapter, Action.COMMIT, back)
    minted = await adapter.supply(SECURITY)
    assert figures(minted) == (37, 0, 0, 20, 7)
    assert minted.net_issued == 50 and minted.in_transit == 13
    assert balance([minted], registered).holds

    # An issue outside the register is a discrepancy here.
    admin = env.client("Org1", "Admin")
    await submit(env.net, admin, "Issue", ISIN, adapter.format_address(alice), "5")
    await admin.close()
    off = balance([await adapter.supply(SECURITY)], registered)
    assert (off.discrepancy, off.ledger_discrepancies) == (5, {LEDGER.name: 5})


async def test_abort_moves_no_counter(env: Env, adapter: FabricAdapter) -> None:
    sender = await env.holder(ISIN, 9)
    before = await adapter.supply(SECURITY)
    t = env.outbound(SECURITY, sender, 9, OTHER)
    await step(env, adapter, Action.LOCK, t)
    await step(env, adapter, Action.ABORT, t)
    tomb = env.inbound(SECURITY, sender, 4, OTHER)  # None -> Aborted on the inbound side
    await step(env, adapter, Action.ABORT, tomb)
    after = await adapter.supply(SECURITY)
    assert figures(after) == figures(before)
    assert after.height > before.height


@pytest.mark.batch
async def test_a_past_height_reads_the_figures_the_security_had_then(
    env: Env, adapter: FabricAdapter
) -> None:
    """Fabric reads only current state; a past height is answered from the current figures
    and the blocks since it (``past_supply``): the counter shards those blocks wrote are taken
    back to their values at that height. The answer equals the reading taken at that height,
    block hash included, whatever the security did since; it is refused only after a block
    that paused, registered or recounted the security."""
    now = await adapter.supply(SECURITY)
    assert await adapter.supply(SECURITY, height=now.height) == now  # the current height
    admin = env.client("Org1", "Admin")
    try:  # blocks that touch another security only
        await submit(env.net, admin, "RegisterSecurity", UNRELATED)
        last = await submit(
            env.net, admin, "SetEligible", UNRELATED, "0x" + secrets.token_hex(20), "true"
        )
    finally:
        await admin.close()
    assert last > now.height
    assert await adapter.supply(SECURITY, height=now.height) == now, "same figures, block, hash"

    # Blocks that change this security's counters: issues (several holders at once, so
    # several shards in a block), a lock, a commit, an inbound prepare and an abort.
    readings = [now]
    holders = [f"0x{i + 0x10:02x}" + secrets.token_hex(19) for i in range(4)]  # shards 0x10-0x13
    clients = [env.client("Org1", "Admin") for _ in holders]
    try:
        for holder in holders:
            await submit(env.net, clients[0], "SetEligible", ISIN, holder, "true")
        await asyncio.gather(
            *(submit(env.net, c, "Issue", ISIN, h, str(5 + i))
              for i, (c, h) in enumerate(zip(clients, holders, strict=True)))
        )  # fmt: skip
    finally:
        for c in clients:
            await c.close()
    readings.append(await adapter.supply(SECURITY))
    words = [bytes(12) + bytes.fromhex(h[2:]) for h in holders]
    out = env.outbound(SECURITY, words[0], 3, OTHER)
    await step(env, adapter, Action.LOCK, out)
    readings.append(await adapter.supply(SECURITY))
    await step(env, adapter, Action.COMMIT, out)
    readings.append(await adapter.supply(SECURITY))
    back = env.inbound(SECURITY, words[1], 4, OTHER)
    await step(env, adapter, Action.PREPARE, back)
    readings.append(await adapter.supply(SECURITY))
    await step(env, adapter, Action.ABORT, back)
    readings.append(await adapter.supply(SECURITY))
    # Two holders in one counter shard (0x07... and 0x47...: 0x47 mod 64 = 7), issued to a
    # block apart, and four issues to one holder at once: those that land in one block
    # conflict on its record (MVCC), and the invalid ones must not count.
    same_shard = ["0x07" + secrets.token_hex(19), "0x47" + secrets.token_hex(19)]
    clients = [env.client("Org1", "Admin") for _ in range(4)]
    try:
        for holder in same_shard:
            await submit(env.net, clients[0], "SetEligible", ISIN, holder, "true")
        for holder in same_shard:
            await submit(env.net, clients[0], "Issue", ISIN, holder, "2")
            readings.append(await adapter.supply(SECURITY))
        raced = await asyncio.gather(
            *(submit(env.net, c, "Issue", ISIN, same_shard[0], "1") for c in clients),
            return_exceptions=True,
        )
    finally:
        for c in clients:
            await c.close()
    issued = sum(isinstance(r, int) for r in raced)
    assert issued >= 1, raced
    later = await adapter.supply(SECURITY)
    assert figures(later)[0] == now.total_supply + 5 + 6 + 7 + 8 - 3 + 4 + issued
    assert len({figures(r) for r in readings}) == len(readings) - 1  # the abort undid one
    assert [r.height for r in readings] == sorted({r.height for r in readings})
    for reading in readings:
        assert await adapter.supply(SECURITY, height=reading.height) == reading, reading

    # A pause (and unpause) writes the security record: heights before it are refused,
    # naming the block; heights from the unpause on are answered again.
    admin = env.client("Org1", "Admin")
    try:
        paused = await submit(env.net, admin, "SetPaused", ISIN, "true")
        await submit(env.net, admin, "SetPaused", ISIN, "false")
    finally:
        await admin.close()
    with pytest.raises(InvalidInput, match="Fabric cannot read supply at a past height") as exc:
        await adapter.supply(SECURITY, height=later.height)
    assert f"block {paused} changed {ISIN} after {later.height}" in str(exc.value)
    resumed = await adapter.supply(SECURITY)
    await env.holder(ISIN, 2)
    assert await adapter.supply(SECURITY, height=resumed.height) == resumed
    assert (await adapter.supply(SECURITY)).total_supply == resumed.total_supply + 2

    with pytest.raises(InvalidInput, match="not finalized"):
        await adapter.supply(SECURITY, height=resumed.height + 10)
    with pytest.raises(NotFound):
        await adapter.supply(SecurityId("US0378331005"))
