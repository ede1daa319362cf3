"""Issue 9 items 4 and 5 on the real system (two anvil ledgers, 4 verifiers, relayers and the
coordinator as processes; services called directly over their channels):

- SignSupply with sequence 1,000,000,000 over a random previous hash, sent to every member,
  is refused with the precise reason and the depository's feed goes on, verified;
- a member that missed records (down while the others signed) catches up from the
  certified previous record the coordinator sends, so the feed survives the next outage;
- the depository's staleness alarm fires when the coordinator is stopped, when the
  committee cannot sign (the publisher stalls), and when a stream delivers nothing;
- a forged LOCKED event delivered to LedgerEventSink for a lock that does not exist is not
  adopted: no transfer row, no LOCK, the victim's balance unchanged; a real holder-direct
  lock is still adopted and completes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from bridge.cli.main import main as cli_main
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.issuance import sign_instruction
from bridge.domain.legs import EventPosition, LedgerEvent, Leg, LegState
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import Attestation
from bridge.ledgers.evm import deploy
from bridge.rpc.convert import event_to_pb
from bridge.rpc.supply_convert import record_to_pb, registration_to_pb
from bridge.supply_client import (
    FeedStale,
    FeedVerifier,
    Verdict,
    audit_feed,
    watch_feed,
)
from bridge.v1 import (
    events_pb2,
    events_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from tests.e2e.conftest import demo_terms, eligible_everywhere, latest_attestation
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.security, pytest.mark.supply]

A, B = "brokerage-a", "brokerage-b"
S = transfer_pb2
HEARTBEAT = 1.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(
        Path(tmp_path_factory.mktemp("security-feed")),
        ledger_names=((A, 31021), (B, 31022)),
        block_time=0.5,
        transfer_ttl=60,
        supply_heartbeat=HEARTBEAT,
    ) as s:
        yield s


@pytest.fixture(autouse=True)
def _processes_alive(system: LocalSystem) -> Iterator[None]:
    yield
    system.wait_processes_alive()


def records_after(system: LocalSystem, sequence: int, more: int, limit_s: float) -> Attestation:
    """Wait until the feed holds record ``sequence + more`` of DEMO_ISIN; return the latest."""

    def probe() -> Attestation | None:
        try:
            a = latest_attestation(system)
        except grpc.RpcError:
            return None
        return a if a.signed.record.sequence >= sequence + more else None

    return eventually_sync(probe, limit_s, f"record #{sequence + more}", interval=0.3)


def assert_feed_verifies_from(system: LocalSystem, start: Attestation) -> int:
    """The depository's check from ``start`` to the end of the feed; returns records checked."""
    assert system.committee is not None
    checked, problems = asyncio.run(
        audit_feed(
            system.coordinator_target,
            system.committee,
            start.feed_sequence,
            DEMO_ISIN,
            identity=system.identity("depository"),
        )
    )
    assert problems == []
    return checked


def sign_supply(
    system: LocalSystem, member: int, request: verifier_pb2.SignSupplyRequest
) -> grpc.RpcError:
    # As the coordinator: only its role may ask members to sign (mTLS); the member's own
    # sequencing rule is what is tested here.
    with system.channel("coordinator", peer=system.member_role(member)) as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.SignSupply(request, timeout=20)
    return exc.value


def signed_registration(system: LocalSystem):  # type: ignore[no-untyped-def]
    op = system.operator_client()
    try:
        reg = op.registration(DEMO_ISIN)
    finally:
        op.close()
    assert reg is not None
    key = LocalKeySigner(system.supply_operator.private_key)
    return registration_to_pb(reg, sign_instruction(key, reg))


# -- item 5: the feed cannot be stalled by a caller --------------------------------------------


def test_out_of_sequence_sign_supply_to_every_member_is_refused_and_the_feed_goes_on(
    system: LocalSystem,
) -> None:
    before = records_after(system, 0, 1, 60)
    registration = signed_registration(system)
    for member in range(len(system.verifier_keys)):
        # A current cut (the members re-read it), so only the sequencing rule can refuse it.
        current = latest_attestation(system).signed.record
        forged = replace(
            current,
            sequence=1_000_000_000,
            previous_hash=secrets.token_bytes(32),
            produced_at_ms=int(time.time() * 1000),
        )
        err = sign_supply(
            system,
            member,
            verifier_pb2.SignSupplyRequest(record=record_to_pb(forged), registration=registration),
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert f"{DEMO_ISIN}#1000000000: this member's last record of this security is #" in (
            err.details() or ""
        )
        assert "the next it signs is" in (err.details() or "")

        # The same jump "bridged" by a previous record the committee never signed. Built on
        # a fresh cut each try: the live feed may have attested higher heights meanwhile, and
        # then the height rule (checked first) would answer instead of the anchor rule.
        outsiders = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(3)]
        for _ in range(5):
            fresh = replace(
                latest_attestation(system).signed.record,
                sequence=1_000_000_000,
                produced_at_ms=int(time.time() * 1000),
            )
            fake_prev = replace(fresh, sequence=999_999_999)
            anchored = replace(fresh, previous_hash=fake_prev.digest)
            req = verifier_pb2.SignSupplyRequest(
                record=record_to_pb(anchored),
                registration=registration,
                previous=record_to_pb(fake_prev),
                previous_signatures=[s.sign_digest(fake_prev.digest) for s in outsiders],
            )
            err = sign_supply(system, member, req)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            if "already attested" not in (err.details() or ""):
                break
        assert err.details() == (
            f"anchor {DEMO_ISIN}#999999999: 0 valid member signatures, threshold {system.threshold}"
        )
    # The coordinator's real records are still signed by every member: two more records,
    # and the depository verifies the chain across the attack.
    after = records_after(system, latest_attestation(system).signed.record.sequence, 2, 60)
    assert after.signed.record.sequence >= before.signed.record.sequence + 2
    assert assert_feed_verifies_from(system, before) >= 3


def test_a_member_that_missed_records_catches_up_from_the_certified_previous_record(
    system: LocalSystem,
) -> None:
    """verifier-0 is down while the others sign; then verifier-1 goes down, so no record can
    be certified unless verifier-0 signs again: it must accept the coordinator's next record
    over the certified previous one it never saw."""
    start = records_after(system, 0, 1, 60)
    system.processes["verifier-0"].kill9()
    try:
        records_after(system, start.signed.record.sequence, 2, 60)
    finally:
        system.start_process("verifier-0")
    missed = latest_attestation(system).signed.record.sequence
    system.processes["verifier-1"].kill9()
    try:
        records_after(system, missed, 2, 60)
    finally:
        system.start_process("verifier-1")
    assert_feed_verifies_from(system, start)


# -- the depository's staleness alarm ----------------------------------------------------------


def test_alarm_fires_when_the_coordinator_stops_and_clears_when_it_is_back(
    system: LocalSystem,
) -> None:
    assert system.committee is not None
    max_age = 3.0
    start = records_after(system, 0, 1, 60).feed_sequence

    async def scenario() -> tuple[FeedStale, float, Verdict]:
        verifier = FeedVerifier(system.committee, from_genesis=False, max_age=max_age)  # type: ignore[arg-type]
        feed = watch_feed(
            system.coordinator_target,
            verifier,
            start,
            retry_delay=0.2,
            check_every=0.25,
            identity=system.identity("depository"),
        )
        first = await anext(feed)
        assert isinstance(first, Verdict) and first.ok
        system.processes["coordinator"].kill9()
        stopped = time.time()
        alarm: FeedStale | None = None
        async with asyncio.timeout(30):
            async for item in feed:
                if isinstance(item, FeedStale):
                    alarm = item
                    break
        assert alarm is not None
        raised_after = time.time() - stopped
        assert verifier.stale() != []
        system.start_process("coordinator")
        fresh: Verdict | None = None
        async with asyncio.timeout(60):
            async for item in feed:
                if isinstance(item, Verdict) and item.ok and verifier.stale() == []:
                    fresh = item
                    break
        await feed.aclose()
        assert fresh is not None
        return alarm, raised_after, fresh

    alarm, raised_after, fresh = asyncio.run(scenario())
    assert alarm.security == DEMO_ISIN
    assert alarm.age_s > max_age
    assert raised_after < max_age + HEARTBEAT + 5, "raised promptly once the age passed"
    assert fresh.attestation.signed.record.produced_at_ms / 1000 > time.time() - 30


def test_alarm_fires_when_a_stream_delivers_nothing(system: LocalSystem) -> None:
    assert system.committee is not None

    async def first_alarm() -> FeedStale:
        verifier = FeedVerifier(system.committee, max_age=2.0)  # type: ignore[arg-type]
        # A position the feed will not reach during the test: the stream stays silent.
        feed = watch_feed(
            system.coordinator_target,
            verifier,
            10**9,
            check_every=0.25,
            identity=system.identity("depository"),
        )
        try:
            async with asyncio.timeout(20):
                item = await anext(feed)
        finally:
            await feed.aclose()
        assert isinstance(item, FeedStale)
        return item

    alarm = asyncio.run(first_alarm())
    assert alarm.security == "" and alarm.last_sequence == 0 and alarm.age_s > 2.0
    assert alarm.describe().startswith("no supply record received for")


def test_cli_reports_a_stalled_publisher_with_exit_4(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two of four members down: no record can be certified, while the coordinator serves."""
    network = str(system.workdir / "network.toml")
    cli = ["--coordinator", system.coordinator_target, *system.cli_tls_args("depository"), "supply"]
    records_after(system, 0, 1, 60)
    assert cli_main([*cli, "get", "--security", DEMO_ISIN, "--network", network,
                     "--max-age", "30"]) == 0  # fmt: skip
    capsys.readouterr()
    system.processes["verifier-2"].kill9()
    system.processes["verifier-3"].kill9()
    try:
        frozen = latest_attestation(system).signed.record.sequence
        time.sleep(4.0)
        assert latest_attestation(system).signed.record.sequence <= frozen + 1, (
            "the publisher is stalled"
        )
        code = cli_main([*cli, "get", "--security", DEMO_ISIN, "--network", network,
                         "--max-age", "2"])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 4, out
        assert f"STALE: {DEMO_ISIN}: latest record #" in out
        code = cli_main([*cli, "watch", "--network", network, "--from",
                         str(latest_attestation(system).feed_sequence), "--max-age", "2",
                         "--fail-on-stale"])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 4, out
        assert "VERIFIED" in out and f"STALE: {DEMO_ISIN}: latest record #" in out
    finally:
        system.start_process("verifier-2")
        system.start_process("verifier-3")
    records_after(system, latest_attestation(system).signed.record.sequence, 1, 60)
    assert cli_main([*cli, "get", "--security", DEMO_ISIN, "--network", network,
                     "--max-age", "30"]) == 0  # fmt: skip


# -- item 4: events are checked before they are acted on ------------------------------------------


def _transfer(system: LocalSystem, tid: bytes) -> transfer_pb2.Transfer | None:
    with system.channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        try:
            return stub.GetTransfer(S.GetTransferRequest(transfer_id="0x" + tid.hex()), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None


def test_a_forged_locked_event_is_not_adopted_and_nothing_is_locked(system: LocalSystem) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    victim = a.make_holder(DEMO_ISIN, 50)
    thief = DevAccount.generate()
    eligible_everywhere(system, victim.address)
    eligible_everywhere(system, thief.address)
    escrow_before = a.escrowed(DEMO_ISIN)
    t = demo_terms(system, victim.address, thief.address, 50)
    height = a.w3.eth.block_number
    forged = LedgerEvent(
        A, EventPosition(height, 0), b"\0" * 32, "0x" + secrets.token_hex(32), t.transfer_id,
        Leg.OUTBOUND, LegState.LOCKED, 0, t.terms_hash, t,
    )  # fmt: skip
    request = events_pb2.DeliverEventsRequest(
        ledger_id=A, events=[event_to_pb(forged)], scanned_height=height
    )
    # A compromised relayer of A: its certificate admits A's events, and no more.
    with system.channel(f"relayer:{A}") as channel:
        sink = events_pb2_grpc.LedgerEventSinkStub(channel)
        assert sink.DeliverEvents(request, timeout=30).accepted == 0
        assert sink.DeliverEvents(request, timeout=30).accepted == 0, "replayed: same"
    time.sleep(5.0)  # a driver, had one started, would have locked within this
    assert _transfer(system, t.transfer_id) is None, "no transfer row"
    state, _, _, _ = a.endpoint.functions.outbound(t.transfer_id).call()
    assert state == 0, "no LOCK was ever submitted"
    assert a.balance(DEMO_ISIN, victim.address) == 50
    assert a.escrowed(DEMO_ISIN) == escrow_before
    assert b.balance(DEMO_ISIN, thief.address) == 0


def test_a_real_holder_direct_lock_is_adopted_and_completes(system: LocalSystem) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    h = a.make_holder(DEMO_ISIN, 9)
    eligible_everywhere(system, h.address)
    a.node.fund(h.address)
    t = demo_terms(system, h.address, h.address, 9)
    receipt = deploy.send_tx(a.w3, h.private_key, a.endpoint.functions.lock(t.as_abi_tuple(), b""))

    def committed() -> transfer_pb2.Transfer | None:
        got = _transfer(system, t.transfer_id)
        return got if got is not None and got.state == S.TRANSFER_STATE_COMMITTED else None

    done = eventually_sync(committed, 90, "the on-chain lock adopted and committed")
    assert done.idempotency_key == f"onchain:0x{t.transfer_id.hex()}"
    assert done.transactions["lock"].lower().removeprefix("0x") == (
        receipt["transactionHash"].hex().lower().removeprefix("0x")
    ), "the lock is the holder's own transaction, not one the bridge sent"
    assert b.balance(DEMO_ISIN, h.address) == 9
    assert a.balance(DEMO_ISIN, h.address) == 0
