"""SignClaims (ADR 0025) end to end: four committee members served in process over real
gRPC with mutual TLS (the devnet PKI, the authorisation interceptor), reading two real anvil
endpoints; the coordinator's ``CommitteeClient.certify_batch`` gathers the root
certificates and the EVM endpoint verifies them in ``prepareBatch`` / ``commitBatch``."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.config import NetworkConfig, TlsConfig, dump_toml, load_network
from bridge.coordinator.batch_certs import BatchItemsRefused, CertifiedBatch
from bridge.coordinator.clients import CommitteeClient, LedgerDomain
from bridge.coordinator.records import Misbehaviour
from bridge.devnet.anvil import DevAccount
from bridge.devnet.pki import DevPki
from bridge.domain.claim_batches import ClaimsRefused, RefusedItem
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import recover_signer
from bridge.domain.errors import BridgeReason, PreconditionFailed
from bridge.domain.ids import LedgerId
from bridge.domain.terms import TransferTerms
from bridge.ledgers.adapter import LedgerReader
from bridge.ledgers.evm import batch as evm_batch
from bridge.ledgers.evm.batch import BatchItem, BatchStep
from bridge.ledgers.evm.deploy import send_tx
from bridge.ledgers.factory import open_reader
from bridge.rpc.audit import AuditLog
from bridge.rpc.claims_refusal import refusal_of
from bridge.rpc.convert import terms_to_pb
from bridge.rpc.roles import parse_role
from bridge.rpc.security import server_security
from bridge.rpc.server import BridgeServer
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import verifier_pb2, verifier_pb2_grpc
from tests.integration.conftest import BROKER, EvmLedger, TwoLedgers
from tests.support import eventually
from verifiers.service import VerifierServicer
from verifiers.votes import VoteLog

pytestmark = [pytest.mark.integration, pytest.mark.batch, pytest.mark.security]

MAX_CLAIMS = 8
OUT_LOCKED, OUT_BURNED = 1, 2
IN_PREPARED, IN_REJECTED, IN_MINTED = 1, 2, 4


def member_role(address: bytes) -> str:
    return "member:0x" + address.hex()


@dataclass
class Committee:
    """The served members, the coordinator's client and what a test needs to check them."""

    env: TwoLedgers
    network: NetworkConfig
    pki: DevPki
    ports: list[int]
    vote_dbs: list[Path]
    client: CommitteeClient
    servicers: list[VerifierServicer]
    incidents: list[Misbehaviour]

    def domain(self, on: EvmLedger) -> LedgerDomain:
        lc = self.network.ledger(on.name)
        return LedgerDomain(on.name, lc.id.word, on.word, lc.network_word)

    def stub(
        self, i: int, role: str = "coordinator"
    ) -> tuple[grpc.aio.Channel, verifier_pb2_grpc.VerifierServiceAsyncStub]:
        cert = self.pki.cert_for(role)
        ident = ClientIdentity.to(
            self.network,
            TlsConfig(cert.cert_file, cert.key_file),
            parse_role(member_role(self.env.signers[i].address)),
        )
        ch = grpc.aio.secure_channel(
            f"127.0.0.1:{self.ports[i]}", ident.credentials(), options=ident.options()
        )
        return ch, verifier_pb2_grpc.VerifierServiceStub(ch)

    def votes(self) -> list[list[tuple[bytes, int, float]]]:
        """Every member's vote log rows (``at`` shows a row was never rewritten)."""
        out = []
        for path in self.vote_dbs:
            db = sqlite3.connect(path)
            try:
                out.append(
                    [
                        (bytes(r[0]), r[1], r[2])
                        for r in db.execute(
                            "SELECT transfer_id, decision, at FROM votes ORDER BY transfer_id"
                        )
                    ]
                )
            finally:
                db.close()
        return out

    async def decided(self, ts: Sequence[TransferTerms], kind: ClaimKind) -> None:
        """Wait until EVERY member recorded ``kind`` for every item of ``ts`` (the client
        returns at t signatures; the last member's answer may still be on its way)."""

        async def done() -> bool:
            return self.decisions(ts) == {int(kind)}

        await eventually(done, 30, f"every member to record {kind.name}")

    def decisions(self, ts: Sequence[TransferTerms]) -> set[int | None]:
        wanted = {t.transfer_id for t in ts}
        seen: set[int | None] = set()
        for rows in self.votes():
            got = {tid: d for tid, d, _ in rows if tid in wanted}
            seen |= {got.get(t.transfer_id) for t in ts}
        return seen


def registrar(servicer: VerifierServicer) -> Callable[[grpc.aio.Server], None]:
    """Adds ``servicer`` to a server."""

    def register(server: grpc.aio.Server) -> None:
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(servicer, server)

    return register


@pytest.fixture
async def committee(two_ledgers: TwoLedgers, tmp_path: Path) -> AsyncIterator[Committee]:
    env = two_ledgers
    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    pki.organisation(env.a.name, [f"brokerage:{env.a.name}"])
    pki.issue(env.a.name, f"brokerage:{env.a.name}", "brokerage")
    for i, s in enumerate(env.signers):
        pki.organisation(f"member-{i}", [member_role(s.address)])
        pki.issue(f"member-{i}", member_role(s.address), f"verifier-{i}")
    (tmp_path / "network.toml").write_text(
        dump_toml(
            {
                "committee": {
                    "epoch": env.committee.epoch,
                    "threshold": env.committee.threshold,
                    "members": ["0x" + m.hex() for m in env.committee.members],
                },
                "ledgers": [
                    {
                        "id": on.name,
                        "kind": "evm",
                        "rpc_url": env.node.rpc_url,
                        "bridge": on.endpoint.address,
                        "chain_id": env.node.chain_id,
                        "finality_depth": 0,
                        "block_interval": 0.2,
                    }
                    for on in (env.a, env.b)
                ],
                "instruction_keys": {env.a.name: ["0x" + BROKER.address.hex()]},
                "organisations": pki.network_entries(tmp_path),
            }
        )
    )
    network = load_network(tmp_path / "network.toml")
    servers: list[BridgeServer] = []
    readers: list[LedgerReader] = []
    logs: list[VoteLog] = []
    audits: list[AuditLog] = []
    vote_dbs: list[Path] = []
    servicers: list[VerifierServicer] = []
    incidents: list[Misbehaviour] = []

    async def report(incident: Misbehaviour) -> None:
        incidents.append(incident)

    for i, signer in enumerate(env.signers):
        mine = {lc.id.word: open_reader(lc) for lc in network.ledgers.values()}
        readers += mine.values()
        vote_dbs.append(tmp_path / f"votes-{i}.sqlite")
        logs.append(VoteLog(vote_dbs[-1], signer.address))
        servicer = VerifierServicer(
            signer, network.committee, mine, logs[-1],
            network_words={n: lc.network_word for n, lc in network.ledgers.items()},
            instruction_keys=network.instruction_keys, max_batch_claims=MAX_CLAIMS,
        )  # fmt: skip
        servicers.append(servicer)
        cert = pki.cert_for(member_role(signer.address))
        security, audit = server_security(
            "verifier", network, TlsConfig(cert.cert_file, cert.key_file), None
        )
        audits.append(audit)
        server = BridgeServer(
            "127.0.0.1:0",
            [verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name],
            [registrar(servicer)],
            security,
        )
        await server.start()
        servers.append(server)
    coordinator = pki.cert_for("coordinator")
    tls = TlsConfig(coordinator.cert_file, coordinator.key_file)
    client = CommitteeClient(
        network.committee,
        [f"127.0.0.1:{s.port}" for s in servers],
        30.0,
        on_misbehaviour=report,
        identities=[
            ClientIdentity.to(network, tls, parse_role(member_role(s.address))) for s in env.signers
        ],
    )
    try:
        yield Committee(
            env, network, pki, [s.port for s in servers], vote_dbs, client, servicers, incidents
        )
    finally:
        await client.close()
        for server in servers:
            await server.server.stop(0)
        for reader in readers:
            await reader.close()
        for log in logs:
            log.close()
        for audit in audits:
            audit.close()


def locked(env: TwoLedgers, n: int, recipient: DevAccount | None = None) -> list[TransferTerms]:
    """``n`` transfers A -> B locked on A in one ``lockBatch`` (brokerage-instructed)."""
    sender = env.a.holder(10 * n)
    to = recipient or env.b.holder()
    ts = [env.terms(sender, to, 2) for _ in range(n)]
    fn = evm_batch.lock_call(env.a.endpoint, ts, [env.instruction(t) for t in ts])
    send_tx(env.a.w3, env.a.relayer.private_key, fn)
    assert [env.a.endpoint.functions.outbound(t.transfer_id).call()[0] for t in ts] == [
        OUT_LOCKED
    ] * n
    return ts


def run_step(
    on: EvmLedger, step: BatchStep, certified: CertifiedBatch, only: slice = slice(None)
) -> None:
    items = [BatchItem(i.terms, proof=i.proof) for i in certified.items[only]]
    fn = evm_batch.step_call(on.endpoint, step, items, certified.certificate)
    send_tx(on.w3, on.relayer.private_key, fn)


def in_state(on: EvmLedger, ts: Sequence[TransferTerms]) -> list[int]:
    return [on.endpoint.functions.inbound(t.transfer_id).call()[0] for t in ts]


def out_state(on: EvmLedger, ts: Sequence[TransferTerms]) -> list[int]:
    return [on.endpoint.functions.outbound(t.transfer_id).call()[0] for t in ts]


async def prepared(c: Committee, ts: Sequence[TransferTerms]) -> None:
    certs = await c.client.certify_batch(ClaimKind.LOCKED, ts, [c.domain(c.env.b)])
    run_step(c.env.b, BatchStep.PREPARE, certs[c.env.b.name])


# --------------------------------------------------------------------------- happy paths


async def test_a_locked_batch_certificate_verifies_on_the_evm_endpoint(c: Committee) -> None:
    env = c.env
    ts = locked(env, 5)
    certs = await c.client.certify_batch(ClaimKind.LOCKED, ts, [c.domain(env.b)])
    assert list(certs) == [env.b.name], "LOCKED is signed for the target only"
    got = certs[env.b.name]
    cert = got.certificate
    assert (cert.epoch, cert.kind, cert.count) == (1, int(ClaimKind.LOCKED), 5)
    assert len(cert.signatures) == env.committee.threshold
    assert [i.terms for i in got.items] == ts
    # One item alone proves under the root of five, then the rest under the same certificate.
    run_step(env.b, BatchStep.PREPARE, got, slice(0, 1))
    assert in_state(env.b, ts) == [IN_PREPARED, 0, 0, 0, 0]
    run_step(env.b, BatchStep.PREPARE, got, slice(1, None))
    assert in_state(env.b, ts) == [IN_PREPARED] * 5
    assert c.votes() == [[]] * 4, "LOCKED records no decision"


async def test_commit_batch_settles_both_ledgers_and_a_replay_records_nothing_new(
    c: Committee,
) -> None:
    env = c.env
    ts = locked(env, 4)
    await prepared(c, ts)
    ledgers = [c.domain(env.a), c.domain(env.b)]
    certs = await c.client.certify_batch(ClaimKind.COMMIT, ts, ledgers)
    await c.decided(ts, ClaimKind.COMMIT)
    rows = c.votes()
    again = await c.client.certify_batch(ClaimKind.COMMIT, ts, ledgers)
    for name in (env.a.name, env.b.name):
        first, second = certs[name].certificate, again[name].certificate
        assert (second.epoch, second.kind, second.root, second.count) == (
            first.epoch, first.kind, first.root, first.count,
        )  # fmt: skip
    # Each member answers a replay with the very same signatures (deterministic ECDSA).
    request = verifier_pb2.SignClaimsRequest(
        kind=int(ClaimKind.COMMIT),  # type: ignore[arg-type]
        items=[terms_to_pb(t) for t in ts],
    )
    ch, stub = c.stub(2)
    async with ch:
        answers = [await stub.SignClaims(request, timeout=30) for _ in range(2)]
    assert answers[0] == answers[1]
    assert {s.root for s in answers[0].signatures} == {
        certs[env.a.name].certificate.root,
        certs[env.b.name].certificate.root,
    }
    assert c.votes() == rows, "a replay re-records no vote"
    run_step(env.b, BatchStep.COMMIT, certs[env.b.name])
    run_step(env.a, BatchStep.COMMIT, certs[env.a.name])
    assert in_state(env.b, ts) == [IN_MINTED] * 4
    assert out_state(env.a, ts) == [OUT_BURNED] * 4
    # ABORT after COMMIT: refused for every item, nothing recorded or changed.
    with pytest.raises(BatchItemsRefused) as info:
        await c.client.certify_batch(ClaimKind.ABORT, ts, ledgers)
    assert [i.index for i in info.value.items] == [0, 1, 2, 3]
    assert c.votes() == rows


# --------------------------------------------------------------------------- refusals


async def test_one_ineligible_item_refuses_the_whole_batch_and_records_no_vote(
    c: Committee,
) -> None:
    env = c.env
    ts = locked(env, 4)
    await prepared(c, ts[:3])  # the last item is locked, never prepared
    ledgers = [c.domain(env.a), c.domain(env.b)]
    with pytest.raises(BatchItemsRefused) as info:
        await c.client.certify_batch(ClaimKind.COMMIT, ts, ledgers)
    ((index, reason),) = [(i.index, i.reason) for i in info.value.items]
    assert (index, reason) == (3, BridgeReason.CLAIM_REFUSED)
    assert "not PREPARED" in info.value.items[0].message
    assert c.decisions(ts) == {None}, "no member recorded any item"
    # The coordinator drops the refused item and asks again.
    certs = await c.client.certify_batch(ClaimKind.COMMIT, ts[:3], ledgers)
    assert certs[env.b.name].certificate.count == 3
    await c.decided(ts[:3], ClaimKind.COMMIT)
    assert c.decisions(ts[3:]) == {None}


async def test_commit_after_abort_in_another_batch_is_refused(c: Committee) -> None:
    env = c.env
    good = locked(env, 2)
    stranger = DevAccount.generate()  # not eligible on B: its items are REJECTED at prepare
    bad = locked(env, 2, recipient=stranger)
    await prepared(c, good + bad)
    assert in_state(env.b, good + bad) == [IN_PREPARED] * 2 + [IN_REJECTED] * 2
    ledgers = [c.domain(env.a), c.domain(env.b)]
    aborts = await c.client.certify_batch(ClaimKind.ABORT, bad, ledgers)
    await c.decided(bad, ClaimKind.ABORT)
    rows = c.votes()
    with pytest.raises(BatchItemsRefused) as info:
        await c.client.certify_batch(ClaimKind.COMMIT, [good[0], bad[1], good[1]], ledgers)
    assert [i.index for i in info.value.items] == [1]
    assert c.votes() == rows, "nothing recorded for the good items either"
    run_step(env.b, BatchStep.ABORT, aborts[env.b.name])
    run_step(env.a, BatchStep.ABORT, aborts[env.a.name])
    assert out_state(env.a, bad) == [3, 3], "released"


async def test_malformed_requests_are_invalid_arguments(c: Committee) -> None:
    env = c.env
    ts = locked(env, MAX_CLAIMS + 1)
    back = TransferTerms(**{
        **{f: getattr(ts[0], f) for f in ts[0].__dataclass_fields__},
        "src_ledger": LedgerId(env.b.name).word, "src_bridge": env.b.word,
        "dst_ledger": LedgerId(env.a.name).word, "dst_bridge": env.a.word,
    })  # fmt: skip
    cases = {
        "over the bound": (ts, f"1 to {MAX_CLAIMS} items, not {MAX_CLAIMS + 1}"),
        "duplicates": ([ts[0], ts[1], ts[0]], "item 2 repeats item 0"),
        "mixed ledger pairs": ([ts[0], back], "items [1] do not"),
    }
    ch, stub = c.stub(0)
    async with ch:
        for name, (items, message) in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SignClaims(
                    verifier_pb2.SignClaimsRequest(
                        kind=int(ClaimKind.LOCKED),  # type: ignore[arg-type]
                        items=[terms_to_pb(t) for t in items],
                    ),
                    timeout=30,
                )
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
            assert message in (info.value.details() or ""), name
            assert refusal_of(info.value, len(items)) == (), name


async def test_a_refusal_lists_items_on_the_wire(c: Committee) -> None:
    env = c.env
    ts = locked(env, 3)
    never = env.terms(env.a.holder(), env.b.holder(), 1)  # not locked
    ch, stub = c.stub(1)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SignClaims(
                verifier_pb2.SignClaimsRequest(
                    kind=int(ClaimKind.LOCKED),  # type: ignore[arg-type]
                    items=[terms_to_pb(t) for t in [ts[0], never, ts[1], ts[2]]],
                ),
                timeout=30,
            )
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert [(i.index, i.reason) for i in refusal_of(info.value, 4)] == [
        (1, BridgeReason.CLAIM_REFUSED)
    ]


async def test_only_the_coordinator_may_ask(c: Committee) -> None:
    env = c.env
    ts = locked(env, 2)
    ch, stub = c.stub(0, role=f"brokerage:{env.a.name}")
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SignClaims(
                verifier_pb2.SignClaimsRequest(
                    kind=int(ClaimKind.LOCKED),  # type: ignore[arg-type]
                    items=[terms_to_pb(t) for t in ts],
                ),
                timeout=30,
            )
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not call /bridge.v1.VerifierService/SignClaims" in (info.value.details() or "")


async def test_a_member_signing_another_root_is_reported_and_not_counted(
    c: Committee, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member 0 signs the root of a smaller batch (it dropped an item): its signature is
    not counted, the certificate is the three honest members', and the evidence is
    reported (wrong-batch-digest) even if it answers after the quorum."""
    env = c.env
    liar = c.servicers[0]
    honest = liar._sign_batch

    async def drop_last(
        kind: ClaimKind, keys: Sequence[tuple[bytes, bytes]], ledgers: list[LedgerReader]
    ) -> verifier_pb2.SignClaimsResponse:
        return await honest(kind, keys[:-1], ledgers)

    monkeypatch.setattr(liar, "_sign_batch", drop_last)
    ts = locked(env, 3)
    certs = await c.client.certify_batch(ClaimKind.LOCKED, ts, [c.domain(env.b)])
    got = certs[env.b.name]
    digest = got.certificate.digest(
        c.domain(env.b).network_word, c.domain(env.b).ledger_word, c.domain(env.b).bridge_word
    )
    signers = [recover_signer(digest, sig) for sig in got.certificate.signatures]
    assert signers == sorted(s.address for s in env.signers[1:]) == sorted(signers)

    async def reported() -> bool:
        return any(i.kind == "wrong-batch-digest" for i in c.incidents)

    await eventually(reported, 30, "the liar reported")
    (incident,) = c.incidents
    assert incident.member == env.signers[0].address
    assert incident.expected_digest == digest != incident.signed_digest
    run_step(env.b, BatchStep.PREPARE, got)
    assert in_state(env.b, ts) == [IN_PREPARED] * 3


def refusing_every_item(servicer: VerifierServicer, monkeypatch: pytest.MonkeyPatch) -> None:
    """``servicer`` refuses every item of every batch (a member below the threshold, faulty
    or hostile)."""

    async def refuse(
        kind: ClaimKind, keys: Sequence[tuple[bytes, bytes]], ledgers: list[LedgerReader]
    ) -> verifier_pb2.SignClaimsResponse:
        raise ClaimsRefused(
            [RefusedItem(i, BridgeReason.CLAIM_REFUSED, False, "no") for i in range(len(keys))]
        )

    monkeypatch.setattr(servicer, "_sign_batch", refuse)


def refusing(servicer: VerifierServicer, t: TransferTerms, monkeypatch: pytest.MonkeyPatch) -> None:
    """``servicer`` refuses ``t`` alone, in a batch or by itself (as a member whose node has
    not reached the block that shows it would)."""
    judge = servicer._judge

    def lagging(kind: ClaimKind, terms: TransferTerms, *rest: Any) -> bool:
        if terms.transfer_id == t.transfer_id:
            raise PreconditionFailed("the leg is not final on this member's node yet")
        return judge(kind, terms, *rest)

    monkeypatch.setattr(servicer, "_judge", lagging)


async def test_one_member_refusing_every_item_drops_only_what_another_member_refused(
    c: Committee, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-107: member 0 refuses every item; member 1 refuses item 2 alone. Only
    item 2 is dropped (two refusals: at most two members could sign it, t = 3), not the
    batch; the rest, asked again, is certified by members 1-3 and prepares on B."""
    env = c.env
    ts = locked(env, 4)
    refusing_every_item(c.servicers[0], monkeypatch)
    refusing(c.servicers[1], ts[2], monkeypatch)
    ledgers = [c.domain(env.b)]
    with pytest.raises(BatchItemsRefused) as info:
        await c.client.certify_batch(ClaimKind.LOCKED, ts, ledgers)
    # (its reason is the first refuser's: either member may answer first)
    assert [i.index for i in info.value.items] == [2]
    rest = [ts[0], ts[1], ts[3]]
    certs = await c.client.certify_batch(ClaimKind.LOCKED, rest, ledgers)
    got = certs[env.b.name]
    b = c.domain(env.b)
    digest = got.certificate.digest(b.network_word, b.ledger_word, b.bridge_word)
    signers = [recover_signer(digest, sig) for sig in got.certificate.signatures]
    assert signers == sorted(s.address for s in env.signers[1:])
    run_step(env.b, BatchStep.PREPARE, got)
    assert in_state(env.b, rest) == [IN_PREPARED] * 3
    assert in_state(env.b, ts[2:3]) == [0]


async def test_refusals_no_item_gets_from_enough_members_go_one_item_at_a_time(
    c: Committee, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member 1 refuses item 1 and member 2 item 2: no quorum for the batch, but each item
    has three members that would sign it. None is named refused (the coordinator then
    certifies them one at a time); each alone is certified."""
    env = c.env
    ts = locked(env, 3)
    refusing(c.servicers[1], ts[1], monkeypatch)
    refusing(c.servicers[2], ts[2], monkeypatch)
    ledgers = [c.domain(env.b)]
    with pytest.raises(BatchItemsRefused) as info:
        await c.client.certify_batch(ClaimKind.LOCKED, ts, ledgers)
    assert info.value.items == ()
    for t in ts:
        sigs = await c.client.certify(ClaimKind.LOCKED, t, ledgers)
        assert len(sigs[env.b.name].signatures) == env.committee.threshold


@pytest.fixture
def c(committee: Committee) -> Committee:
    return committee
