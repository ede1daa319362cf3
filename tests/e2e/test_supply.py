"""The supply-attestation feed end to end: two anvil ledgers and a Fabric ledger, the whole
bridge as processes, the depository verifying every record with the client library.

- the identity holds in every attestation while random transfers run in all six lanes;
- the stream resumes without gaps or duplicates after a disconnect and after kill -9 of
  the coordinator;
- an issue outside the register is caught on EVM and on Fabric, names its ledger, holds
  the security, and only an operator (after registering it) can release the hold;
- operator calls and verifier signatures refuse forged, stale and replayed input;
- forged, reordered and dropped records fail the depository's verification.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from bridge.cli.main import main as cli_main
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.issuance import HoldRelease, Registration, sign_instruction
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import Attestation, SignedRecord
from bridge.rpc.supply_convert import record_to_pb, registration_to_pb, release_to_pb
from bridge.supply_client import FeedVerifier, SupplyFeed, SupplyOperator, watch
from bridge.v1 import (
    supply_pb2,
    supply_pb2_grpc,
    transfer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from bridge.v1 import transfer_pb2 as S
from tests.e2e.conftest import latest_attestation
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.fabric, pytest.mark.supply]

A, B, F = "brokerage-a", "brokerage-b", "brokerage-f"
OTHER_ISIN = "KR5701ES0024"  # held by the out-of-band tests, so the others are not


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(
        Path(tmp_path_factory.mktemp("supply")),
        ledger_names=((A, 31001), (B, 31002)),
        fabric_ledger_names=(F,),
        isins=(DEMO_ISIN, OTHER_ISIN),
        block_time=0.5,
        transfer_ttl=60,
        supply_heartbeat=2.0,
    ) as s:
        yield s


@pytest.fixture
def supply_stub(system: LocalSystem) -> Iterator[supply_pb2_grpc.SupplyServiceStub]:
    with system.channel("supply-operator") as channel:
        yield supply_pb2_grpc.SupplyServiceStub(channel)


def feed_until(system: LocalSystem, start: int, end: int) -> list[Attestation]:
    """Every attestation with feed position in [start, end], read from one stream."""

    async def read() -> list[Attestation]:
        out: list[Attestation] = []
        feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
        try:
            async with asyncio.timeout(60):
                async for a in feed.stream("", start):
                    out.append(a)
                    if a.feed_sequence >= end:
                        break
        finally:
            await feed.close()
        return out

    return asyncio.run(read())


def feed_end(system: LocalSystem) -> int:
    async def get() -> int:
        feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
        try:
            return max(a.feed_sequence for a in await feed.latest())
        finally:
            await feed.close()

    return asyncio.run(get())


def submit(system: LocalSystem, isin: str, sender: str, recipient: str, n: int, src: str, dst: str):
    return system.submit(
        S.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()),
            security_id=isin,
            source_ledger=src,
            target_ledger=dst,
            sender=sender,
            recipient=recipient,
            amount=str(n),
        ),
        limit_s=30,
    )


def wait_terminal(system: LocalSystem, tids: list[str]) -> dict[str, int]:
    with system.channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)

        def states() -> dict[str, int] | None:
            got = {t: stub.GetTransfer(S.GetTransferRequest(transfer_id=t)).state for t in tids}
            terminal = (S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED)
            return got if all(s in terminal for s in got.values()) else None

        return eventually_sync(states, 180, "every transfer terminal", interval=0.5)


def quiescent_record(system: LocalSystem, isin: str) -> Attestation:
    """A record produced after everything settled: nothing in escrow or prepared, every
    registered issuance minted."""
    t0 = time.time()

    def probe() -> Attestation | None:
        a = latest_attestation(system, isin)
        r = a.signed.record
        settled = all(x.escrowed == 0 and x.prepared == 0 for x in r.readings)
        settled = settled and not r.ledger_discrepancies
        return a if settled and a.published_at > t0 else None

    return eventually_sync(probe, 30, f"a settled record of {isin}", interval=0.3)


# -- the identity under random concurrent transfers -------------------------------------------


def test_identity_holds_in_every_attestation_during_random_transfers(system: LocalSystem) -> None:
    rng = random.Random(20261121)
    ledgers = [A, B, F]
    holders = {name: [system.handle(name).make_holder(DEMO_ISIN, 60) for _ in range(3)]
               for name in ledgers}  # fmt: skip
    for name in ledgers:
        for other in ledgers:
            if other != name:
                for h in holders[name]:
                    system.handle(other).set_eligible(DEMO_ISIN, h.address)
    # Issuance is registered before it is minted, so records taken in between show it as
    # pending (registered, not yet issued). Start once a record shows it all issued.
    start = quiescent_record(system, DEMO_ISIN).feed_sequence
    outsider = DevAccount.generate()  # eligible nowhere: those transfers abort
    planned = []
    for _ in range(30):
        src, dst = rng.sample(ledgers, 2)
        sender = rng.choice(holders[src])
        recipient = outsider if rng.random() < 0.15 else rng.choice(holders[dst])
        planned.append((src, dst, sender, recipient, rng.randint(1, 12)))
    balances = {(n, h.address.lower()): 60 for n in ledgers for h in holders[n]}
    # Each sender spends at most 60: keep the plan within what it holds.
    spent: dict[tuple[str, str], int] = {}
    tids = []
    for src, dst, sender, recipient, n in planned:
        key = (src, sender.address.lower())
        if spent.get(key, 0) + n > 60:
            continue
        spent[key] = spent.get(key, 0) + n
        tids.append((submit(system, DEMO_ISIN, sender.address, recipient.address, n, src, dst),
                     src, dst, sender, recipient, n))  # fmt: skip
    outcomes = wait_terminal(system, [t[0] for t in tids])
    for tid, src, dst, sender, recipient, n in tids:
        if outcomes[tid] == S.TRANSFER_STATE_COMMITTED:
            balances[(src, sender.address.lower())] -= n
            key = (dst, recipient.address.lower())
            balances[key] = balances.get(key, 0) + n
    assert S.TRANSFER_STATE_ABORTED in outcomes.values(), "the plan includes refusals"
    assert S.TRANSFER_STATE_COMMITTED in outcomes.values()
    for (name, address), units in balances.items():
        assert system.handle(name).balance(DEMO_ISIN, address) == units, (name, address)

    final = quiescent_record(system, DEMO_ISIN)
    records = [
        a for a in feed_until(system, start, final.feed_sequence)
        if a.signed.record.security == DEMO_ISIN
    ]  # fmt: skip
    verifier = FeedVerifier(system.committee, from_genesis=False)
    in_transit_seen = 0
    for a in records:
        verdict = verifier.check(a)
        assert verdict.ok, verdict.failures
        r = a.signed.record
        assert r.discrepancy == 0 and not r.ledger_discrepancies, (r.sequence, r.readings)
        assert not a.held, a.hold_reason
        in_transit_seen += r.in_transit != 0
    assert len(records) >= 5, "records are produced as transfers move supply"
    assert in_transit_seen, "some records caught units in transit, and still balanced"
    seqs = [a.signed.record.sequence for a in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "contiguous, no gaps"
    last = final.signed.record
    for x in last.readings:
        h = system.handle(x.ledger)
        assert x.free == h.total_supply(DEMO_ISIN) - h.escrowed(DEMO_ISIN)
    assert last.in_transit == 0


# -- streaming ------------------------------------------------------------------------------


def test_stream_resumes_after_disconnect_and_coordinator_kill(system: LocalSystem) -> None:
    """Two subscriptions and a SIGKILL of the coordinator in between: the depository's
    watcher sees each record exactly once, contiguous, all verified from the first."""
    holder = system.handle(A).make_holder(DEMO_ISIN, 30)
    system.handle(B).set_eligible(DEMO_ISIN, holder.address)

    async def follow(count: int, start: int, verifier: FeedVerifier) -> list[int]:
        got: list[int] = []
        async with asyncio.timeout(120):
            async for v in watch(
                system.coordinator_target, verifier, start, identity=system.identity("depository")
            ):
                assert v.ok, v.failures
                got.append(v.attestation.feed_sequence)
                if len(got) == count:
                    return got
        return got

    verifier = FeedVerifier(system.committee)
    first = asyncio.run(follow(5, 1, verifier))  # then disconnect
    tid = submit(system, DEMO_ISIN, holder.address, holder.address, 7, A, B)
    system.processes["coordinator"].kill9()
    system.start_process("coordinator")
    wait_terminal(system, [tid])
    end = feed_end(system)
    second = asyncio.run(follow(end - first[-1], first[-1] + 1, verifier))
    seen = first + second
    assert seen == list(range(1, end + 1)), "no gap and no duplicate across reconnects"
    assert system.handle(B).balance(DEMO_ISIN, holder.address) == 7


def test_watch_reconnects_while_the_coordinator_is_down(system: LocalSystem) -> None:
    """One ``watch`` call spans a coordinator kill -9: it reconnects by itself."""
    start = feed_end(system) + 1

    async def run() -> list[int]:
        verifier = FeedVerifier(system.committee, from_genesis=False)
        got: list[int] = []
        async with asyncio.timeout(90):
            async for v in watch(
                system.coordinator_target,
                verifier,
                start,
                retry_delay=0.2,
                identity=system.identity("depository"),
            ):
                assert v.ok, v.failures
                got.append(v.attestation.feed_sequence)
                if len(got) == 1:
                    await asyncio.to_thread(system.processes["coordinator"].kill9)
                    await asyncio.to_thread(system.start_process, "coordinator")
                if len(got) == 4:
                    return got
        return got

    got = asyncio.run(run())  # heartbeats (2 s) keep records coming
    assert got == list(range(start, start + 4))


# -- out-of-band issuance ------------------------------------------------------------------


@pytest.mark.parametrize("ledger", [A, F])
def test_out_of_band_issue_is_detected_held_and_released_by_an_operator(
    system: LocalSystem, supply_stub: supply_pb2_grpc.SupplyServiceStub, ledger: str
) -> None:
    h = system.handle(ledger)
    holder = h.make_holder(OTHER_ISIN, 10)  # registered first: no discrepancy
    other = B if ledger != B else A
    system.handle(other).set_eligible(OTHER_ISIN, holder.address)
    h.issue(OTHER_ISIN, holder.address, 25, register=False)  # the issuer bypasses the register

    def held() -> Attestation | None:
        # Only the out-of-band 25: make_holder registers its 10 before they are minted, so
        # a record cut in between holds the security for -10 until the mint is final (a
        # real, transient discrepancy; this test failed on it once under load, stop 19).
        a = latest_attestation(system, OTHER_ISIN)
        found = dict(a.signed.record.ledger_discrepancies)
        return a if a.held and found == {ledger: 25} else None

    a = eventually_sync(held, 30, "the discrepancy in an attestation", interval=0.3)
    record = a.signed.record
    assert dict(record.ledger_discrepancies) == {ledger: 25}, "names the ledger and amount"
    assert record.discrepancy == 25
    assert any(f"{ledger}: +25 units appeared" in x for x in a.alerts)
    verdict = FeedVerifier(system.committee, from_genesis=False).check(a)
    assert verdict.ok and verdict.discrepancies, "the depository sees it from signed figures"

    with pytest.raises(grpc.RpcError) as refused:
        submit(system, OTHER_ISIN, holder.address, holder.address, 1, ledger, other)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "held" in refused.value.details() and ledger in refused.value.details()

    hold_seq = int(a.hold_reason.split("#")[1].split(":")[0])
    op = system.operator_client()
    try:
        with pytest.raises(grpc.RpcError) as early:
            op.release(OTHER_ISIN, hold_seq)
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "still shows a discrepancy" in early.value.details()
        op.adjust(OTHER_ISIN, ledger, 25, "registering the issuer's late filing")

        def balanced() -> Attestation | None:
            x = latest_attestation(system, OTHER_ISIN)
            return x if not x.signed.record.ledger_discrepancies else None

        eventually_sync(balanced, 30, "a balanced record after registering")
        assert latest_attestation(system, OTHER_ISIN).held, "balancing alone does not lift the hold"
        with pytest.raises(grpc.RpcError) as wrong:
            op.release(OTHER_ISIN, hold_seq + 1000)
        assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        op.release(OTHER_ISIN, hold_seq, "issuer's filing received")
        with pytest.raises(grpc.RpcError) as again:
            op.release(OTHER_ISIN, hold_seq)  # replayed: nothing is held any more
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        op.close()
    tid = submit(system, OTHER_ISIN, holder.address, holder.address, 5, ledger, other)
    assert wait_terminal(system, [tid])[tid] == S.TRANSFER_STATE_COMMITTED


# -- operator authorisation ------------------------------------------------------------------


def test_operator_calls_refuse_forged_stale_and_malformed_instructions(
    system: LocalSystem, supply_stub: supply_pb2_grpc.SupplyServiceStub
) -> None:
    op = system.operator_client()
    try:
        current = op.registration(DEMO_ISIN)
    finally:
        op.close()
    assert current is not None
    now = int(time.time() * 1000)
    nxt = Registration(DEMO_ISIN, current.version + 1, current.totals, now, "test")
    real = LocalKeySigner(system.supply_operator.private_key)
    stranger = LocalKeySigner(DevAccount.generate().private_key)

    def send(reg: Registration, signer: LocalKeySigner) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as exc:
            supply_stub.RegisterIssuance(
                registration_to_pb(reg, sign_instruction(signer, reg)), timeout=10
            )
        return exc.value

    e = send(nxt, stranger)
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "not a supply operator" in e.details()
    e = send(replace(nxt, version=current.version), real)  # replaces in-force version: stale
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "version" in e.details()
    e = send(replace(nxt, version=current.version + 2), real)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    e = send(replace(nxt, issued_at_ms=now - 3_600_000), real)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "expired" in e.details()
    e = send(Registration.of(DEMO_ISIN, current.version + 1, {A: 1, "nowhere": 1}, now), real)
    assert e.code() == grpc.StatusCode.NOT_FOUND
    left_out = tuple(x for x in current.totals if x[0] != F)
    e = send(replace(nxt, totals=left_out), real)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and F in e.details()
    # A signature over other bytes: the digest binds every field.
    forged = registration_to_pb(nxt, sign_instruction(real, replace(nxt, note="other")))
    with pytest.raises(grpc.RpcError) as exc:
        supply_stub.RegisterIssuance(forged, timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as exc:
        supply_stub.RegisterIssuance(supply_pb2.SignedRegistration(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        supply_stub.ReleaseHold(
            release_to_pb(
                HoldRelease(DEMO_ISIN, 1, now),
                sign_instruction(stranger, HoldRelease(DEMO_ISIN, 1, now)),
            ),
            timeout=10,
        )
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The exact registration in force, replayed, changes nothing and is not an error.
    op = SupplyOperator(
        system.coordinator_target, real, identity=system.identity("supply-operator")
    )
    try:
        assert op.registration(DEMO_ISIN) == current
    finally:
        op.close()
    for bad in ("", "NOT-AN-ISIN"):
        with pytest.raises(grpc.RpcError) as exc:
            supply_stub.GetRegistration(supply_pb2.GetRegistrationRequest(security_id=bad))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_supply_answers_precisely(
    system: LocalSystem, supply_stub: supply_pb2_grpc.SupplyServiceStub
) -> None:
    every = supply_stub.GetSupply(supply_pb2.GetSupplyRequest(), timeout=10).attestations
    assert {a.record.security_id for a in every} == {DEMO_ISIN, OTHER_ISIN}
    one = supply_stub.GetSupply(supply_pb2.GetSupplyRequest(security_id=DEMO_ISIN), timeout=10)
    assert [a.record.security_id for a in one.attestations] == [DEMO_ISIN]
    with pytest.raises(grpc.RpcError) as exc:
        supply_stub.GetSupply(supply_pb2.GetSupplyRequest(security_id="KR7005930003"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        supply_stub.GetSupply(supply_pb2.GetSupplyRequest(security_id="KR123"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- the committee refuses what the ledgers do not say ----------------------------------------


def test_verifier_refuses_forged_replayed_and_incomplete_records(system: LocalSystem) -> None:
    op = system.operator_client()
    try:
        reg = op.registration(DEMO_ISIN)
    finally:
        op.close()
    assert reg is not None
    real = LocalKeySigner(system.supply_operator.private_key)
    signed_reg = registration_to_pb(reg, sign_instruction(real, reg))
    with system.channel("coordinator", peer=system.member_role(0)) as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)

        def ask(forge, registration=signed_reg) -> grpc.RpcError | None:
            """Forge from the latest record; None when the Fabric ledger has moved past
            that record (a verifier can only read Fabric's current state): try again."""
            record = latest_attestation(system, DEMO_ISIN).signed.record
            with pytest.raises(grpc.RpcError) as exc:
                stub.SignSupply(
                    verifier_pb2.SignSupplyRequest(
                        record=record_to_pb(forge(record)), registration=registration
                    ),
                    timeout=20,
                )
            moved = "Fabric cannot read supply at a past height" in exc.value.details()
            return None if moved else exc.value

        def refused(forge, registration=signed_reg) -> grpc.RpcError:
            return eventually_sync(lambda: ask(forge, registration), 30, "a current record")

        def fresh(record):
            return replace(record, sequence=record.sequence + 1, previous_hash=record.digest,
                           produced_at_ms=int(time.time() * 1000))  # fmt: skip

        def inflated(record):
            return replace(
                fresh(record),
                readings=tuple(
                    replace(x, total_supply=x.total_supply + 1) if x.ledger == A else x
                    for x in record.readings
                ),
            )

        e = refused(inflated)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{A} at height" in e.details() and "reads differently" in e.details()
        e = refused(lambda r: replace(fresh(r), discrepancy=r.discrepancy + 5))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "do not follow" in e.details()
        e = refused(lambda r: replace(r, sequence=1, produced_at_ms=int(time.time() * 1000)))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, "history is not rewritten"
        assert "already signed sequence" in e.details()
        e = refused(lambda r: replace(fresh(r), readings=r.readings[:-1]))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "exactly the ledgers" in e.details()
        e = refused(
            lambda r: replace(
                fresh(r),
                readings=tuple(
                    replace(x, height=x.height + 1_000) if x.ledger == A else x for x in r.readings
                ),
            )
        )  # the member waits a moment for its node, then refuses
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not final here yet" in e.details()
        e = refused(lambda r: replace(fresh(r), produced_at_ms=r.produced_at_ms - 3_600_000))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "clock" in e.details()
        stranger = LocalKeySigner(DevAccount.generate().private_key)
        e = refused(fresh, registration_to_pb(reg, sign_instruction(stranger, reg)))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        e = refused(fresh, supply_pb2.SignedRegistration())
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- the depository's verification -------------------------------------------------------------


def test_depository_rejects_forged_reordered_and_dropped_records(system: LocalSystem) -> None:
    records = [
        a for a in feed_until(system, 1, feed_end(system))
        if a.signed.record.security == DEMO_ISIN
    ][:6]  # fmt: skip
    assert len(records) == 6
    committee = system.committee
    assert committee is not None

    def failures(items: list[Attestation]) -> list[str]:
        v = FeedVerifier(committee)
        return [f for a in items for f in v.check(a).failures]

    assert failures(records) == []
    r2 = records[2].signed
    forged_fig = replace(
        r2.record,
        readings=tuple(replace(x, total_supply=x.total_supply + 1, prepared=x.prepared)
                       for x in r2.record.readings[:1]) + r2.record.readings[1:],
    )  # fmt: skip
    forged = [*records[:2], replace(records[2], signed=SignedRecord(forged_fig, r2.signatures))]
    assert any("threshold" in f or "does not verify" in f for f in failures(forged))
    swapped = [records[0], records[2], records[1]]
    assert any("expected sequence" in f for f in failures(swapped))
    dropped = [records[0], records[1], records[3]]
    assert any("expected sequence 3" in f for f in failures(dropped))
    one_sig = replace(records[0], signed=SignedRecord(records[0].signed.record,
                                                     records[0].signed.signatures[:1]))  # fmt: skip
    assert any("threshold" in f for f in failures([one_sig]))


def test_cli_verifies_the_whole_feed(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    network = str(system.workdir / "network.toml")
    depository = system.certificate("depository")
    tls = ["--tls-cert", str(depository.cert_file), "--tls-key", str(depository.key_file),
           "--tls-ca", str(system.workdir / "pki" / "bridge-operator" / "ca.pem"),
           "--network", network]  # fmt: skip
    # Without a certificate the CLI refuses plaintext (usage error, nothing sent).
    assert cli_main(["--coordinator", system.coordinator_target, "supply", "get"]) == 2
    assert "refusing a plaintext channel" in capsys.readouterr().err
    code = cli_main(["--coordinator", system.coordinator_target, *tls, "supply", "verify",
                     "--network", network])  # fmt: skip
    out = capsys.readouterr().out
    # The out-of-band tests left signed discrepancies in the feed's history: exit 3, not 1.
    assert code in (0, 3), out
    assert "0 failed verification" in out
    code = cli_main(["--coordinator", system.coordinator_target, *tls, "supply", "get",
                     "--security", DEMO_ISIN, "--network", network])  # fmt: skip
    assert code == 0
    assert "VERIFIED" in capsys.readouterr().out
