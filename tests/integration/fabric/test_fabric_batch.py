"""Batched steps and many-leg reads on the real Fabric network (issue 14 items 2-4, ADR 0025).

Every call is endorsed by both organisations' peers through the Gateway and goes through the
adapter (``FabricAdapter.submit_batch``, ``get_legs``, ``events``). Each whole-batch
refusal asserts the precise typed reason (and the refused item's index) and that no leg,
balance or supply figure moved. Marked ``batch``; the timing test prints time per item for
1, 10 and 100-item CommitBatch against single Commits (bench/README.md).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial

import grpc
import pytest

from bridge.core import batch as core_batch
from bridge.core.digests import claim_digest
from bridge.core.reasons import ErrorReason
from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import submit_agreed, until_agreed, wait_for_peers
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Action, Leg, LegState
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric import batch, codec
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.rpc.convert import leg_status_from_pb
from bridge.v1 import relayer_pb2, relayer_pb2_grpc
from relayers.service import RelayerServicer
from tests.integration.fabric.support import BridgeEnv, instruct, network_word, submit_and_wait

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.batch]

CHAINCODE = "kstbbatch"  # its own instance on the shared session network
LEDGER = LedgerId("fabric-batch")
OTHER = LedgerId("evm-batch")
ISIN = "KR7000660001"
SECURITY = SecurityId(ISIN)


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> BridgeEnv:
    return await BridgeEnv.new(fabric_network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def relayer(env: BridgeEnv) -> AsyncIterator[FabricAdapter]:
    """Org1's User1 (the instance's relayer) through Org1's peer."""
    adapter = FabricAdapter(LEDGER, env.client("Org1", "User1"), CHAINCODE, "Org1MSP/User1")
    yield adapter
    await adapter.close()


def certified(
    env: BridgeEnv,
    kind: ClaimKind,
    items: Sequence[TransferTerms],
    *,
    tree_of: Sequence[TransferTerms] | None = None,
    epoch: int = 1,
    signers: Sequence[LocalKeySigner] | None = None,
    leaf_ledger: bytes | None = None,
    cert_kind: ClaimKind | None = None,
) -> tuple[list[batch.BatchItem], core_batch.BatchCertificate]:
    """Items with their proofs and a batch certificate over ``tree_of`` (default: the
    items' own claims for this endpoint), signed by three members over the root digest."""
    lw = leaf_ledger or LEDGER.word

    def leaf(t: TransferTerms) -> bytes:
        digest = claim_digest(
            network_word(), lw, env.bridge, epoch, int(kind), t.transfer_id, t.terms_hash
        )
        return core_batch.batch_leaf(digest)

    tree = core_batch.build_tree(leaf(t) for t in (tree_of if tree_of is not None else items))
    ck = int(cert_kind if cert_kind is not None else kind)
    digest = core_batch.batch_root_digest(
        network_word(), LEDGER.word, env.bridge, epoch, ck, tree.root, tree.count
    )
    chosen = sorted(signers if signers is not None else env.signers[:3], key=lambda s: s.address)
    cert = core_batch.BatchCertificate(
        epoch, ck, tree.root, tree.count, tuple(s.sign_digest(digest) for s in chosen)
    )
    out = []
    for t in items:
        lf = leaf(t)
        out.append(batch.BatchItem(t, proof=tree.proof(lf) if lf in tree.leaves else ()))
    return out, cert


async def send(
    env: BridgeEnv,
    relayer: FabricAdapter,
    action: Action,
    items: Sequence[batch.BatchItem],
    cert: core_batch.BatchCertificate | None = None,
) -> batch.BatchOutcome:
    """submit_batch, then wait until both peers committed it (the next call reads it)."""
    outcome = await until_agreed(lambda: relayer.submit_batch(action, items, cert))
    await wait_for_peers(env.net, outcome.height)
    return outcome


async def lock_all(
    env: BridgeEnv, relayer: FabricAdapter, sender: bytes, amounts: Sequence[int]
) -> list[TransferTerms]:
    terms = [env.outbound(SECURITY, sender, a, OTHER) for a in amounts]
    out = await send(env, relayer, Action.LOCK, [batch.BatchItem(t, instruct(t)) for t in terms])
    assert out.applied == len(terms)
    return terms


async def balance(relayer: FabricAdapter, holder: bytes) -> int:
    return (await relayer.holder_status(SECURITY, holder)).balance


async def figures(relayer: FabricAdapter) -> tuple[int, int, int, int, int]:
    s = await relayer.supply(SECURITY)
    return (s.total_supply, s.escrowed, s.prepared, s.burned_out, s.minted_in)


async def states(
    relayer: FabricAdapter, terms: Sequence[TransferTerms], leg: Leg
) -> list[LegState]:
    return [s.state for s in await relayer.get_legs([t.transfer_id for t in terms], leg)]


async def test_lock_and_commit_batches_replay_and_events(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    sender = await env.holder(ISIN, 1_000)
    start = await relayer.finalized_height()
    terms = await lock_all(env, relayer, sender, [10 + i for i in range(10)])
    assert await balance(relayer, sender) == 1_000 - 145
    assert await states(relayer, terms, Leg.OUTBOUND) == [LegState.LOCKED] * 10
    # one LegStatesChanged event: ten LOCKED LedgerEvents with their terms, in item order
    events = [e for e in await relayer.events(None, await relayer.finalized_height())]
    ids = {t.transfer_id for t in terms}
    mine = [e for e in events if e.position.height > start and e.transfer_id in ids]
    assert [e.transfer_id for e in mine] == [t.transfer_id for t in terms]
    assert all(e.state is LegState.LOCKED and e.terms is not None for e in mine)
    assert len({e.position for e in events}) == len(events)  # distinct, ordered positions
    assert [e.position for e in events] == sorted(e.position for e in events)
    resumed = await relayer.events(mine[4].position, await relayer.finalized_height())
    assert [e.transfer_id for e in resumed if e.transfer_id in ids] == [
        t.transfer_id for t in terms[5:]
    ]
    # a replayed lock batch: every item skipped, nothing moved
    again = await send(env, relayer, Action.LOCK, [batch.BatchItem(t, instruct(t)) for t in terms])
    assert again.applied == 0 and all(i.skipped for i in again.items)
    assert await balance(relayer, sender) == 1_000 - 145
    before = await figures(relayer)
    items, cert = certified(env, ClaimKind.COMMIT, terms)
    done = await send(env, relayer, Action.COMMIT, items, cert)
    assert done.applied == 10 and {i.state for i in done.items} == {LegState.BURNED}
    after = await figures(relayer)
    assert after[1] == before[1] - 145 and after[3] == before[3] + 145
    assert after[0] == before[0] - 145  # burned units leave the supply
    replay = await send(env, relayer, Action.COMMIT, items, cert)
    assert replay.applied == 0 and all(i.skipped for i in replay.items)
    assert await figures(relayer) == after
    assert await states(relayer, terms, Leg.OUTBOUND) == [LegState.BURNED] * 10


async def test_a_batch_mixing_committed_and_aborted_items(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    sender = await env.holder(ISIN, 100)
    terms = await lock_all(env, relayer, sender, [1, 2, 3, 4])
    commit, abort = terms[:2], terms[2:]
    c_items, c_cert = certified(env, ClaimKind.COMMIT, commit)
    a_items, a_cert = certified(env, ClaimKind.ABORT, abort)
    # a COMMIT root can never abort (and the kind is checked, not assumed)
    with pytest.raises(LedgerRejected) as info:
        await until_agreed(lambda: relayer.submit_batch(Action.ABORT, c_items, c_cert))
    assert info.value.reason is ErrorReason.WRONG_BATCH_KIND
    assert (info.value.figures["got"], info.value.figures["needed"]) == (2, 3)  # as on EVM
    assert await states(relayer, terms, Leg.OUTBOUND) == [LegState.LOCKED] * 4
    await send(env, relayer, Action.COMMIT, c_items, c_cert)
    await send(env, relayer, Action.ABORT, a_items, a_cert)
    assert await states(relayer, terms, Leg.OUTBOUND) == [
        LegState.BURNED, LegState.BURNED, LegState.RELEASED, LegState.RELEASED,
    ]  # fmt: skip
    assert await balance(relayer, sender) == 100 - 3  # 3 and 4 came back
    # an aborted item under a COMMIT root over the same transfers cannot commit any more
    late, late_cert = certified(env, ClaimKind.COMMIT, abort)
    with pytest.raises(LedgerRejected) as info:
        await until_agreed(lambda: relayer.submit_batch(Action.COMMIT, late, late_cert))
    assert info.value.reason is ErrorReason.BAD_STATE and batch.refused_item(info.value) == 0


async def test_inbound_prepare_and_commit_batches(env: BridgeEnv, relayer: FabricAdapter) -> None:
    bob = await env.holder(ISIN)
    carol = bytes(12) + secrets.token_bytes(20)  # never made eligible
    terms = [env.inbound(SECURITY, bob, 7, OTHER), env.inbound(SECURITY, carol, 8, OTHER)]
    items, cert = certified(env, ClaimKind.LOCKED, terms)
    prepared = await send(env, relayer, Action.PREPARE, items, cert)
    # a business refusal keeps its per-item semantics: carol's item is Rejected, not an error
    assert [i.state for i in prepared.items] == [LegState.PREPARED, LegState.REJECTED]
    assert prepared.items[1].reason == 2
    again = await send(env, relayer, Action.PREPARE, items, cert)
    assert again.applied == 0
    c_items, c_cert = certified(env, ClaimKind.COMMIT, terms[:1])
    minted = await send(env, relayer, Action.COMMIT, c_items, c_cert)
    assert minted.items[0].state is LegState.MINTED
    assert await balance(relayer, bob) == 7


@pytest.mark.parametrize(
    ("case", "reason", "item"),
    [
        ("proof_for_another_root", ErrorReason.INVALID_BATCH_PROOF, 2),
        ("proof_for_another_ledger", ErrorReason.INVALID_BATCH_PROOF, 0),
        ("another_epoch", ErrorReason.WRONG_EPOCH, None),
        ("duplicated_item", ErrorReason.DUPLICATE_BATCH_ITEM, 3),
        ("too_few_signatures", ErrorReason.TOO_FEW_SIGNATURES, None),
        ("non_member", ErrorReason.NOT_COMMITTEE_MEMBER, None),
        ("single_claim_certificate_as_root", ErrorReason.NOT_COMMITTEE_MEMBER, None),
        ("more_items_than_the_root_counts", ErrorReason.INVALID_BATCH, None),
    ],
)
async def test_whole_batch_refusals_apply_nothing(
    env: BridgeEnv, relayer: FabricAdapter, case: str, reason: ErrorReason, item: int | None
) -> None:
    sender = await env.holder(ISIN, 30)
    terms = await lock_all(env, relayer, sender, [1, 2, 3])
    sent = list(terms)
    kw: dict[str, object] = {}
    if case == "proof_for_another_root":
        kw["tree_of"] = [*terms[:2], env.outbound(SECURITY, sender, 3, OTHER)]
    elif case == "proof_for_another_ledger":
        kw["leaf_ledger"] = OTHER.word
    elif case == "another_epoch":
        kw["epoch"] = 2
    elif case == "duplicated_item":
        sent = [*terms, terms[0]]  # under a root counting four claims
        kw["tree_of"] = [*terms, env.outbound(SECURITY, sender, 4, OTHER)]
    elif case == "too_few_signatures":
        kw["signers"] = env.signers[:2]
    elif case == "non_member":
        kw["signers"] = [*env.signers[:2], LocalKeySigner(secrets.token_bytes(32))]
    elif case == "more_items_than_the_root_counts":
        kw["tree_of"] = terms[:2]
    items, cert = certified(env, ClaimKind.COMMIT, sent, **kw)  # type: ignore[arg-type]
    if case == "single_claim_certificate_as_root":
        single = env.cert(ClaimKind.COMMIT, terms[0])
        cert = core_batch.BatchCertificate(
            1, int(ClaimKind.COMMIT), cert.root, cert.count, single.signatures
        )
    before = (await figures(relayer), await balance(relayer, sender))
    with pytest.raises(LedgerRejected) as info:
        await until_agreed(lambda: relayer.submit_batch(Action.COMMIT, items, cert))
    assert info.value.reason is reason, info.value
    assert batch.refused_item(info.value) == item
    if reason in (ErrorReason.INVALID_BATCH_PROOF, ErrorReason.DUPLICATE_BATCH_ITEM):
        assert info.value.figures["index"] == item  # the EVM error's argument
    assert await states(relayer, terms, Leg.OUTBOUND) == [LegState.LOCKED] * 3
    assert (await figures(relayer), await balance(relayer, sender)) == before


async def test_bounds_are_refused_by_the_chaincode(env: BridgeEnv, relayer: FabricAdapter) -> None:
    ids = json.dumps(["0x" + secrets.token_hex(32) for _ in range(batch.MAX_BATCH_ITEMS + 1)])
    with pytest.raises(LedgerRejected) as info:
        await relayer.client.evaluate(CHAINCODE, "Legs", ["outbound", ids])
    assert info.value.reason is ErrorReason.INVALID_BATCH
    assert info.value.figures["max"] == 200
    with pytest.raises(ValueError, match="1 to 200"):
        await relayer.submit_batch(Action.LOCK, [])
    sender = await env.holder(ISIN, 1)
    t = env.outbound(SECURITY, sender, 1, OTHER)
    row = json.loads(batch.items_to_json(Action.LOCK, [batch.BatchItem(t, instruct(t))]))[0]
    with pytest.raises(LedgerRejected) as info:
        await submit_agreed(relayer.client, CHAINCODE, "LockBatch", [json.dumps([row] * 201)])
    assert info.value.reason is ErrorReason.INVALID_BATCH
    assert await balance(relayer, sender) == 1


async def test_relayer_get_legs_over_grpc(env: BridgeEnv, relayer: FabricAdapter) -> None:
    """The relayer's GetLegs (what the coordinator's sweep calls) on a real gRPC server over
    the Fabric adapter: legs in the request's order; the bound refused INVALID_ARGUMENT."""
    sender = await env.holder(ISIN, 10)
    terms = await lock_all(env, relayer, sender, [1, 2])
    unknown = secrets.token_bytes(32)
    server = grpc.aio.server()
    relayer_pb2_grpc.add_RelayerServiceServicer_to_server(RelayerServicer(relayer), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = relayer_pb2_grpc.RelayerServiceStub(channel)
            ids = [terms[1].transfer_id, unknown, terms[0].transfer_id]
            got = await stub.GetLegs(
                relayer_pb2.GetLegsRequest(transfer_ids=ids, leg=int(Leg.OUTBOUND))  # type: ignore[arg-type]
            )
            assert [leg_status_from_pb(x).state for x in got.legs] == [
                LegState.LOCKED, LegState.NONE, LegState.LOCKED,
            ]  # fmt: skip
            assert leg_status_from_pb(got.legs[0]).terms_hash == terms[1].terms_hash
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetLegs(
                    relayer_pb2.GetLegsRequest(transfer_ids=[unknown] * 1001, leg=int(Leg.OUTBOUND))  # type: ignore[arg-type]
                )
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(None)


async def test_holder_statuses_answer_each_holder_as_holder_status(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    """``HolderStatuses`` through the adapter (what the relayer's GetHolders calls): one
    evaluate per 200 holders, in order, each exactly ``HolderStatus``'s answer; a holder
    with units, one frozen, one never made eligible, the zero account, one repeated; the
    chaincode's bound refused InvalidBatch with its figures."""
    rich, frozen = await env.holder(ISIN, 7), await env.holder(ISIN, 3)
    admin = env.client("Org1", "Admin")
    try:
        await submit_and_wait(
            env.net, admin, CHAINCODE, "SetFrozen", ISIN, relayer.format_address(frozen), "true"
        )
    finally:
        await admin.close()
    stranger, zero = bytes(12) + secrets.token_bytes(20), bytes(32)
    asked = [rich, frozen, stranger, zero, rich] * 41  # 205: two evaluates
    got = await relayer.holder_statuses(SECURITY, asked)
    singles = {h: await relayer.holder_status(SECURITY, h) for h in (rich, frozen, stranger, zero)}
    assert got == [singles[h] for h in asked]
    assert (singles[rich].balance, singles[rich].receive_status) == (7, 0)
    assert (singles[frozen].frozen, singles[frozen].receive_status) == (True, 3)
    assert (singles[stranger].eligible, singles[stranger].receive_status) == (False, 2)
    assert singles[zero].receive_status == 5
    many = json.dumps([relayer.format_address(rich)] * (codec.MAX_HOLDER_READS + 1))
    with pytest.raises(LedgerRejected) as info:
        await relayer.client.evaluate(CHAINCODE, "HolderStatuses", [ISIN, many])
    assert info.value.reason is ErrorReason.INVALID_BATCH
    assert (info.value.figures["count"], info.value.figures["max"]) == (201, 200)


async def test_time_per_item_commit_batch_vs_single(env: BridgeEnv, relayer: FabricAdapter) -> None:
    """Not a timed assertion: prints the figures bench/README.md quotes."""
    sender = await env.holder(ISIN, 10_000)
    rows = []
    singles = await lock_all(env, relayer, sender, [1] * 10)
    started = time.perf_counter()
    for t in singles:
        cert = env.cert(ClaimKind.COMMIT, t)
        out = await until_agreed(partial(relayer.submit, Action.COMMIT, t, cert))
        await wait_for_peers(env.net, out.height)
    rows.append(("single Commit", 10, (time.perf_counter() - started) / 10))
    for n in (1, 10, 100):
        terms = await lock_all(env, relayer, sender, [1] * n)
        items, cert = certified(env, ClaimKind.COMMIT, terms)
        started = time.perf_counter()
        done = await send(env, relayer, Action.COMMIT, items, cert)
        rows.append((f"CommitBatch of {n}", n, (time.perf_counter() - started) / n))
        assert done.applied == n
    for label, n, per_item in rows:
        print(f"BATCH-BENCH {label:>18}: {n:>3} items, {per_item * 1000:8.1f} ms per item")
