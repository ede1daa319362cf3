"""The depository's staleness alarm (issue 9 item 5): a feed that stops must not look healthy."""

from __future__ import annotations

import secrets

import pytest
from structlog.testing import capture_logs

from bridge.domain.committee import Committee
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import (
    GENESIS_HASH,
    Attestation,
    SignedRecord,
    SupplyReading,
    make_record,
)
from bridge.supply_client import FeedStale, FeedVerifier, staleness

pytestmark = [pytest.mark.unit, pytest.mark.security, pytest.mark.supply]

ISIN = "KR5701ES0016"
OTHER = "US0378331005"
T0 = 1_700_000_000.0


def signed(signers: list[LocalKeySigner], security: str, produced_at: float) -> SignedRecord:
    reading = SupplyReading("a", 5, b"\1" * 32, 100, 0, 0, 0, 0)
    record = make_record(
        security, 1, GENESIS_HASH, 1, int(produced_at * 1000), [reading], {"a": 100}, 1
    )
    return SignedRecord(record, tuple(s.sign_digest(record.digest) for s in signers))


@pytest.fixture
def members() -> tuple[Committee, list[LocalKeySigner]]:
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    return Committee(1, 3, tuple(s.address for s in signers)), signers


def test_no_alarm_without_max_age(members) -> None:
    committee, _ = members
    assert FeedVerifier(committee, started_at=T0).stale(now=T0 + 10**6) == []


def test_a_feed_with_no_record_at_all_alarms_after_max_age(members) -> None:
    committee, _ = members
    v = FeedVerifier(committee, max_age=30, started_at=T0)
    assert v.stale(now=T0 + 30) == []
    assert v.stale(now=T0 + 31) == [FeedStale("", 0, 31, 30)]
    assert v.stale(now=T0 + 31)[0].describe() == "no supply record received for 31s (max age 30s)"


def test_a_security_whose_latest_record_is_too_old_alarms(members) -> None:
    committee, signers = members
    v = FeedVerifier(committee, max_age=30, started_at=T0)

    assert v.check(Attestation(1, signed(signers, ISIN, T0), (), False, "", T0)).ok
    assert v.stale(now=T0 + 29) == []
    [alarm] = v.stale(now=T0 + 45)
    assert alarm == FeedStale(ISIN, 1, 45, 30)
    assert alarm.describe() == f"{ISIN}: latest record #1 is 45s old (max age 30s)"


def test_age_is_the_signed_production_time_not_the_delivery(members) -> None:
    """The coordinator re-sending (or re-publishing) an old record does not refresh it."""
    committee, signers = members

    v = FeedVerifier(committee, max_age=30, started_at=T0, from_genesis=False)
    old = signed(signers, ISIN, T0 - 100)
    v.check(Attestation(7, old, (), False, "", T0 + 99))  # published_at "just now"
    assert [a.security for a in v.stale(now=T0 + 100)] == [ISIN]


def test_an_unverified_record_does_not_count_as_fresh(members) -> None:
    committee, signers = members

    v = FeedVerifier(committee, max_age=30, started_at=T0)
    forged = signed(signers[:2], ISIN, T0 + 50)  # below threshold
    assert not v.check(Attestation(1, forged, (), False, "", T0 + 50)).ok
    assert v.stale(now=T0 + 60) == [FeedStale("", 0, 60, 30)]


def test_an_expected_security_never_seen_alarms(members) -> None:
    _, signers = members
    now = T0 + 40
    latest = {OTHER: signed(signers, OTHER, now - 1).record}
    assert staleness(latest, 30, now, T0, expected=(ISIN,)) == [FeedStale(ISIN, 0, 40, 30)]
    assert staleness(latest, 30, T0 + 20, T0, expected=(ISIN,)) == []


def test_alarms_are_raised_once_logged_and_cleared_when_fresh_again(members) -> None:
    committee, signers = members

    v = FeedVerifier(committee, max_age=30, started_at=T0)
    with capture_logs() as logs:
        assert [a.security for a in v.alarms(now=T0 + 31)] == [""]
        assert v.alarms(now=T0 + 40) == [], "raised once, not on every check"
        v.check(Attestation(1, signed(signers, ISIN, T0 + 41), (), False, "", T0 + 41))
        assert v.alarms(now=T0 + 42) == []
        assert [a.security for a in v.alarms(now=T0 + 80)] == [ISIN]
    events = [(e["log_level"], e["event"], e.get("security")) for e in logs]
    assert events == [
        ("error", "SUPPLY FEED STALE: out-of-band issuance is not being detected", "*"),
        ("warning", "supply feed fresh again", "*"),
        ("error", "SUPPLY FEED STALE: out-of-band issuance is not being detected", ISIN),
    ]
