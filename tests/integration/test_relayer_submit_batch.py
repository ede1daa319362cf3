"""``RelayerService.SubmitBatch`` end to end (issue 14 item 2, ADR 0025): the relayers of two
real anvil endpoints served over gRPC with mutual TLS (the devnet PKI, the authorisation
interceptor), driven by the coordinator's ``RelayerGateway.submit_batch`` with batch
certificates the committee (four members, also over mTLS: ``test_sign_claims``) gathers
with ``CommitteeClient.certify_batch``. Balances and legs are read from the chain itself."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from bridge.config import NetworkConfig, TlsConfig, dump_toml, load_network
from bridge.coordinator.batch_certs import CertifiedBatch
from bridge.coordinator.clients import RelayerGateway
from bridge.core.reasons import ErrorReason
from bridge.devnet.anvil import DevAccount
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.ledger_batches import BatchItem, BatchOutcome, refused_item
from bridge.domain.legs import Action, Leg, LegState
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.rpc.audit import AuditLog
from bridge.rpc.batch_convert import batch_request_to_pb
from bridge.rpc.roles import parse_role
from bridge.rpc.security import server_security
from bridge.rpc.server import BridgeServer
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import relayer_pb2, relayer_pb2_grpc
from relayers.service import RelayerServicer
from tests.integration.conftest import EvmLedger, TwoLedgers
from tests.integration.test_sign_claims import (
    IN_MINTED,
    IN_PREPARED,
    IN_REJECTED,
    OUT_BURNED,
    OUT_LOCKED,
    Committee,
    committee,  # noqa: F401 (the fixture)
    in_state,
    out_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.batch, pytest.mark.security]

OUT_RELEASED, IN_ABORTED = 3, 5


@dataclass
class Stack:
    """The committee, both relayers served over mTLS, and the coordinator's gateways."""

    c: Committee
    network: NetworkConfig
    ports: dict[str, int]
    gateways: dict[str, RelayerGateway]

    @property
    def env(self) -> TwoLedgers:
        return self.c.env

    def gateway(self, on: EvmLedger) -> RelayerGateway:
        return self.gateways[on.name]

    def stub(
        self, on: EvmLedger, role: str
    ) -> tuple[grpc.aio.Channel, relayer_pb2_grpc.RelayerServiceAsyncStub]:
        """A raw stub to ``on``'s relayer with the certificate of ``role``."""
        cert = self.c.pki.cert_for(role)
        ident = ClientIdentity.to(
            self.network, TlsConfig(cert.cert_file, cert.key_file), parse_role(f"relayer:{on.name}")
        )
        ch = grpc.aio.secure_channel(
            f"127.0.0.1:{self.ports[on.name]}", ident.credentials(), options=ident.options()
        )
        return ch, relayer_pb2_grpc.RelayerServiceStub(ch)

    async def certify(
        self, kind: ClaimKind, ts: Sequence[TransferTerms], on: Sequence[EvmLedger]
    ) -> dict[str, CertifiedBatch]:
        got = await self.c.client.certify_batch(kind, ts, [self.c.domain(x) for x in on])
        return dict(got)


def proved(certified: CertifiedBatch) -> list[BatchItem]:
    return [BatchItem(i.terms, proof=i.proof) for i in certified.items]


@pytest.fixture
async def stack(committee: Committee, tmp_path: Path) -> AsyncIterator[Stack]:  # noqa: F811
    env, pki = committee.env, committee.pki
    for on in (env.a, env.b):
        pki.organisation(on.name, [f"relayer:{on.name}"])
        pki.issue(on.name, f"relayer:{on.name}", f"relayer-{on.name}")
    # The committee's network plus the relayers' organisations.
    spec = tomllib.loads((tmp_path / "network.toml").read_text())
    spec["organisations"] = pki.network_entries(tmp_path)
    (tmp_path / "network-relayers.toml").write_text(dump_toml(spec))
    network = load_network(tmp_path / "network-relayers.toml")
    servers: list[BridgeServer] = []
    adapters: list[EvmAdapter] = []
    audits: list[AuditLog] = []
    ports: dict[str, int] = {}
    gateways: dict[str, RelayerGateway] = {}
    coordinator = pki.cert_for("coordinator")
    for on in (env.a, env.b):
        adapter = EvmAdapter(on.config(), on.relayer.private_key)
        adapters.append(adapter)
        servicer = RelayerServicer(adapter, submit_attempts=2)
        cert = pki.cert_for(f"relayer:{on.name}")
        security, audit = server_security(
            "relayer", network, TlsConfig(cert.cert_file, cert.key_file), None
        )
        audits.append(audit)

        def register(server: grpc.aio.Server, s: RelayerServicer = servicer) -> None:
            relayer_pb2_grpc.add_RelayerServiceServicer_to_server(s, server)

        server = BridgeServer(
            "127.0.0.1:0",
            [relayer_pb2.DESCRIPTOR.services_by_name["RelayerService"].full_name],
            [register],
            security,
        )
        await server.start()
        servers.append(server)
        ports[on.name] = server.port
        gateways[on.name] = RelayerGateway(
            on.name,
            f"127.0.0.1:{server.port}",
            60.0,
            ClientIdentity.to(
                network,
                TlsConfig(coordinator.cert_file, coordinator.key_file),
                parse_role(f"relayer:{on.name}"),
            ),
        )
    try:
        yield Stack(committee, network, ports, gateways)
    finally:
        for gw in gateways.values():
            await gw.close()
        for server in servers:
            await server.server.stop(0)
        for adapter in adapters:
            await adapter.close()
        for audit in audits:
            audit.close()


def lock_items(env: TwoLedgers, ts: Sequence[TransferTerms]) -> list[BatchItem]:
    return [BatchItem(t, instruction=env.instruction(t)) for t in ts]


def supplies(env: TwoLedgers) -> tuple[int, int]:
    return (
        int(env.a.token.functions.totalSupply().call()),
        int(env.b.token.functions.totalSupply().call()),
    )


def check_outcome(
    got: BatchOutcome, ts: Sequence[TransferTerms], leg: Leg, state: LegState, *, skipped: bool
) -> None:
    assert [r.transfer_id for r in got.items] == [t.transfer_id for t in ts]
    assert [r.terms_hash for r in got.items] == [t.terms_hash for t in ts]
    assert {(r.leg, r.state, r.skipped) for r in got.items} == {(leg, state, skipped)}
    assert got.applied == (0 if skipped else len(ts))


# --------------------------------------------------------------------------- happy paths


async def test_lock_prepare_commit_batches_settle_exactly_and_replays_move_nothing(
    stack: Stack,
) -> None:
    env = stack.env
    sender, recipient = env.a.holder(20), env.b.holder()
    ts = [env.terms(sender, recipient, 2) for _ in range(4)]
    supply_before = supplies(env)
    escrow = env.a.balance(env.a.endpoint.address)  # other tests' transfers share the ledger
    gw_a, gw_b = stack.gateway(env.a), stack.gateway(env.b)
    assert await gw_a.max_batch_items() == await gw_b.max_batch_items() == 100

    locked = await gw_a.submit_batch(Action.LOCK, lock_items(env, ts), None)
    check_outcome(locked, ts, Leg.OUTBOUND, LegState.LOCKED, skipped=False)
    assert locked.tx_id.startswith("0x") and locked.height > 0
    assert out_state(env.a, ts) == [OUT_LOCKED] * 4
    assert env.a.balance(sender.address) == 12
    assert env.a.balance(env.a.endpoint.address) == escrow + 8

    certs = await stack.certify(ClaimKind.LOCKED, ts, [env.b])
    prepared = await gw_b.submit_batch(
        Action.PREPARE, proved(certs[env.b.name]), certs[env.b.name].certificate
    )
    check_outcome(prepared, ts, Leg.INBOUND, LegState.PREPARED, skipped=False)
    assert in_state(env.b, ts) == [IN_PREPARED] * 4

    commits = await stack.certify(ClaimKind.COMMIT, ts, [env.a, env.b])
    minted = await gw_b.submit_batch(
        Action.COMMIT, proved(commits[env.b.name]), commits[env.b.name].certificate
    )
    check_outcome(minted, ts, Leg.INBOUND, LegState.MINTED, skipped=False)
    burned = await gw_a.submit_batch(
        Action.COMMIT, proved(commits[env.a.name]), commits[env.a.name].certificate
    )
    check_outcome(burned, ts, Leg.OUTBOUND, LegState.BURNED, skipped=False)
    assert in_state(env.b, ts) == [IN_MINTED] * 4 and out_state(env.a, ts) == [OUT_BURNED] * 4
    assert env.a.balance(sender.address) == 12
    assert env.a.balance(env.a.endpoint.address) == escrow
    assert env.b.balance(recipient.address) == 8
    assert supplies(env) == (supply_before[0] - 8, supply_before[1] + 8)

    # The same batches again: every item skipped, no transaction, nothing moves.
    head = env.a.w3.eth.block_number
    again = await gw_b.submit_batch(
        Action.COMMIT, proved(commits[env.b.name]), commits[env.b.name].certificate
    )
    check_outcome(again, ts, Leg.INBOUND, LegState.MINTED, skipped=True)
    assert again.tx_id == ""
    relock = await gw_a.submit_batch(Action.LOCK, lock_items(env, ts), None)
    check_outcome(relock, ts, Leg.OUTBOUND, LegState.BURNED, skipped=True)
    assert env.a.w3.eth.block_number == head, "a replay sends no transaction"
    assert env.b.balance(recipient.address) == 8 and env.a.balance(sender.address) == 12
    assert supplies(env) == (supply_before[0] - 8, supply_before[1] + 8)


async def test_a_batch_mixing_new_and_settled_items_skips_the_settled_ones(stack: Stack) -> None:
    """A retried batch whose first attempt applied part of it (here: two of four locked by
    an earlier batch): the transaction moves only the rest; the others are skipped."""
    env = stack.env
    sender = env.a.holder(10)
    ts = [env.terms(sender, env.b.holder(), 1) for _ in range(4)]
    gw = stack.gateway(env.a)
    await gw.submit_batch(Action.LOCK, lock_items(env, ts[1:3]), None)
    got = await gw.submit_batch(Action.LOCK, lock_items(env, ts), None)
    assert [r.skipped for r in got.items] == [False, True, True, False]
    assert {r.state for r in got.items} == {LegState.LOCKED} and got.tx_id
    assert env.a.balance(sender.address) == 6


async def test_rejected_prepares_abort_as_a_batch_and_release_the_escrow(stack: Stack) -> None:
    env = stack.env
    sender = env.a.holder(10)
    stranger = DevAccount.generate()  # not eligible on B: prepared as REJECTED
    ts = [env.terms(sender, stranger, 2) for _ in range(3)]
    gw_a, gw_b = stack.gateway(env.a), stack.gateway(env.b)
    escrow = env.a.balance(env.a.endpoint.address)  # other tests' transfers share the ledger
    await gw_a.submit_batch(Action.LOCK, lock_items(env, ts), None)
    certs = await stack.certify(ClaimKind.LOCKED, ts, [env.b])
    got = await gw_b.submit_batch(
        Action.PREPARE, proved(certs[env.b.name]), certs[env.b.name].certificate
    )
    check_outcome(got, ts, Leg.INBOUND, LegState.REJECTED, skipped=False)
    assert {r.reason for r in got.items} == {2}, "not eligible"
    assert in_state(env.b, ts) == [IN_REJECTED] * 3
    aborts = await stack.certify(ClaimKind.ABORT, ts, [env.a, env.b])
    inbound = await gw_b.submit_batch(
        Action.ABORT, proved(aborts[env.b.name]), aborts[env.b.name].certificate
    )
    check_outcome(inbound, ts, Leg.INBOUND, LegState.ABORTED, skipped=False)
    released = await gw_a.submit_batch(
        Action.ABORT, proved(aborts[env.a.name]), aborts[env.a.name].certificate
    )
    check_outcome(released, ts, Leg.OUTBOUND, LegState.RELEASED, skipped=False)
    assert out_state(env.a, ts) == [OUT_RELEASED] * 3 and in_state(env.b, ts) == [IN_ABORTED] * 3
    assert env.a.balance(sender.address) == 10
    assert env.a.balance(env.a.endpoint.address) == escrow
    # A skipped inbound item keeps the reason its leg holds.
    replay = await gw_b.submit_batch(
        Action.PREPARE, proved(certs[env.b.name]), certs[env.b.name].certificate
    )
    assert [(r.state, r.reason, r.skipped) for r in replay.items] == [
        (LegState.ABORTED, 2, True)
    ] * 3


# --------------------------------------------------------------------------- refusals


async def test_a_forged_instruction_refuses_the_batch_naming_its_item(stack: Stack) -> None:
    env = stack.env
    sender = env.a.holder(10)
    ts = [env.terms(sender, env.b.holder(), 1) for _ in range(5)]
    items = lock_items(env, ts)
    # Item 3 carries the brokerage's signature of item 2's terms (a replayed instruction).
    items[3] = BatchItem(ts[3], instruction=items[2].instruction)
    head = env.a.w3.eth.block_number
    with pytest.raises(LedgerRejected) as info:
        await stack.gateway(env.a).submit_batch(Action.LOCK, items, None)
    assert info.value.reason is ErrorReason.INVALID_INSTRUCTION, info.value
    assert refused_item(info.value) == 3
    assert info.value.ledger == env.a.name
    assert out_state(env.a, ts) == [0] * 5, "nothing applied"
    assert env.a.balance(sender.address) == 10
    assert env.a.w3.eth.block_number == head, "nothing sent"
    # The coordinator drops the named item and sends the rest.
    rest = items[:3] + items[4:]
    got = await stack.gateway(env.a).submit_batch(Action.LOCK, rest, None)
    assert got.applied == 4 and env.a.balance(sender.address) == 6


async def test_an_item_proof_for_another_root_is_refused_with_its_index(stack: Stack) -> None:
    env = stack.env
    sender = env.a.holder(10)
    ts = [env.terms(sender, env.b.holder(), 1) for _ in range(4)]
    await stack.gateway(env.a).submit_batch(Action.LOCK, lock_items(env, ts), None)
    first = await stack.certify(ClaimKind.LOCKED, ts[:2], [env.b])
    second = await stack.certify(ClaimKind.LOCKED, ts[2:], [env.b])
    items = proved(first[env.b.name]) + proved(second[env.b.name])[:1]
    with pytest.raises(LedgerRejected) as info:
        await stack.gateway(env.b).submit_batch(
            Action.PREPARE, items, replace(first[env.b.name].certificate, count=3)
        )
    # count=3 breaks the root digest: the certificate itself is refused, no item named.
    assert info.value.reason is not ErrorReason.INVALID_BATCH_PROOF
    assert refused_item(info.value) is None
    with pytest.raises(LedgerRejected) as info:
        await stack.gateway(env.b).submit_batch(
            Action.PREPARE,
            [items[0], proved(second[env.b.name])[0]],
            first[env.b.name].certificate,
        )
    assert info.value.reason is ErrorReason.INVALID_BATCH_PROOF
    assert refused_item(info.value) == 1
    assert in_state(env.b, ts) == [0] * 4, "nothing applied"


async def test_a_certificate_for_another_ledger_or_epoch_is_refused(stack: Stack) -> None:
    env = stack.env
    sender, recipient = env.a.holder(10), env.b.holder()
    ts = [env.terms(sender, recipient, 1) for _ in range(3)]
    await stack.gateway(env.a).submit_batch(Action.LOCK, lock_items(env, ts), None)
    await_prep = await stack.certify(ClaimKind.LOCKED, ts, [env.b])
    await stack.gateway(env.b).submit_batch(
        Action.PREPARE, proved(await_prep[env.b.name]), await_prep[env.b.name].certificate
    )
    commits = await stack.certify(ClaimKind.COMMIT, ts, [env.a, env.b])
    for_b = commits[env.b.name]
    # B's certificate and proofs presented to A: the signatures are over B's root digest.
    with pytest.raises(LedgerRejected) as info:
        await stack.gateway(env.a).submit_batch(Action.COMMIT, proved(for_b), for_b.certificate)
    assert info.value.reason in {
        ErrorReason.NOT_COMMITTEE_MEMBER,
        ErrorReason.INVALID_SIGNATURE,
        ErrorReason.SIGNERS_NOT_ASCENDING,
    }, info.value
    assert refused_item(info.value) is None
    # A's certificate claiming another epoch.
    for_a = commits[env.a.name]
    with pytest.raises(LedgerRejected) as info:
        await stack.gateway(env.a).submit_batch(
            Action.COMMIT, proved(for_a), replace(for_a.certificate, epoch=2)
        )
    assert info.value.reason is ErrorReason.WRONG_EPOCH
    # A COMMIT certificate used for an ABORT.
    with pytest.raises(LedgerRejected) as info:
        await stack.gateway(env.a).submit_batch(Action.ABORT, proved(for_a), for_a.certificate)
    assert info.value.reason is ErrorReason.WRONG_BATCH_KIND
    assert out_state(env.a, ts) == [OUT_LOCKED] * 3 and in_state(env.b, ts) == [IN_PREPARED] * 3
    assert env.a.balance(env.a.endpoint.address) >= 3


async def test_only_the_coordinator_may_call_submit_batch(stack: Stack) -> None:
    env = stack.env
    sender = env.a.holder(2)
    ts = [env.terms(sender, env.b.holder(), 1)]
    request = batch_request_to_pb(Action.LOCK, lock_items(env, ts), None)
    for role in (f"brokerage:{env.a.name}", f"relayer:{env.b.name}"):
        ch, stub = stack.stub(env.a, role)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SubmitBatch(request, timeout=30)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED, role
        assert "may not call /bridge.v1.RelayerService/SubmitBatch" in (
            info.value.details() or ""
        ), role
    assert out_state(env.a, ts) == [0] and env.a.balance(sender.address) == 2


async def test_malformed_requests_are_invalid_arguments_over_mtls(stack: Stack) -> None:
    env = stack.env
    t = env.terms(env.a.holder(2), env.b.holder(), 1)
    item = relayer_pb2.BatchStepItem(terms=batch_request_to_pb(
        Action.LOCK, [BatchItem(t)], None).items[0].terms)  # fmt: skip
    cases = {
        "no item": (relayer_pb2.SubmitBatchRequest(action=relayer_pb2.ACTION_LOCK), "1 to 100"),
        "mark expired": (
            relayer_pb2.SubmitBatchRequest(action=relayer_pb2.ACTION_MARK_EXPIRED, items=[item]),
            "LOCK, PREPARE, COMMIT, ABORT",
        ),
        "twice": (
            relayer_pb2.SubmitBatchRequest(action=relayer_pb2.ACTION_LOCK, items=[item, item]),
            "items[1] repeats",
        ),
        "no certificate": (
            relayer_pb2.SubmitBatchRequest(action=relayer_pb2.ACTION_COMMIT, items=[item]),
            "needs a batch certificate",
        ),
    }
    ch, stub = stack.stub(env.a, "coordinator")
    async with ch:
        for name, (request, message) in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SubmitBatch(request, timeout=30)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
            assert message in (info.value.details() or ""), name
