"""The coordinator's durable supply store: registrations (compare-and-set), the record feed,
confirmations, holds and their release."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.coordinator.db import open_database
from bridge.coordinator.supply_store import (
    Gate,
    Hold,
    SqliteSupplyStore,
    SqlSupplyStore,
    StoredRegistration,
)
from bridge.domain.errors import NotFound, PreconditionFailed
from bridge.domain.issuance import HoldRelease, Registration
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import (
    GENESIS_HASH,
    Assessment,
    Attestation,
    SignedRecord,
    SupplyReading,
    SupplyRecord,
    assess,
    make_record,
)

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"
OTHER_ISIN = "US0378331005"
T0 = 1_700_000_000_000
OPERATOR = b"\x0a" * 20
SIG = b"\x5a" * 65
CLEAN = Assessment((), (), {})


def stored(
    security: str, version: int, totals: dict[str, int], note: str = ""
) -> StoredRegistration:
    return StoredRegistration(
        Registration.of(security, version, totals, T0 + version, note), SIG, OPERATOR
    )


def reading(ledger: str, total: int, height: int = 7) -> SupplyReading:
    return SupplyReading(ledger, height, bytes([height % 256]) * 32, total, 0, 0, 0, 0)


def record(
    sequence: int,
    totals: dict[str, int],
    registered: dict[str, int] | None = None,
    *,
    security: str = ISIN,
    version: int = 1,
    previous: bytes = GENESIS_HASH,
) -> SupplyRecord:
    """A record whose ledgers read ``totals`` against ``registered`` (default: the same)."""
    return make_record(
        security,
        sequence,
        previous,
        1,
        T0 + sequence,
        [reading(name, units, height=sequence) for name, units in totals.items()],
        registered if registered is not None else totals,
        registration_version=version,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "coord" / "supply.sqlite"  # parent created by the store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, db_path: Path) -> Callable[[], SqlSupplyStore]:
    """Open a store on this test's database (the same one every call): the SQLite file,
    or a fresh schema of the module's PostgreSQL database (a real cluster; ADR 0013)."""
    if request.param == "sqlite":
        return lambda: SqliteSupplyStore(db_path)
    url = request.getfixturevalue("fresh_pg_url")
    return lambda: SqlSupplyStore(open_database(url))


@pytest.fixture
def store(make_store: Callable[[], SqlSupplyStore]) -> Iterator[SqlSupplyStore]:
    s = make_store()
    yield s
    s.close()


async def append_next(
    store: SqlSupplyStore,
    totals: dict[str, int],
    registered: dict[str, int] | None = None,
    *,
    security: str = ISIN,
    version: int = 1,
    now: float = 1_700_000_000.0,
    signatures: tuple[bytes, ...] = (),
) -> tuple[Attestation, Assessment]:
    """Append the security's next record (chained to the latest), assessed like the publisher.

    Without ``registered``, the record states the registration in force (and its version).
    """
    if registered is None:
        current = await store.registration(security)
        assert current is not None
        registered = dict(current.registration.totals)
        version = current.registration.version
    latest = await store.latest(security)
    r = record(
        latest.signed.record.sequence + 1 if latest else 1,
        totals,
        registered,
        security=security,
        version=version,
        previous=latest.signed.record.digest if latest else GENESIS_HASH,
    )
    assessment = assess(r, await store.confirmed(security))
    return await store.append(SignedRecord(r, signatures), assessment, now), assessment


# -- registrations ---------------------------------------------------------------------------


async def test_nothing_is_registered_initially(store: SqlSupplyStore) -> None:
    assert await store.registration(ISIN) is None
    assert await store.registered_securities() == []
    assert await store.confirmed(ISIN) == {}
    assert await store.latest(ISIN) is None
    assert await store.hold(ISIN) is None
    assert await store.feed(0, 10) == []


async def test_first_registration_must_be_version_1(store: SqlSupplyStore) -> None:
    with pytest.raises(
        PreconditionFailed,
        match=rf"^registration version 0 of {ISIN} is in force; the next must be version 1, not 2$",
    ):
        await store.register(stored(ISIN, 2, {"a": 1000}))
    assert await store.registration(ISIN) is None
    assert await store.confirmed(ISIN) == {}
    assert await store.register(stored(ISIN, 1, {"a": 1000})) is True
    got = await store.registration(ISIN)
    assert got == stored(ISIN, 1, {"a": 1000})
    assert got is not None
    assert (got.signature, got.operator) == (SIG, OPERATOR)


async def test_next_registration_must_be_exactly_one_more(store: SqlSupplyStore) -> None:
    assert await store.register(stored(ISIN, 1, {"a": 1000}))
    with pytest.raises(
        PreconditionFailed, match=r"version 1 of .* is in force; the next must be version 2, not 3"
    ):
        await store.register(stored(ISIN, 3, {"a": 1200}))
    # Another version 1 (a conflicting or replayed-but-altered registration) is refused too.
    with pytest.raises(PreconditionFailed, match="the next must be version 2, not 1"):
        await store.register(stored(ISIN, 1, {"a": 5}))
    assert (await store.registration(ISIN)) == stored(ISIN, 1, {"a": 1000})
    assert await store.register(stored(ISIN, 2, {"a": 1200}))
    assert await store.register(stored(ISIN, 3, {"a": 1300}))
    current = await store.registration(ISIN)
    assert current is not None
    assert current.registration.version == 3
    assert current.registration.totals == (("a", 1300),)
    # A stale registration cannot be replayed once superseded.
    with pytest.raises(PreconditionFailed, match="the next must be version 4, not 2"):
        await store.register(stored(ISIN, 2, {"a": 1200}))


async def test_an_exact_repeat_changes_nothing(store: SqlSupplyStore) -> None:
    first = stored(ISIN, 1, {"a": 1000, "b": 0})
    assert await store.register(first) is True
    assert await store.register(first) is False
    assert await store.registration(ISIN) == first
    assert await store.confirmed(ISIN) == {"a": 1000, "b": 0}
    second = stored(ISIN, 2, {"a": 1000, "b": 0, "c": 50})
    assert await store.register(second) is True
    assert await store.register(second) is False
    assert await store.registration(ISIN) == second
    assert await store.confirmed(ISIN) == {"a": 1000, "b": 0, "c": 0}
    # The same version with another signature is the same instruction (same digest).
    assert (
        await store.register(StoredRegistration(second.registration, b"\x01" * 65, b"\x02" * 20))
        is False
    )
    current = await store.registration(ISIN)
    assert current is not None
    assert current.signature == SIG


async def test_first_registration_confirms_its_totals(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"b": 250, "a": 750}))
    assert await store.confirmed(ISIN) == {"a": 750, "b": 250}
    assert await store.registered_securities() == [ISIN]


async def test_a_later_added_ledger_starts_confirmed_at_zero(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 1000}))
    await store.register(stored(ISIN, 2, {"a": 1100, "z": 40}))
    # a keeps what a record last confirmed (the new 1100 is an issuance still to come);
    # z's 40 units are an issuance still to come as well.
    assert await store.confirmed(ISIN) == {"a": 1000, "z": 0}


async def test_securities_register_independently(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 1}))
    await store.register(stored(ISIN, 2, {"a": 2}))
    assert await store.register(stored(OTHER_ISIN, 1, {"b": 7}))
    assert sorted(await store.registered_securities()) == sorted([ISIN, OTHER_ISIN])
    assert await store.confirmed(OTHER_ISIN) == {"b": 7}
    other = await store.registration(OTHER_ISIN)
    assert other is not None
    assert other.registration.version == 1


# -- records ---------------------------------------------------------------------------------


async def test_append_enforces_the_next_sequence(store: SqlSupplyStore) -> None:
    with pytest.raises(PreconditionFailed, match=rf"^record {ISIN}#2 does not follow #0$"):
        await store.append(SignedRecord(record(2, {"a": 1}), ()), CLEAN, 1.0)
    first = await store.append(SignedRecord(record(1, {"a": 1}), ()), CLEAN, 1.0)
    assert first.feed_sequence == 1
    with pytest.raises(PreconditionFailed, match=rf"^record {ISIN}#1 does not follow #1$"):
        await store.append(SignedRecord(record(1, {"a": 1}), ()), CLEAN, 2.0)
    with pytest.raises(PreconditionFailed, match=rf"^record {ISIN}#3 does not follow #1$"):
        await store.append(SignedRecord(record(3, {"a": 1}), ()), CLEAN, 2.0)
    second = await store.append(SignedRecord(record(2, {"a": 1}), ()), CLEAN, 2.0)
    assert second.feed_sequence == 2
    assert [a.signed.record.sequence for a in await store.security_feed(ISIN, 0, 10)] == [1, 2]


async def test_append_returns_and_stores_the_attestation(store: SqlSupplyStore) -> None:
    signers = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(3)]
    await store.register(stored(ISIN, 1, {"a": 1000, "b": 0}))
    r = record(1, {"a": 1000, "b": 0})
    signed = SignedRecord(r, tuple(s.sign_digest(r.digest) for s in signers))
    notes = Assessment((), ("a: something to note",), {"a": 1000, "b": 0})
    a = await store.append(signed, notes, 1_700_000_123.5)
    assert a == Attestation(1, signed, ("a: something to note",), False, "", 1_700_000_123.5)
    latest = await store.latest(ISIN)
    assert latest == a
    assert latest is not None
    assert latest.signed.record.digest == r.digest
    assert latest.signed.signatures == signed.signatures


async def test_append_applies_confirmations(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 1000}))
    await store.register(stored(ISIN, 2, {"a": 1100, "b": 50}))
    registered = {"a": 1100, "b": 50}
    _, pending = await append_next(store, {"a": 1060, "b": 0}, registered, version=2)
    assert pending.hold_reasons == ()
    assert len(pending.notes) == 2
    assert await store.confirmed(ISIN) == {"a": 1000, "b": 0}
    attn, half = await append_next(store, {"a": 1100, "b": 20}, registered, version=2)
    assert attn.held is False
    assert half.notes == ("b: registered issuance pending, 30 units still to issue (height 2)",)
    assert await store.confirmed(ISIN) == {"a": 1100, "b": 0}
    await append_next(store, {"a": 1100, "b": 50}, registered, version=2)
    assert await store.confirmed(ISIN) == {"a": 1100, "b": 50}


async def test_a_hold_reason_raises_a_hold_that_later_records_carry(
    store: SqlSupplyStore,
) -> None:
    await store.register(stored(ISIN, 1, {"a": 1000}))
    clean, _ = await append_next(store, {"a": 1000}, {"a": 1000}, now=10.0)
    assert (clean.held, clean.hold_reason) == (False, "")

    minted, assessment = await append_next(store, {"a": 1005}, {"a": 1000}, now=20.0)
    reason = (
        "supply discrepancy on a: +5 units appeared outside the bridge"
        " (net issued 1005, registered 1000, height 2)"
    )
    assert assessment.hold_reasons == (reason,)
    assert minted.held is True
    assert minted.hold_reason == f"held since record #2: {reason}"
    assert minted.alerts == (reason,)
    assert await store.hold(ISIN) == Hold(ISIN, 2, reason, 20.0)

    # A later, different discrepancy does not move the hold; a clean record does not lift it.
    worse, _ = await append_next(store, {"a": 1009}, {"a": 1000}, now=30.0)
    assert worse.held is True
    assert worse.hold_reason == f"held since record #2: {reason}"
    assert await store.hold(ISIN) == Hold(ISIN, 2, reason, 20.0)
    fixed, _ = await append_next(store, {"a": 1000}, {"a": 1000}, now=40.0)
    assert fixed.held is True
    assert fixed.alerts == ()
    assert fixed.hold_reason == f"held since record #2: {reason}"
    stored_latest = await store.latest(ISIN)
    assert stored_latest is not None
    assert (stored_latest.held, stored_latest.hold_reason) == (True, fixed.hold_reason)


@pytest.mark.batch  # issue 14: admission's supply gate read once
async def test_the_gate_is_the_registration_in_force_and_the_hold(store: SqlSupplyStore) -> None:
    """``gate``: what admission checks, read together (issue 14): the same registration and
    hold the two single reads answer, for the security asked only."""
    assert await store.gate(ISIN) == Gate(None, None)
    await store.register(stored(ISIN, 1, {"a": 1000}))
    await store.register(stored(ISIN, 2, {"a": 1000, "b": 0}))
    await store.register(stored(OTHER_ISIN, 1, {"a": 5}))
    assert await store.gate(ISIN) == Gate(await store.registration(ISIN), None)
    assert (await store.gate(ISIN)).registration.registration.version == 2  # type: ignore[union-attr]
    await append_next(store, {"a": 1005, "b": 0}, now=20.0)
    gate = await store.gate(ISIN)
    assert gate.hold is not None and gate.hold == await store.hold(ISIN)
    assert await store.gate(OTHER_ISIN) == Gate(await store.registration(OTHER_ISIN), None)


async def test_several_hold_reasons_are_joined(store: SqlSupplyStore) -> None:
    a = Assessment(("first reason", "second reason"), ("a note",), {})
    attn = await store.append(SignedRecord(record(1, {"a": 1}), ()), a, 5.0)
    assert attn.hold_reason == "held since record #1: first reason; second reason"
    assert attn.alerts == ("first reason", "second reason", "a note")
    assert await store.hold(ISIN) == Hold(ISIN, 1, "first reason; second reason", 5.0)


async def test_a_refused_append_changes_nothing(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 1000}))
    bad = Assessment(("boom",), (), {"a": 5})
    with pytest.raises(PreconditionFailed):
        await store.append(SignedRecord(record(2, {"a": 5}), ()), bad, 1.0)
    assert await store.hold(ISIN) is None
    assert await store.confirmed(ISIN) == {"a": 1000}
    assert await store.latest(ISIN) is None


# -- releasing a hold ------------------------------------------------------------------------


async def test_release_when_nothing_is_held_is_not_found(store: SqlSupplyStore) -> None:
    with pytest.raises(NotFound, match=rf"^{ISIN} is not held$"):
        await store.release(HoldRelease(ISIN, 1, T0), OPERATOR)
    await store.register(stored(ISIN, 1, {"a": 1000}))
    await append_next(store, {"a": 1000})
    with pytest.raises(NotFound, match="is not held"):
        await store.release(HoldRelease(ISIN, 1, T0), OPERATOR)


async def test_release_lifecycle(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 1000}))
    await append_next(store, {"a": 1000})  # 1
    await append_next(store, {"a": 990})  # 2: raises the hold
    await append_next(store, {"a": 980})  # 3: still off
    hold = await store.hold(ISIN)
    assert hold is not None
    assert hold.raised_by == 2

    with pytest.raises(
        PreconditionFailed, match=rf"^the hold on {ISIN} was raised by record #2, not #3$"
    ):
        await store.release(HoldRelease(ISIN, 3, T0), OPERATOR)
    with pytest.raises(
        PreconditionFailed,
        match=rf"the latest record of {ISIN} \(#3\) still shows a discrepancy: supply discrepancy on a: -20 units vanished",
    ):
        await store.release(HoldRelease(ISIN, 2, T0), OPERATOR)
    assert await store.hold(ISIN) == hold

    fixed, _ = await append_next(store, {"a": 1000})  # 4: clean again, still held
    assert fixed.held is True
    await store.release(HoldRelease(ISIN, 2, T0, "reversed"), OPERATOR)
    assert await store.hold(ISIN) is None
    after, _ = await append_next(store, {"a": 1000})  # 5
    assert (after.held, after.hold_reason) == (False, "")
    # The release cannot be replayed: nothing is held any more.
    with pytest.raises(NotFound, match="is not held"):
        await store.release(HoldRelease(ISIN, 2, T0, "reversed"), OPERATOR)
    # A new discrepancy raises a new hold, named by its own record.
    again, _ = await append_next(store, {"a": 1001})  # 6
    assert again.hold_reason.startswith("held since record #6: supply discrepancy on a: +1 units")
    with pytest.raises(PreconditionFailed, match="raised by record #6, not #2"):
        await store.release(HoldRelease(ISIN, 2, T0), OPERATOR)


async def test_release_is_per_security(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 10}))
    await store.register(stored(OTHER_ISIN, 1, {"a": 10}))
    await append_next(store, {"a": 11})
    await append_next(store, {"a": 11}, security=OTHER_ISIN)
    await append_next(store, {"a": 10}, security=OTHER_ISIN)
    await store.release(HoldRelease(OTHER_ISIN, 1, T0), OPERATOR)
    assert await store.hold(OTHER_ISIN) is None
    still = await store.hold(ISIN)
    assert still is not None
    assert still.raised_by == 1


# -- the feed --------------------------------------------------------------------------------


async def test_feed_and_security_feed_pagination(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 10}))
    await store.register(stored(OTHER_ISIN, 1, {"a": 20}))
    appended = []
    for security in (ISIN, OTHER_ISIN, ISIN, OTHER_ISIN, ISIN):
        totals = {"a": 10 if security == ISIN else 20}
        attn, _ = await append_next(store, totals, security=security, now=float(len(appended)))
        appended.append(attn)

    everything = await store.feed(0, 100)
    assert everything == appended
    assert [a.feed_sequence for a in everything] == [1, 2, 3, 4, 5]
    assert [(a.signed.record.security, a.signed.record.sequence) for a in everything] == [
        (ISIN, 1),
        (OTHER_ISIN, 1),
        (ISIN, 2),
        (OTHER_ISIN, 2),
        (ISIN, 3),
    ]
    assert [a.feed_sequence for a in await store.feed(2, 2)] == [3, 4]
    assert [a.feed_sequence for a in await store.feed(4, 100)] == [5]
    assert await store.feed(5, 100) == []
    assert await store.feed(0, 0) == []

    mine = await store.security_feed(ISIN, 0, 100)
    assert [a.signed.record.sequence for a in mine] == [1, 2, 3]
    assert [a.feed_sequence for a in mine] == [1, 3, 5]
    assert [a.signed.record.sequence for a in await store.security_feed(ISIN, 1, 1)] == [2]
    assert [a.signed.record.sequence for a in await store.security_feed(OTHER_ISIN, 1, 5)] == [2]
    assert await store.security_feed(OTHER_ISIN, 2, 5) == []
    assert await store.security_feed("DE000BAY0017", 0, 5) == []

    latest = await store.latest(ISIN)
    assert latest == appended[4]
    other_latest = await store.latest(OTHER_ISIN)
    assert other_latest == appended[3]


async def test_the_feed_chains_records(store: SqlSupplyStore) -> None:
    await store.register(stored(ISIN, 1, {"a": 10}))
    for _ in range(3):
        await append_next(store, {"a": 10})
    records = [a.signed.record for a in await store.security_feed(ISIN, 0, 10)]
    assert records[0].previous_hash == GENESIS_HASH
    assert records[1].previous_hash == records[0].digest
    assert records[2].previous_hash == records[1].digest


# -- durability ------------------------------------------------------------------------------


async def test_everything_survives_reopening(make_store: Callable[[], SqlSupplyStore]) -> None:
    first = make_store()
    await first.register(stored(ISIN, 1, {"a": 1000}))
    await first.register(stored(ISIN, 2, {"a": 1100, "b": 5}, note="issuance"))
    signers = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(2)]
    r = record(1, {"a": 1100, "b": 9}, {"a": 1100, "b": 5}, version=2)
    a1 = await first.append(
        SignedRecord(r, tuple(s.sign_digest(r.digest) for s in signers)),
        assess(r, await first.confirmed(ISIN)),
        100.0,
    )
    assert a1.held is True
    registration = await first.registration(ISIN)
    confirmed = await first.confirmed(ISIN)
    hold = await first.hold(ISIN)
    first.close()

    second = make_store()
    try:
        assert await second.registration(ISIN) == registration
        assert registration is not None
        assert registration.registration.note == "issuance"
        assert await second.confirmed(ISIN) == confirmed == {"a": 1100, "b": 0}
        assert await second.hold(ISIN) == hold == Hold(ISIN, 1, a1.alerts[0], 100.0)
        assert await second.latest(ISIN) == a1
        assert await second.feed(0, 10) == [a1]
        assert await second.registered_securities() == [ISIN]
        # The compare-and-set and the sequence rule continue where they were.
        assert await second.register(stored(ISIN, 2, {"a": 1100, "b": 5}, note="issuance")) is False
        with pytest.raises(PreconditionFailed, match="next must be version 3"):
            await second.register(stored(ISIN, 2, {"a": 1}))
        with pytest.raises(PreconditionFailed, match="does not follow #1"):
            await second.append(SignedRecord(record(1, {"a": 1}), ()), CLEAN, 1.0)
        a2, _ = await append_next(second, {"a": 1100, "b": 5}, {"a": 1100, "b": 5}, version=2)
        assert a2.feed_sequence == 2
        assert a2.signed.record.previous_hash == r.digest
        assert a2.hold_reason.startswith("held since record #1: supply discrepancy on b: +4 units")
        await second.release(HoldRelease(ISIN, 1, T0), OPERATOR)
    finally:
        second.close()

    third = make_store()
    try:
        assert await third.hold(ISIN) is None
        assert [a.feed_sequence for a in await third.feed(0, 10)] == [1, 2]
        assert await third.confirmed(ISIN) == {"a": 1100, "b": 5}
    finally:
        third.close()
