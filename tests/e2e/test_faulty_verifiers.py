"""Faulty committee members and the operator's tools, with the whole system as processes.

One of the four members is replaced by a rogue gRPC server holding that member's real key.
Asked for any claim, it signs the opposite one (LOCKED -> COMMIT, COMMIT -> ABORT,
ABORT -> COMMIT), so over a transfer's life it signs both COMMIT and ABORT; asked for a
supply record, it signs one with a falsified figure. With t = 3 of 4, the three honest
members decide: every outcome is right, and the coordinator keeps the rogue's signatures
as evidence that anyone can check.

The operator tools are exercised on a transfer whose target relayer is down: it is listed
as stuck with its reason; an abort is refused before the deadline (the target may still
prepare) and goes through a certified ABORT after it. An honest member is hung (SIGSTOP)
until the relayer is down, so no LOCKED certificate, and so no prepare, can get there first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from bridge.cli.main import main as cli_main
from bridge.config import load_network
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import recover_signer
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.factory import bridge_word_of
from bridge.rpc.convert import terms_from_pb
from bridge.rpc.supply_convert import record_from_pb
from bridge.supply_client import audit_feed, settled_position
from bridge.v1 import (
    operator_pb2,
    operator_pb2_grpc,
    transfer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from bridge.v1 import transfer_pb2 as S
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

A, B = "brokerage-a", "brokerage-b"
OPPOSITE = {
    ClaimKind.LOCKED: ClaimKind.COMMIT,
    ClaimKind.COMMIT: ClaimKind.ABORT,
    ClaimKind.ABORT: ClaimKind.COMMIT,
}
TERMINAL = (S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED)


class RogueVerifier(verifier_pb2_grpc.VerifierServiceServicer):
    """A member's key in the wrong hands: signs the opposite claim, falsifies supply."""

    def __init__(self, signer: LocalKeySigner, domains: dict[str, ClaimDomain], epoch: int):
        self.signer = signer
        self.domains = domains
        self.epoch = epoch
        self.signed: list[tuple[ClaimKind, bytes, bytes]] = []  # (kind signed, tid, digest)

    def GetIdentity(self, request, context):
        return verifier_pb2.VerifierIdentity(address=self.signer.address, epoch=self.epoch)

    def SignClaim(self, request, context):
        terms = terms_from_pb(request.terms)
        lie = Claim(OPPOSITE[ClaimKind(request.kind)], terms.transfer_id, terms.terms_hash)
        out = verifier_pb2.SignClaimResponse(signer=self.signer.address)
        for name, domain in self.domains.items():
            digest = claim_digest(domain, lie)
            self.signed.append((lie.kind, terms.transfer_id, digest))
            out.signatures.append(
                verifier_pb2.LedgerSignature(
                    ledger_id=name, epoch=self.epoch, digest=digest,
                    signature=self.signer.sign_digest(digest),
                )
            )  # fmt: skip
        return out

    def SignSupply(self, request, context):
        record = record_from_pb(request.record)
        forged = replace(record, in_transit=record.in_transit + 1)
        return verifier_pb2.SignSupplyResponse(
            signer=self.signer.address,
            digest=forged.digest,
            signature=self.signer.sign_digest(forged.digest),
        )


ROGUES: list[RogueVerifier] = []


@pytest.fixture(scope="module")
def rogue_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    s = LocalSystem(Path(tmp_path_factory.mktemp("rogue")), block_time=0.5, transfer_ttl=25,
                    supply_heartbeat=2.0)  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    try:
        s.start()
        network = load_network(s.workdir / "network.toml")
        domains = {
            name: ClaimDomain(
                lc.id.word, bridge_word_of(lc), network.committee.epoch, lc.network_word
            )
            for name, lc in network.ledgers.items()
        }
        rogue_key = s.verifier_keys[3]
        rogue = RogueVerifier(LocalKeySigner(rogue_key.private_key), domains, 1)
        ROGUES.append(rogue)
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(rogue, server)
        port = server.add_secure_port("127.0.0.1:0", s.server_credentials(s.member_role(3)))
        server.start()
        s.processes["verifier-3"].stop()  # its key now serves the rogue
        config = s.workdir / "coordinator.toml"
        text = config.read_text().replace(f"127.0.0.1:{s.ports['verifier-3']}", f"127.0.0.1:{port}")
        config.write_text(text)
        s.processes["coordinator"].stop()
        s.start_process("coordinator")
        yield s
    finally:
        server.stop(0)
        s.stop()


def submit(s: LocalSystem, sender: str, recipient: str, amount: int) -> str:
    return s.submit(
        S.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()),
            security_id=DEMO_ISIN,
            source_ledger=A,
            target_ledger=B,
            sender=sender,
            recipient=recipient,
            amount=str(amount),
        ),
    )


def state_of(s: LocalSystem, tid: str) -> S.Transfer:
    with s.channel("depository") as ch:
        return transfer_pb2_grpc.TransferServiceStub(ch).GetTransfer(
            S.GetTransferRequest(transfer_id=tid), timeout=10
        )


def wait_state(s: LocalSystem, tid: str, limit: float = 90) -> S.Transfer:
    def probe() -> S.Transfer | None:
        t = state_of(s, tid)
        return t if t.state in TERMINAL else None

    return eventually_sync(probe, limit, f"transfer {tid} terminal", interval=0.3)


def test_a_member_signing_opposite_claims_changes_no_outcome_and_is_reported(
    rogue_system: LocalSystem,
) -> None:
    s = rogue_system
    a, b = s.ledgers[A], s.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 50)
    b.set_eligible(DEMO_ISIN, holder.address)
    outsider = DevAccount.generate()  # not eligible on B: that transfer must abort
    feed_start = asyncio.run(
        settled_position(s.coordinator_target, DEMO_ISIN, time.time(), 30, s.identity("depository"))
    )
    ok = submit(s, holder.address, holder.address, 20)
    refused = submit(s, holder.address, outsider.address, 5)
    assert wait_state(s, ok).state == S.TRANSFER_STATE_COMMITTED
    assert wait_state(s, refused).state == S.TRANSFER_STATE_ABORTED
    assert a.balance(DEMO_ISIN, holder.address) == 30
    assert b.balance(DEMO_ISIN, holder.address) == 20
    assert b.balance(DEMO_ISIN, outsider.address) == 0
    assert a.escrowed(DEMO_ISIN) == 0

    rogue = s.verifier_keys[3].address.lower()
    with s.channel("bridge-operator") as ch:
        incidents = (
            operator_pb2_grpc.OperatorServiceStub(ch)
            .ListMisbehaviour(operator_pb2.ListMisbehaviourRequest(limit=1000), timeout=10)
            .incidents
        )
    assert incidents, "the rogue's signatures were recorded"
    members = {"0x" + i.member.hex() for i in incidents}
    assert members == {rogue}, "only the rogue member is reported"
    for i in incidents:
        # The evidence stands on its own: the signature recovers to the member over what
        # it signed, and that is not what it was asked to sign.
        assert "0x" + recover_signer(i.signed_digest, i.signature).hex() == rogue
        assert i.signed_digest != i.expected_digest
    kinds = {i.kind for i in incidents}
    assert "wrong-digest" in kinds
    assert "wrong-supply-digest" in kinds, "a falsified supply record was caught too"
    # For the aborted transfer the rogue signed a COMMIT claim when asked for ABORT: the
    # coordinator holds that signature, conflicting with the certified outcome.
    refused_tid = bytes.fromhex(state_of(s, refused).transfer_id[2:])
    commit_digests = {
        d for kind, t, d in ROGUES[0].signed if t == refused_tid and kind is ClaimKind.COMMIT
    }
    held = {
        bytes(i.signed_digest)
        for i in incidents
        if i.subject == f"ABORT for transfer 0x{refused_tid.hex()}"
    }
    assert held, "the ABORT request of the refused transfer produced evidence"
    assert held <= commit_digests, "the evidence is the rogue's COMMIT signature"

    # Supply records were produced by the three honest members and all verify.
    assert s.committee is not None
    checked, problems = _audit(s, feed_start)
    assert checked >= 1
    assert not problems, problems


def _audit(s: LocalSystem, start: int) -> tuple[int, list[str]]:
    assert s.committee is not None
    return asyncio.run(
        audit_feed(
            s.coordinator_target, s.committee, start, DEMO_ISIN, identity=s.identity("depository")
        )
    )


def test_operator_lists_stuck_transfers_and_aborts_only_through_the_ledgers(
    rogue_system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    s = rogue_system
    a, b = s.ledgers[A], s.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 10)
    b.set_eligible(DEMO_ISIN, holder.address)
    # With one honest member hung, the rogue's signatures leave the committee one short of
    # t: the lock lands, but no LOCKED certificate (hence no prepare) can exist until the
    # target relayer is down. Killing the relayer on seeing SOURCE_LOCKED alone would race
    # a prepare already on its way to the target ledger.
    honest = s.processes["verifier-0"]
    honest.pause()
    try:
        tid = submit(s, holder.address, holder.address, 10)

        def locked() -> bool:
            return state_of(s, tid).state == S.TRANSFER_STATE_SOURCE_LOCKED

        eventually_sync(locked, 30, "units locked on the source")
        s.processes[f"relayer-{B}"].kill9()  # the target cannot prepare now
    finally:
        honest.resume()
    with s.channel("bridge-operator") as ch:
        op = operator_pb2_grpc.OperatorServiceStub(ch)

        def stuck_with_reason() -> S.Transfer | None:
            got = op.ListStuckTransfers(
                operator_pb2.ListStuckTransfersRequest(min_age_seconds=0), timeout=10
            ).transfers
            mine = [x for x in got if x.transfer_id == tid]
            return mine[0] if mine and f"relayer of {B} unreachable" in mine[0].reason else None

        t = eventually_sync(stuck_with_reason, 30, "the transfer listed as stuck, with why")
        assert "waiting since" in t.reason
        with pytest.raises(grpc.RpcError) as early:
            op.AbortTransfer(operator_pb2.AbortTransferRequest(transfer_id=tid), timeout=30)
        # Before the deadline nothing may abort it; with the target relayer down the legs
        # cannot even be read. Either way, a precise refusal and nothing moves.
        if early.value.code() == grpc.StatusCode.FAILED_PRECONDITION:
            assert "may still prepare until the deadline" in early.value.details()
        else:
            assert early.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"relayer of {B}" in early.value.details()
        op.RetryTransfer(operator_pb2.RetryTransferRequest(transfer_id=tid), timeout=10)
        for bad, code in (("0x12", grpc.StatusCode.INVALID_ARGUMENT),
                          ("0x" + "00" * 32, grpc.StatusCode.NOT_FOUND)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as exc:
                op.RetryTransfer(operator_pb2.RetryTransferRequest(transfer_id=bad), timeout=10)
            assert exc.value.code() == code
        deadline = state_of(s, tid).deadline.seconds
        time.sleep(max(0.0, deadline + 1 - time.time()))  # wait out the transfer's deadline
        s.start_process(f"relayer-{B}")

        def abort_accepted() -> bool:
            try:
                op.AbortTransfer(operator_pb2.AbortTransferRequest(transfer_id=tid), timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:  # reconnecting to the relayer
                    raise
                return False
            return True

        eventually_sync(abort_accepted, 20, "the abort accepted once the target is readable")
        final = wait_state(s, tid)
        assert final.state == S.TRANSFER_STATE_ABORTED
        assert "expire" in final.transactions and "release" in final.transactions
        assert a.balance(DEMO_ISIN, holder.address) == 10, "units released to the sender"
        assert b.balance(DEMO_ISIN, holder.address) == 0
        with pytest.raises(grpc.RpcError) as done:
            op.RetryTransfer(operator_pb2.RetryTransferRequest(transfer_id=tid), timeout=10)
        assert done.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    code = cli_main(
        ["--coordinator", s.coordinator_target, *s.cli_tls_args("bridge-operator"),
         "operator", "misbehaviour"]
    )  # fmt: skip
    assert code == 0
    assert s.verifier_keys[3].address.lower()[2:] in capsys.readouterr().out
