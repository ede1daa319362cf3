"""Committee rotation with the whole system as processes (ADR 0009), EVM lanes.

Member 3 is a rogue (the faulty-verifier test's RogueVerifier holding its real key): it
signs opposite claims, and the coordinator records the evidence. While transfers run in
both directions the bridge operator rotates the committee with the CLI, removing the rogue
(its evidence attached) and adding a spare member: the members sign the rotation after
their own ledger reads, the coordinator installs it on both ledgers, transfers carry on
under epoch 2 (the new member signs), certificates of epoch 1 are refused once the overlap
is over, and the depository verifies the supply feed across the epochs from its genesis
trust anchor through the certified rotation chain. No transfer is lost, stuck or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.cli.main import main as cli_main
from bridge.config import load_network
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, CommitteeRotation
from bridge.domain.errors import InvalidCertificate
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.legs import SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm import deploy
from bridge.ledgers.factory import bridge_word_of
from bridge.supply_client import (
    FeedVerifier,
    SupplyFeed,
    follow_epoch,
    settled_position,
    verifier_for,
)
from bridge.v1 import (
    operator_pb2,
    operator_pb2_grpc,
    relayer_pb2,
    relayer_pb2_grpc,
    transfer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from bridge.v1 import transfer_pb2 as S
from tests.e2e.test_faulty_verifiers import RogueVerifier
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.governance]

A, B, F = "brokerage-a", "brokerage-b", "brokerage-f"
OVERLAP = 15
TERMINAL = (S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED)


@contextlib.contextmanager
def with_rogue(s: LocalSystem) -> Iterator[LocalSystem]:
    """Start ``s`` with member 3 replaced by a rogue server holding its key."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    try:
        s.start()
        network = load_network(s.workdir / "network.toml")
        domains = {
            name: ClaimDomain(lc.id.word, bridge_word_of(lc), 1, lc.network_word)
            for name, lc in network.ledgers.items()
        }
        rogue = RogueVerifier(LocalKeySigner(s.verifier_keys[3].private_key), domains, 1)
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(rogue, server)
        port = server.add_secure_port("127.0.0.1:0", s.server_credentials(s.member_role(3)))
        server.start()
        s.processes["verifier-3"].stop()  # its key now serves the rogue
        config = s.workdir / "coordinator.toml"
        text = config.read_text()
        config.write_text(text.replace(f"127.0.0.1:{s.ports['verifier-3']}", f"127.0.0.1:{port}"))
        s.ports["verifier-3"] = port
        s.processes["coordinator"].stop()
        s.start_process("coordinator")
        yield s
    finally:
        server.stop(0)
        s.stop()


@pytest.fixture(scope="module")
def rot_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    s = LocalSystem(Path(tmp_path_factory.mktemp("rotation")), block_time=0.5, transfer_ttl=60,
                    supply_heartbeat=2.0, spare_members=1)  # fmt: skip
    with with_rogue(s):
        yield s


@pytest.fixture(scope="module")
def rot_mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    s = LocalSystem(Path(tmp_path_factory.mktemp("rotation-fabric")), ledger_names=((A, 31001),),
                    fabric_ledger_names=(F,), block_time=0.5, transfer_ttl=90,
                    supply_heartbeat=3.0, spare_members=1)  # fmt: skip
    with with_rogue(s):
        yield s


def submit(s: LocalSystem, src: str, dst: str, holder: str, amount: int) -> str:
    return s.submit(
        S.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()), security_id=DEMO_ISIN, source_ledger=src,
            target_ledger=dst, sender=holder, recipient=holder, amount=str(amount),
        )
    )  # fmt: skip


def transfer(s: LocalSystem, tid: str) -> S.Transfer:
    with s.channel("depository") as ch:
        return transfer_pb2_grpc.TransferServiceStub(ch).GetTransfer(
            S.GetTransferRequest(transfer_id=tid), timeout=10
        )


def rotation_status(s: LocalSystem, epoch: int) -> dict[str, str]:
    with s.channel("bridge-operator") as ch:
        r = operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
            operator_pb2.GetRotationRequest(next_epoch=epoch), timeout=10
        )
    return {x.ledger_id: x.status for x in r.ledgers}


_TEST_RELAYERS: dict[tuple[str, str], DevAccount] = {}


def own_relayer(s: LocalSystem, ledger: str) -> DevAccount:
    """A relayer account of the test's own on ``ledger`` (the relayer daemon's account is
    busy: sharing it would race its nonces)."""
    key = (str(s.workdir), ledger)
    if key not in _TEST_RELAYERS:
        h = s.ledgers[ledger]
        account = DevAccount.generate()
        set_balance(s, ledger, account.address, 10**21)
        deploy.set_relayer(h.w3, h.admin.private_key, h.endpoint, account.address, True)
        _TEST_RELAYERS[key] = account
    return _TEST_RELAYERS[key]


def old_epoch_result(
    s: LocalSystem, ledger: str, epoch: int, signers: list[LocalKeySigner]
) -> str | None:
    """Abort a fresh inbound leg on ``ledger`` with an ``epoch`` certificate of ``signers``
    (as its relayer account): None when it verified, else the endpoint's error name."""
    h = s.ledgers[ledger]
    word = evm_address_word("0x" + "11" * 20)
    t = TransferTerms(
        nonce=uuid.uuid4().bytes * 2, security=SecurityId(DEMO_ISIN).word, amount=1,
        src_ledger=LedgerId("elsewhere").word, src_bridge=bytes(32),
        dst_ledger=LedgerId(ledger).word, dst_bridge=evm_address_word(h.endpoint.address),
        sender=word, recipient=word, instructor=word, deadline=2**40,
    )  # fmt: skip
    lc = s.network.ledgers[ledger]
    domain = ClaimDomain(lc.id.word, bridge_word_of(lc), epoch, lc.network_word)
    digest = claim_digest(domain, Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash))
    sigs = b"".join(k.sign_digest(digest) for k in sorted(signers, key=lambda k: k.address))
    fn = h.endpoint.functions.abort(t.as_abi_tuple(), (epoch, sigs))
    try:
        deploy.send_tx(h.w3, own_relayer(s, ledger).private_key, fn, gas=500_000)
    except deploy.TxReverted as exc:
        return exc.error_name
    return None


def test_rotation_removing_a_member_while_transfers_run(
    rot_system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    rotate_under_load(rot_system, capsys, A, B, pause=1.5)


@pytest.mark.fabric
def test_rotation_on_an_evm_fabric_lane(
    rot_mixed: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    rotate_under_load(rot_mixed, capsys, A, F, pause=3.0)


def epochs_on(s: LocalSystem, ledger: str) -> list[int]:
    """The epochs ``ledger`` accepts, read through its relayer as the bridge operator."""
    with s.channel("bridge-operator", peer=f"relayer:{ledger}") as ch:
        got = relayer_pb2_grpc.RelayerServiceStub(ch).GetCommittees(
            relayer_pb2.GetCommitteesRequest(), timeout=20
        )
    return [e.epoch for e in got.epochs]


def rotate_under_load(
    s: LocalSystem, capsys: pytest.CaptureFixture[str], one: str, two: str, pause: float
) -> None:
    """Rotate (removing the rogue, adding the spare) while transfers run both ways between
    ``one`` and ``two``; check every guarantee of the rotation."""
    A, B = one, two
    a, b = s.handle(A), s.handle(B)
    ha, hb = a.make_holder(DEMO_ISIN, 300), b.make_holder(DEMO_ISIN, 300)
    a.set_eligible(DEMO_ISIN, hb.address)
    b.set_eligible(DEMO_ISIN, ha.address)
    supply = {n: s.handle(n).total_supply(DEMO_ISIN) for n in (A, B)}
    feed_start = asyncio.run(
        settled_position(s.coordinator_target, DEMO_ISIN, time.time(), 30, s.identity("depository"))
    )
    rogue = s.verifier_keys[3].address.lower()
    honest = [LocalKeySigner(k.private_key) for k in s.verifier_keys[:3]]
    spare = LocalKeySigner(s.spare_keys[0].private_key)

    # Transfers in both directions, all along.
    sent: list[tuple[str, str]] = []  # (transfer id, direction)
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            while not stop.is_set():
                sent.append((submit(s, A, B, ha.address, 1), "ab"))
                sent.append((submit(s, B, A, hb.address, 1), "ba"))
                stop.wait(pause)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    loader = threading.Thread(target=load, name="load")
    loader.start()
    try:
        # The rogue's first opposite signature is recorded as evidence.
        def evidence() -> bool:
            with s.channel("bridge-operator") as ch:
                got = operator_pb2_grpc.OperatorServiceStub(ch).ListMisbehaviour(
                    operator_pb2.ListMisbehaviourRequest(limit=100), timeout=10
                )
            return any("0x" + i.member.hex() == rogue for i in got.incidents)

        eventually_sync(evidence, 60, "evidence against the rogue member", interval=0.5)

        # The operator proposes epoch 2 without the rogue and with the spare member.
        next_members = [k.address for k in honest] + [spare.address]
        tls = s.cli_tls_args("bridge-operator")
        endpoint_args = [
            arg
            for i in range(4)
            for arg in (
                "--member-endpoint",
                f"{s.members[i][0]}=127.0.0.1:{s.ports[f'verifier-{i}']}",
            )
        ]
        code = cli_main(
            ["--coordinator", s.coordinator_target, *tls, "operator", "rotation", "propose",
             "--next-members", ",".join("0x" + m.hex() for m in next_members), "--threshold", "3",
             "--overlap", str(OVERLAP), "--remove-misbehaving", rogue, *endpoint_args]
        )  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0, out
        assert f"removes {rogue}" in out and "evidence records attached" in out
        assert "refused: " + rogue in out, "the rogue cannot sign a rotation"

        # A coordinator killed right after it received the signatures finishes the job on
        # restart (level-triggered: it re-reads each ledger, installs what is missing).
        s.processes["coordinator"].kill9()
        s.start_process("coordinator")

        def installed() -> dict[str, str] | None:
            st = rotation_status(s, 2)
            return st if all(v in ("active", "old-epoch-expired") for v in st.values()) else None

        eventually_sync(installed, 60, "epoch 2 installed on both ledgers", interval=0.5)
        with s.channel("bridge-operator") as ch:
            r = operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
                operator_pb2.GetRotationRequest(next_epoch=2), timeout=10
            )
        assert "0x" + r.removed_member.hex() == rogue
        assert r.evidence and all("0x" + e.member.hex() == rogue for e in r.evidence)

        # SECURITY: the coordinator cannot make a member sign a rotation (operator only).
        with (
            s.channel("coordinator", peer=s.member_role(0)) as ch,
            pytest.raises(grpc.RpcError) as denied,
        ):
            verifier_pb2_grpc.VerifierServiceStub(ch).SignRotation(
                verifier_pb2.SignRotationRequest(proposal=r.proposal, ledger_ids=[A]), timeout=10
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # Re-running the same command is idempotent: no rotation to epoch 3 appears.
        code = cli_main(
            ["--coordinator", s.coordinator_target, *tls, "operator", "rotation", "propose",
             "--next-members", ",".join("0x" + m.hex() for m in next_members), "--threshold", "3",
             "--overlap", str(OVERLAP), "--remove-misbehaving", rogue, *endpoint_args]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().out
        with s.channel("bridge-operator") as ch, pytest.raises(grpc.RpcError) as none:
            operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
                operator_pb2.GetRotationRequest(next_epoch=3), timeout=10
            )
        assert none.value.code() == grpc.StatusCode.NOT_FOUND

        # A member and a relayer restarted (kill -9) after the rotation follow the epoch from
        # the ledgers, not from the network file (which still names epoch 1 only).
        for name in ("verifier-0", f"relayer-{B}"):
            s.processes[name].kill9()
            s.start_process(name)

        # Old-epoch certificates are refused once the overlap is over, on both ledgers.
        def expired() -> bool:
            return set(rotation_status(s, 2).values()) == {"old-epoch-expired"}

        eventually_sync(expired, OVERLAP + 30, "the old epoch expired", interval=0.5)
        capsys.readouterr()
        assert cli_main(["--coordinator", s.coordinator_target, *tls, "--json",
                         "operator", "rotation", "status", "2"]) == 0  # fmt: skip
        shown = json.loads(capsys.readouterr().out)
        assert {x["status"] for x in shown["ledgers"]} == {"old-epoch-expired"}
        for ledger in (A, B):
            eventually_sync(lambda ledger=ledger: epochs_on(s, ledger) == [2], 20,
                            f"{ledger} accepts epoch 2 only", interval=0.5)  # fmt: skip
            if ledger in s.ledgers:  # EVM: a certificate of epoch 1 is refused WrongEpoch
                assert old_epoch_result(s, ledger, 1, honest) == "WrongEpoch"
                assert old_epoch_result(s, ledger, 2, [*honest[:2], spare]) is None
        time.sleep(3.0)  # a few more transfers under epoch 2 only
    finally:
        stop.set()
        loader.join(30)
    assert not errors, errors

    # Every transfer ends exactly once, as committed; units conserved, nothing in escrow.
    def all_done() -> list[S.Transfer] | None:
        states = [transfer(s, tid) for tid, _ in sent]
        return states if all(t.state in TERMINAL for t in states) else None

    states = eventually_sync(all_done, 120, "every transfer terminal", interval=1.0)
    assert {t.state for t in states} == {S.TRANSFER_STATE_COMMITTED}, [
        (t.transfer_id, t.state, t.reason) for t in states if t.state != S.TRANSFER_STATE_COMMITTED
    ]
    n_ab = sum(1 for _, d in sent if d == "ab")
    n_ba = len(sent) - n_ab
    assert n_ab > 3 and n_ba > 3
    assert a.balance(DEMO_ISIN, ha.address) == 300 - n_ab
    assert b.balance(DEMO_ISIN, ha.address) == n_ab
    assert b.balance(DEMO_ISIN, hb.address) == 300 - n_ba
    assert a.balance(DEMO_ISIN, hb.address) == n_ba
    assert a.escrowed(DEMO_ISIN) == 0 and b.escrowed(DEMO_ISIN) == 0
    assert sum(s.handle(n).total_supply(DEMO_ISIN) for n in (A, B)) == sum(supply.values())

    # The depository, trusting only the genesis committee of the network file, verifies the
    # feed across the rotation: records of epoch 2 through the certified chain.
    async def audit() -> tuple[list[int], list[str]]:
        verifier = verifier_for(load_network(s.workdir / "network.toml"), from_genesis=False)
        feed = SupplyFeed(s.coordinator_target, identity=s.identity("depository"))
        epochs, problems = [], []
        try:
            end = max(x.feed_sequence for x in await feed.latest())
            async with asyncio.timeout(60):
                async for x in feed.stream("", feed_start):
                    if x.signed.record.security == DEMO_ISIN:
                        await follow_epoch(feed, verifier, x)
                        v = verifier.check(x)
                        problems += list(v.failures)
                        epochs.append(x.signed.record.epoch)
                    if x.feed_sequence >= end:
                        break
            # A forged chain (epoch 2 "certified" by the new committee itself) is refused.
            chain = await feed.committee_chain(1)
            assert [c.proposal.next_epoch for c in chain] == [2]
            forged = [replace(chain[0], signatures=tuple(
                k.sign_digest(chain[0].digest) for k in sorted([spare, *honest[:2]], key=lambda k: k.address)
            ))]  # fmt: skip
            fresh = FeedVerifier(load_network(s.workdir / "network.toml").committee)
            # honest[:2] + spare: the spare is not in epoch 1, so only 2 of t=3 valid.
            with pytest.raises(InvalidCertificate):
                fresh.add_chain(forged)
            assert set(fresh.epochs) == {1}
        finally:
            await feed.close()
        return epochs, problems

    epochs, problems = asyncio.run(audit())
    assert not problems, problems
    assert 1 in epochs and 2 in epochs, epochs
    # The depository's CLI, given only the network file, verifies the whole feed and the
    # latest record (of epoch 2) the same way.
    network = str(s.workdir / "network.toml")
    tls = s.cli_tls_args("depository")
    code = cli_main(["--coordinator", s.coordinator_target, *tls, "supply", "verify",
                     "--network", network])  # fmt: skip
    out = capsys.readouterr().out
    assert code in (0, 3), out  # 3: the signed "registered issuance pending" of new holders
    assert "0 failed verification" in out
    code = cli_main(["--coordinator", s.coordinator_target, *tls, "supply", "get",
                     "--security", DEMO_ISIN, "--network", network])  # fmt: skip
    assert code == 0
    assert "VERIFIED" in capsys.readouterr().out


def set_balance(s: LocalSystem, ledger: str, address: str, wei: int) -> None:
    """anvil_setBalance on ``ledger``'s node (the devnet's own access, not a component's)."""
    s.ledgers[ledger].w3.provider.make_request("anvil_setBalance", [address, hex(wei)])


def decision_row(s: LocalSystem, tid: str) -> tuple[int, str, dict[str, Any]]:
    """The coordinator's decision row (kind, cause, certificates), read-only."""
    rows = s.query_coordinator(
        "SELECT kind, cause, certificates FROM decisions WHERE transfer_id = ?",
        (bytes.fromhex(tid.removeprefix("0x")),),
    )
    assert rows, "no decision recorded"
    row = rows[0]
    return int(row[0]), str(row[1]), json.loads(row[2])


def test_a_decision_refused_after_the_overlap_is_recertified_and_unchanged(
    rot_system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs after the rotation to epoch 2 above. A B->A transfer is decided (COMMIT,
    certificates of epoch 2) and minted on A, but its burn on B cannot be sent (B's relayer
    account has no gas). Meanwhile epoch 3 is installed on both ledgers and epoch 2's
    overlap ends. When B's relayer can send again, B refuses the stored epoch-2 certificate
    (WrongEpoch); the coordinator gathers COMMIT again for B under epoch 3 and burns. The
    decision (kind, cause, A's certificate) never changed."""
    s = rot_system
    a, b = s.ledgers[A], s.ledgers[B]
    honest = [LocalKeySigner(k.private_key) for k in s.verifier_keys[:3]]
    spare = LocalKeySigner(s.spare_keys[0].private_key)
    holder = b.make_holder(DEMO_ISIN, 10)
    a.set_eligible(DEMO_ISIN, holder.address)
    tid = submit(s, B, A, holder.address, 4)
    raw_tid = bytes.fromhex(tid.removeprefix("0x"))

    # Drain B's relayer account as soon as the lock is on B: the burn cannot be sent.
    eventually_sync(lambda: b.endpoint.functions.outbound(raw_tid).call()[0] == 1, 60,
                    "locked on B", interval=0.05)  # fmt: skip
    set_balance(s, B, b.relayer.address, 0)
    try:
        eventually_sync(lambda: a.endpoint.functions.inbound(raw_tid).call()[0] == 4, 60,
                        "minted on A", interval=0.2)  # fmt: skip
        kind, cause, before = decision_row(s, tid)
        assert {n: c["epoch"] for n, c in before.items()} == {A: 2, B: 2}
        assert b.endpoint.functions.outbound(raw_tid).call()[0] == 1, "not burned yet"

        # Epoch 3: two old members and the spare, t = 2 of 3. Installed on A by the
        # coordinator; on B by the test itself (anyone may submit a certified rotation; B's
        # relayer has no gas), with t of epoch 2's members over B's digest.
        members = sorted([honest[0].address, honest[1].address, spare.address])
        tls = s.cli_tls_args("bridge-operator")
        endpoint_args = [
            arg
            for i in range(3)
            for arg in (
                "--member-endpoint",
                f"{s.members[i][0]}=127.0.0.1:{s.ports[f'verifier-{i}']}",
            )
        ]
        code = cli_main(
            ["--coordinator", s.coordinator_target, *tls, "operator", "rotation", "propose",
             "--next-members", ",".join("0x" + m.hex() for m in members), "--threshold", "2",
             "--overlap", str(OVERLAP), *endpoint_args]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().out
        with s.channel("bridge-operator") as ch:
            r = operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
                operator_pb2.GetRotationRequest(next_epoch=3), timeout=10
            )
        digest_b = next(x.digest for x in r.ledgers if x.ledger_id == B)
        signers = sorted([honest[0], honest[1], spare], key=lambda k: k.address)
        rotation = CommitteeRotation(2, Committee(3, 2, tuple(members)), 0, OVERLAP)
        deploy.rotate_committee(
            b.w3, b.admin.private_key, b.endpoint, rotation,
            SignatureSet(2, tuple(k.sign_digest(digest_b) for k in signers)),
        )  # fmt: skip

        def expired() -> bool:
            return set(rotation_status(s, 3).values()) == {"old-epoch-expired"}

        eventually_sync(expired, OVERLAP + 40, "epoch 2 expired on both ledgers", interval=0.5)
        for ledger in (A, B):
            eventually_sync(lambda ledger=ledger: epochs_on(s, ledger) == [3], 20,
                            f"{ledger} accepts epoch 3 only", interval=0.5)  # fmt: skip
    finally:
        set_balance(s, B, b.relayer.address, 10**21)

    def committed() -> bool:
        return transfer(s, tid).state == S.TRANSFER_STATE_COMMITTED

    eventually_sync(committed, 60, "the transfer committed after re-certification", interval=0.5)
    assert b.endpoint.functions.outbound(raw_tid).call()[0] == 2  # burned
    kind2, cause2, after = decision_row(s, tid)
    assert (kind2, cause2) == (kind, cause), "the decision itself never changes"
    assert after[A] == before[A], "A applied its certificate; it is kept as it was"
    assert after[B]["epoch"] == 3 and after[B] != before[B]
    assert b.balance(DEMO_ISIN, holder.address) == 6
    assert a.balance(DEMO_ISIN, holder.address) == 4
    assert a.escrowed(DEMO_ISIN) == 0 and b.escrowed(DEMO_ISIN) == 0
    log = (s.workdir / "logs" / "coordinator.log").read_text()
    assert "decision re-certified under the ledger's current epoch" in log
