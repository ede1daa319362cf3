"""The Fabric adapter and Gateway client against the native network and the real chaincode.

The bridge chaincode (contracts/fabric/kstb_chaincode) runs as a service from the project's
own interpreter (``python -m kstb_chaincode``); the definition needs both orgs to endorse.
Org1's User1 administers the endpoint; Org2's User1 is the relayer and talks to Org2's peer.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import (
    CHAINCODE_DIR,
    endorse_agreed,
    submit_agreed,
    until_agreed,
    wait_for_peers,
)
from bridge.devnet.processes import ManagedProcess, free_port
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected, PermissionDenied, Unavailable
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import (
    Action,
    EventPosition,
    Leg,
    LegState,
    SignatureSet,
    TxOutcome,
)
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.ledgers.fabric.gateway import GatewayClient, TransactionInvalid
from bridge.ledgers.fabric.identity import SigningIdentity
from tests.integration.fabric.support import (
    BridgeEnv,
    initialise,
    instruct,
    lock_args,
    signing_identity,
    submit_and_wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

CHAINCODE = "kstb"
LEDGER = LedgerId("fabric-a")
ISIN = "US0378331005"
SECURITY = SecurityId(ISIN)

if not (CHAINCODE_DIR / "kstb_chaincode" / "__main__.py").is_file():
    pytest.skip("contracts/fabric/kstb_chaincode is not there yet", allow_module_level=True)


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> BridgeEnv:
    """The endpoint initialised (Org1 admin), Org2's user a relayer, the security registered."""
    e = BridgeEnv.new(fabric_network, CHAINCODE, LEDGER)
    admin = e.client("Org1", "Admin")
    net = e.net
    # --init-required: nothing runs before the one Init (pinned by the organisations).
    await initialise(net, admin, CHAINCODE, LEDGER, e.committee)
    info = json.loads(await admin.evaluate(CHAINCODE, "WhoAmI"))
    if info["identity"] != admin.identity.chaincode_identity():
        raise AssertionError("the chaincode identifies callers differently than assumed")
    relayer = signing_identity(e.net, "Org2").chaincode_identity()
    await submit_and_wait(net, admin, CHAINCODE, "SetRelayer", relayer, "true")
    await submit_and_wait(net, admin, CHAINCODE, "RegisterSecurity", ISIN)
    await admin.close()
    return e


async def _step(
    env: BridgeEnv,
    adapter: FabricAdapter,
    action: Action,
    t: TransferTerms,
    cert: SignatureSet | None,
) -> TxOutcome:
    """Submit through the relayer's peer and wait until both orgs' peers committed it.

    A submit returns once the gateway's own peer committed; the next write is endorsed by
    both orgs, and a peer still a block behind would endorse it on stale state.
    """
    lock = instruct(t) if action is Action.LOCK else b""
    out = await until_agreed(lambda: adapter.submit(action, t, cert, lock))
    await wait_for_peers(env.net, out.height)
    return out


def _adapter(env: BridgeEnv) -> FabricAdapter:
    """Org2's User1, the relayer, through Org2's peer."""
    return FabricAdapter(LEDGER, env.client("Org2", "User1"), CHAINCODE, "Org2MSP/User1")


@pytest.fixture
async def relayer(env: BridgeEnv) -> AsyncIterator[FabricAdapter]:
    adapter = _adapter(env)
    yield adapter
    await adapter.close()


async def test_evaluate_submit_round_trip_and_height_grows(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    h0 = await relayer.finalized_height()
    holder = await env.holder(ISIN, 0)
    before = await relayer.holder_status(SECURITY, holder)
    assert before.security_registered and before.eligible and before.balance == 0
    admin = env.client("Org1", "Admin")
    result = await submit_agreed(
        admin, CHAINCODE, "Issue", [ISIN, relayer.format_address(holder), "25"]
    )
    await admin.close()
    assert result.code == 0 and len(result.tx_id) == 64
    assert result.block_number > h0
    await wait_for_peers(env.net, result.block_number)  # written through Org1, read via Org2
    assert await relayer.finalized_height() >= result.block_number
    after = await relayer.holder_status(SECURITY, holder)
    assert after.balance == 25


async def test_chaincode_refusal_is_ledger_rejected_with_its_name(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    sender = await env.holder(ISIN, 3)
    t = env.outbound(SECURITY, sender, 5)
    with pytest.raises(LedgerRejected) as info:
        await until_agreed(lambda: relayer.submit(Action.LOCK, t, None, instruct(t)))
    assert info.value.reason == "InsufficientBalance"
    assert "balance=3" in info.value.detail
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE

    ok = env.outbound(SECURITY, sender, 3)
    bad = SignatureSet(99, env.cert(ClaimKind.COMMIT, ok, relayer.bridge_word).signatures)
    with pytest.raises(LedgerRejected, match="WrongEpoch"):
        await relayer.client.evaluate(CHAINCODE, "Commit", [_json_terms(ok), _json_cert(bad)])

    admin_only = env.client("Org2", "User1")  # the relayer is not the admin
    with pytest.raises(LedgerRejected) as info:
        await submit_agreed(admin_only, CHAINCODE, "RegisterSecurity", ["US5949181045"])
    assert info.value.reason == "NotAdmin"
    await admin_only.close()

    read_only = FabricAdapter(LEDGER, env.client("Org1", "Admin"), CHAINCODE, "")
    with pytest.raises(LedgerRejected, match="ReadOnly"):
        await until_agreed(lambda: read_only.submit(Action.LOCK, ok, None, instruct(ok)))
    await read_only.close()


def _json_terms(t: TransferTerms) -> str:
    from bridge.ledgers.fabric.codec import terms_to_json

    return terms_to_json(t)


def _json_cert(c: SignatureSet) -> str:
    from bridge.ledgers.fabric.codec import certificate_to_json

    return certificate_to_json(c)


async def test_events_resume_without_loss_or_duplicates_across_restart(
    env: BridgeEnv,
) -> None:
    first = _adapter(env)
    checkpoint = EventPosition(await first.finalized_height(), 1 << 30)  # end of that block
    sender = await env.holder(ISIN, 100)
    transfers = [env.outbound(SECURITY, sender, 1 + i) for i in range(4)]
    for t in transfers[:2]:
        await _step(env, first, Action.LOCK, t, None)
    mid = await first.finalized_height()
    part1 = await first.events(checkpoint, mid)
    await first.close()  # "restart": a new client and adapter resume from the last position

    second = _adapter(env)
    for t in transfers[2:]:
        await _step(env, second, Action.LOCK, t, None)
    abort = env.cert(ClaimKind.ABORT, transfers[0], second.bridge_word)
    await _step(env, second, Action.ABORT, transfers[0], abort)
    final = await second.finalized_height()
    resume_from = part1[-1].position
    part2 = await second.events(resume_from, final)
    whole = await second.events(checkpoint, final)

    assert part1 + part2 == whole
    keys = [(e.position, e.tx_id) for e in whole]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    ours = [(e.transfer_id, e.state) for e in whole if e.transfer_id in _ids(transfers)]
    expected = [(t.transfer_id, LegState.LOCKED) for t in transfers]
    expected.append((transfers[0].transfer_id, LegState.RELEASED))
    assert ours == expected
    assert await second.events(whole[-1].position, final) == []

    # The live Gateway stream sees the same events, in the same order.
    streamed: list[tuple[int, str]] = []
    async with aclosing(second.client.chaincode_events(CHAINCODE, checkpoint.height)) as stream:
        async for ev in stream:
            streamed.append((ev.block_number, ev.tx_id))
            if len(streamed) == len(whole):
                break
    assert streamed == [(e.position.height, e.tx_id) for e in whole]
    await second.close()


def _ids(transfers: list[TransferTerms]) -> set[bytes]:
    return {t.transfer_id for t in transfers}


async def test_read_conflicts_are_retryable_and_leave_no_event(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    sender = await env.holder(ISIN, 10)
    first, second = (env.outbound(SECURITY, sender, 1) for _ in range(2))
    start = await relayer.finalized_height()
    client = relayer.client
    # Both endorsed against the same state (the holder's balance), then both ordered.
    a = await endorse_agreed(client, CHAINCODE, "Lock", lock_args(_json_terms(first)))
    b = await endorse_agreed(client, CHAINCODE, "Lock", lock_args(_json_terms(second)))
    assert json.loads(a.result)["transfer_id"] == "0x" + first.transfer_id.hex()
    ok = await client.submit_prepared(a)
    with pytest.raises(TransactionInvalid) as info:
        await client.submit_prepared(b)
    conflict = info.value
    assert isinstance(conflict, Unavailable) and not isinstance(conflict, LedgerRejected)
    assert conflict.code_name == "MVCC_READ_CONFLICT" and conflict.tx_id == b.tx_id

    final = await relayer.finalized_height()
    assert conflict.block_number <= final
    seen = {e.tx_id for e in await relayer.events(EventPosition(start, 1 << 30), final)}
    assert ok.tx_id in seen
    assert b.tx_id not in seen, "events of invalid transactions never appear"
    assert (await relayer.get_leg(second.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    await wait_for_peers(env.net, conflict.block_number)  # both orgs hold the first lock
    # The retry (re-read, then submit) applies it exactly once.
    retry = await until_agreed(lambda: relayer.submit(Action.LOCK, second, None, instruct(second)))
    assert not retry.already_applied
    again = await until_agreed(lambda: relayer.submit(Action.LOCK, second, None, instruct(second)))
    assert again.already_applied
    assert (await relayer.holder_status(SECURITY, sender)).balance == 8

    # The Gateway's live stream skips the invalid transaction too.
    streamed: list[str] = []
    async with aclosing(client.chaincode_events(CHAINCODE, start + 1)) as stream:
        async for ev in stream:
            streamed.append(ev.tx_id)
            if ev.tx_id == retry.tx_id:
                break
    assert ok.tx_id in streamed and b.tx_id not in streamed


async def test_concurrent_submissions_from_one_relayer(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    holders = [await env.holder(ISIN, 5) for _ in range(4)]
    terms = [env.outbound(SECURITY, h, 5) for h in holders]

    async def lock(t: TransferTerms) -> TxOutcome:
        # Two locks of one security may pick the same supply-counter shard (ADR 0024: 1 in
        # 64) and MVCC-conflict in one block: nothing applied, retried as a relayer does.
        while True:
            try:
                return await relayer.submit(Action.LOCK, t, None, instruct(t))
            except TransactionInvalid as exc:
                conflicts.append(exc.code_name)

    conflicts: list[str] = []
    results = await asyncio.gather(*(lock(t) for t in terms))
    assert set(conflicts) <= {"MVCC_READ_CONFLICT"}
    assert all(not r.already_applied for r in results)
    for t in terms:
        assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED


async def test_unreachable_peer_is_unavailable(env: BridgeEnv, tmp_path: Path) -> None:
    org = env.net.org("Org1")
    dead = GatewayClient(
        f"127.0.0.1:{free_port()}",
        org.tls_ca_cert,
        org.peer_host,
        signing_identity(env.net, "Org1", "Admin"),
        env.net.channel,
        timeout=3.0,
    )
    adapter = FabricAdapter(LEDGER, dead, CHAINCODE, "Org1MSP/User1")
    with pytest.raises(Unavailable) as info:
        await adapter.finalized_height()
    assert not isinstance(info.value, LedgerRejected)
    sender = bytes(12) + secrets.token_bytes(20)
    t = env.outbound(SECURITY, sender, 1)
    with pytest.raises(Unavailable):
        await adapter.submit(Action.LOCK, t, None, instruct(t))
    with pytest.raises(Unavailable):
        await adapter.events(None, 3)
    await adapter.close()


async def test_the_watcher_waits_for_the_next_block_instead_of_polling(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    """``wait_new_head`` (issue 14 item 4: Fabric Deliver instead of polling): an answer at
    once when the height is already above; None after the timeout when no block comes; the
    next block's number as soon as the peer commits it."""
    final = await relayer.finalized_height()
    assert await relayer.wait_new_head(final - 1, 5.0) == final
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await relayer.wait_new_head(final, 0.5) is None
    assert loop.time() - started >= 0.45
    waiting = asyncio.ensure_future(relayer.wait_new_head(final, 30.0))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "no block was committed yet"
    admin = env.client("Org1", "Admin")
    holder = await env.holder(ISIN, 0)
    result = await submit_agreed(
        admin, CHAINCODE, "Issue", [ISIN, relayer.format_address(holder), "1"]
    )
    await admin.close()
    await wait_for_peers(env.net, result.block_number)
    head = await asyncio.wait_for(waiting, 10.0)
    assert head is not None and final < head <= result.block_number


@pytest.mark.security
async def test_a_peer_refusing_the_filtered_deliver_is_a_typed_refusal(env: BridgeEnv) -> None:
    """A peer that refuses the caller's filtered Deliver answers a FORBIDDEN status; the
    head wait raises ``PermissionDenied`` (the relayer's watcher then polls, with one
    warning) instead of an ``Unavailable`` it would log on every poll. The caller here is a
    look-alike of Org2's user: Org2MSP's id and TLS pair, a self-signed certificate."""
    org = env.net.org("Org2")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "User1@org2.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    rogue = GatewayClient(
        org.peer_endpoint,
        org.tls_ca_cert,
        org.peer_host,
        SigningIdentity(org.msp_id, cert.public_bytes(serialization.Encoding.PEM), key),
        env.net.channel,
        tls_client_cert=org.user_tls_cert("User1"),
        tls_client_key=org.user_tls_key("User1"),
    )
    honest = env.client("Org2", "User1")
    try:
        final = max(0, await honest.block_height() - 1)
        assert await honest.wait_block(final, 5.0)  # the same wait, admitted for the real user
        with pytest.raises(PermissionDenied, match="FORBIDDEN"):
            await rogue.wait_block(final, 5.0)
    finally:
        await rogue.close()
        await honest.close()
