"""The verifier's durable supply log: it signs only records that extend the chain it signed,
and never a record that undoes one it signed."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.domain.committee import Committee
from bridge.domain.errors import PreconditionFailed
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import (
    GENESIS_HASH,
    SignedRecord,
    SupplyReading,
    SupplyRecord,
    make_record,
)
from tests.support import signatures_checked
from verifiers import supply_log as supply_log_module
from verifiers.supply_log import (
    PendingAnchor,
    SupplyAnchorInvalid,
    SupplyChainBroken,
    SupplyLog,
    SupplyOutOfSequence,
    SupplyRefused,
    SupplyRegression,
    verify_anchor,
)

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"
OTHER_ISIN = "US0378331005"
T0 = 1_700_000_000_000


def rec(
    sequence: int,
    heights: dict[str, int],
    version: int = 1,
    *,
    prev: bytes | SupplyRecord = GENESIS_HASH,
    security: str = ISIN,
    produced_at_ms: int = T0,
    supply: int = 1000,
    epoch: int = 1,
) -> SupplyRecord:
    readings = [
        SupplyReading(name, h, bytes([h % 256]) * 32, supply if name == "a" else 0, 0, 0, 0, 0)
        for name, h in heights.items()
    ]
    registered = {name: (supply if name == "a" else 0) for name in heights}
    return make_record(
        security,
        sequence,
        prev.digest if isinstance(prev, SupplyRecord) else prev,
        epoch,
        produced_at_ms,
        readings,
        registered,
        registration_version=version,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "supply.sqlite"  # parent created by SupplyLog


@pytest.fixture
def log(db_path: Path) -> Iterator[SupplyLog]:
    s = SupplyLog(db_path)
    yield s
    s.close()


@pytest.fixture
def committee() -> tuple[Committee, list[LocalKeySigner]]:
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    return Committee(1, 3, tuple(s.address for s in signers)), signers


def certify(record: SupplyRecord, signers: list[LocalKeySigner]) -> SignedRecord:
    return SignedRecord(record, tuple(s.sign_digest(record.digest) for s in signers))


def chain_to(log: SupplyLog, n: int, heights: dict[str, int] | None = None) -> SupplyRecord:
    """Sign records 1..n of ISIN in order; return the last."""
    last: SupplyRecord | None = None
    for seq in range(1, n + 1):
        last = rec(seq, heights or {"a": 10}, prev=last.digest if last else GENESIS_HASH)
        log.check_and_record(last)
    assert last is not None
    return last


def test_refusal_is_a_precondition_failure() -> None:
    for cls in (SupplyRegression, SupplyOutOfSequence, SupplyChainBroken, SupplyAnchorInvalid):
        assert issubclass(cls, SupplyRefused)
    assert issubclass(SupplyRefused, PreconditionFailed)


def test_fresh_log_knows_no_version(log: SupplyLog, db_path: Path) -> None:
    assert db_path.exists()
    assert log.registration_version(ISIN) == 0
    assert log.last(ISIN) is None


def test_advancing_records_are_accepted(log: SupplyLog) -> None:
    r1 = rec(1, {"a": 10, "b": 20}, version=1)
    log.check_and_record(r1)
    r2 = rec(2, {"a": 10, "b": 21}, version=1, prev=r1)
    log.check_and_record(r2)
    r3 = rec(3, {"a": 11, "b": 21}, version=2, prev=r2)
    log.check_and_record(r3)
    assert log.registration_version(ISIN) == 2
    assert log.last(ISIN) == (3, r3.digest)


def test_re_signing_the_identical_record_is_allowed(log: SupplyLog) -> None:
    tip = chain_to(log, 3)
    r = rec(4, {"a": 10, "b": 20}, version=3, prev=tip)
    log.check_and_record(r)
    log.check_and_record(r)
    log.check_and_record(rec(4, {"a": 10, "b": 20}, version=3, prev=tip))  # equal, rebuilt
    assert log.registration_version(ISIN) == 3
    # And what was recorded is that record: a lower height is still refused afterwards.
    with pytest.raises(SupplyRegression, match="height 19 is below height 20"):
        log.check_and_record(rec(5, {"a": 10, "b": 19}, version=3, prev=r))


def test_same_sequence_other_digest_allowed_when_nothing_goes_back(log: SupplyLog) -> None:
    tip = chain_to(log, 3)
    first = rec(4, {"a": 10, "b": 20}, version=2, produced_at_ms=T0, prev=tip)
    log.check_and_record(first)
    # The coordinator re-proposes its tip after a crash: a fresh timestamp, equal heights.
    retimed = rec(4, {"a": 10, "b": 20}, version=2, produced_at_ms=T0 + 5000, prev=tip)
    assert retimed.digest != first.digest
    log.check_and_record(retimed)
    # Or a later cut and a newer registration.
    later = rec(4, {"a": 12, "b": 25}, version=3, produced_at_ms=T0 + 9000, prev=tip)
    log.check_and_record(later)
    assert log.registration_version(ISIN) == 3
    # The chain goes on from the tip signed last.
    log.check_and_record(rec(5, {"a": 12, "b": 25}, version=3, prev=later))


def test_same_sequence_other_digest_refused_when_a_height_goes_back(log: SupplyLog) -> None:
    tip = chain_to(log, 3, {"a": 5, "b": 5})
    log.check_and_record(rec(4, {"a": 10, "b": 20}, prev=tip))
    with pytest.raises(
        SupplyRegression, match=rf"^{ISIN}#4: a height 9 is below height 10 already attested$"
    ):
        log.check_and_record(rec(4, {"a": 9, "b": 20}, produced_at_ms=T0 + 1, prev=tip))


def test_same_sequence_other_digest_refused_when_the_version_goes_back(log: SupplyLog) -> None:
    tip = chain_to(log, 3)
    log.check_and_record(rec(4, {"a": 10}, version=5, prev=tip))
    with pytest.raises(
        SupplyRegression,
        match=rf"^{ISIN}#4: registration version 4 is older than version 5 already attested$",
    ):
        log.check_and_record(rec(4, {"a": 10}, version=4, prev=tip))


@pytest.mark.parametrize("ledger", ["a", "b", "c"])
def test_a_lower_height_on_any_ledger_is_refused(log: SupplyLog, ledger: str) -> None:
    heights = {"a": 10, "b": 20, "c": 30}
    r1 = rec(1, heights)
    log.check_and_record(r1)
    lowered = {name: h + 5 for name, h in heights.items()}
    lowered[ledger] = heights[ledger] - 1
    with pytest.raises(
        SupplyRegression,
        match=rf"^{ISIN}#2: {ledger} height {heights[ledger] - 1} is below height {heights[ledger]}",
    ):
        log.check_and_record(rec(2, lowered, prev=r1))


def test_a_new_ledger_has_no_height_to_go_back_from(log: SupplyLog) -> None:
    r1 = rec(1, {"a": 10})
    log.check_and_record(r1)
    r2 = rec(2, {"a": 10, "z": 1}, prev=r1)
    log.check_and_record(r2)
    with pytest.raises(SupplyRegression, match="z height 0 is below height 1"):
        log.check_and_record(rec(3, {"a": 10, "z": 0}, prev=r2))


def test_an_older_registration_version_is_refused(log: SupplyLog) -> None:
    r1 = rec(1, {"a": 10}, version=3)
    log.check_and_record(r1)
    with pytest.raises(
        SupplyRegression, match=rf"^{ISIN}#2: registration version 2 is older than version 3"
    ):
        log.check_and_record(rec(2, {"a": 11}, version=2, prev=r1))
    assert log.registration_version(ISIN) == 3


def test_a_refusal_records_nothing(log: SupplyLog) -> None:
    r1 = rec(1, {"a": 10}, version=2)
    log.check_and_record(r1)
    with pytest.raises(SupplyRegression):
        log.check_and_record(rec(2, {"a": 9}, version=7, prev=r1))
    assert log.registration_version(ISIN) == 2
    assert log.last(ISIN) == (1, r1.digest)
    # The refused record's height 9 was not stored: 10 is still the floor.
    with pytest.raises(SupplyRegression, match="a height 9 is below height 10"):
        log.check_and_record(rec(2, {"a": 9}, version=2, prev=r1))
    log.check_and_record(rec(2, {"a": 10}, version=2, prev=r1))


def test_securities_are_independent(log: SupplyLog) -> None:
    tip = chain_to(log, 2, {"a": 100})
    o1 = rec(1, {"a": 1}, version=1, security=OTHER_ISIN)
    log.check_and_record(o1)
    o2 = rec(2, {"a": 2}, version=1, security=OTHER_ISIN, prev=o1)
    log.check_and_record(o2)
    with pytest.raises(SupplyRegression, match=f"^{OTHER_ISIN}#1: already signed sequence 2"):
        log.check_and_record(rec(1, {"a": 3}, security=OTHER_ISIN))
    # ISIN's chain is untouched by the other security's records.
    assert log.last(ISIN) == (2, tip.digest)
    log.check_and_record(rec(3, {"a": 100}, prev=tip))


def test_refusals_survive_reopening(db_path: Path) -> None:
    first = SupplyLog(db_path)
    tip = chain_to(first, 4, {"a": 10, "b": 20})
    r5 = rec(5, {"a": 10, "b": 20}, version=3, prev=tip)
    first.check_and_record(r5)
    first.close()

    again = SupplyLog(db_path)
    try:
        assert again.registration_version(ISIN) == 3
        with pytest.raises(SupplyRegression, match="already signed sequence 5"):
            again.check_and_record(rec(4, {"a": 10, "b": 20}, version=3, prev=tip))
        with pytest.raises(SupplyRegression, match="b height 19 is below height 20"):
            again.check_and_record(rec(6, {"a": 10, "b": 19}, version=3, prev=r5))
        with pytest.raises(
            SupplyRegression, match="registration version 2 is older than version 3"
        ):
            again.check_and_record(rec(6, {"a": 10, "b": 20}, version=2, prev=r5))
        with pytest.raises(SupplyOutOfSequence):
            again.check_and_record(rec(7, {"a": 10, "b": 20}, version=3, prev=r5))
        # The identical record is still allowed after a restart (re-proposed tip), and so
        # is another cut of the tip over the same previous record.
        again.check_and_record(rec(5, {"a": 10, "b": 20}, version=3, prev=tip))
        r5b = rec(5, {"a": 11, "b": 20}, version=3, prev=tip, produced_at_ms=T0 + 1)
        again.check_and_record(r5b)
        again.check_and_record(rec(6, {"a": 11, "b": 20}, version=4, prev=r5b))
    finally:
        again.close()

    third = SupplyLog(db_path)
    try:
        assert third.registration_version(ISIN) == 4
        with pytest.raises(SupplyRegression, match="already signed sequence 6"):
            third.check_and_record(rec(5, {"a": 10, "b": 20}, version=3, prev=tip))
    finally:
        third.close()


def test_registration_version_reports_the_highest_attested(log: SupplyLog) -> None:
    assert log.registration_version(ISIN) == 0
    r1 = rec(1, {"a": 1}, version=1)
    log.check_and_record(r1)
    assert log.registration_version(ISIN) == 1
    r2 = rec(2, {"a": 1}, version=1, prev=r1)
    log.check_and_record(r2)
    assert log.registration_version(ISIN) == 1
    r3 = rec(3, {"a": 1}, version=6, prev=r2)
    log.check_and_record(r3)
    assert log.registration_version(ISIN) == 6
    with pytest.raises(SupplyRefused):
        log.check_and_record(rec(4, {"a": 1}, version=5, prev=r3))
    assert log.registration_version(ISIN) == 6
    assert log.registration_version(OTHER_ISIN) == 0


def test_a_ledger_left_out_keeps_its_height_floor(log: SupplyLog) -> None:
    """A record that does not read ledger b must not erase what was attested for b."""
    r1 = rec(1, {"a": 10, "b": 10})
    log.check_and_record(r1)
    r2 = rec(2, {"a": 11}, version=2, prev=r1)
    log.check_and_record(r2)
    with pytest.raises(SupplyRegression, match="b height 5 is below height 10"):
        log.check_and_record(rec(3, {"a": 12, "b": 5}, version=3, prev=r2))
    log.check_and_record(rec(3, {"a": 12, "b": 10}, version=3, prev=r2))


# -- the sequencing rule (issue 9 item 5) ---------------------------------------------------


@pytest.mark.security
def test_a_jump_ahead_is_refused_and_the_real_next_record_still_signed(log: SupplyLog) -> None:
    """The attack: sequence 1,000,000,000 over a random previous_hash."""
    tip = chain_to(log, 3)
    forged = rec(1_000_000_000, {"a": 10}, prev=secrets.token_bytes(32))
    with pytest.raises(
        SupplyOutOfSequence,
        match=rf"^{ISIN}#1000000000: this member's last record of this security is #3; the"
        r" next it signs is #4",
    ):
        log.check_and_record(forged)
    # Even over the right digest, a gap is refused.
    with pytest.raises(SupplyOutOfSequence, match="last record of this security is #3"):
        log.check_and_record(rec(5, {"a": 10}, prev=tip))
    assert log.last(ISIN) == (3, tip.digest), "nothing was recorded"
    log.check_and_record(rec(4, {"a": 10}, prev=tip))


@pytest.mark.security
def test_a_next_sequence_with_the_wrong_previous_hash_is_refused(log: SupplyLog) -> None:
    tip = chain_to(log, 3)
    with pytest.raises(
        SupplyChainBroken,
        match=rf"^{ISIN}#4: previous_hash is not the digest of record #3 this member signed",
    ):
        log.check_and_record(rec(4, {"a": 10}, prev=secrets.token_bytes(32)))
    assert log.last(ISIN) == (3, tip.digest)
    log.check_and_record(rec(4, {"a": 10}, prev=tip))


@pytest.mark.security
def test_a_replay_of_an_old_sequence_is_refused(log: SupplyLog) -> None:
    r3 = rec(3, {"a": 10}, prev=chain_to(log, 2))
    log.check_and_record(r3)
    old = rec(2, {"a": 10, "b": 1}, prev=GENESIS_HASH)
    with pytest.raises(SupplyRegression, match=rf"^{ISIN}#2: already signed sequence 3"):
        log.check_and_record(old)
    with pytest.raises(SupplyRegression, match="already signed sequence 3"):
        log.check_and_record(rec(1, {"a": 10}))
    assert log.last(ISIN) == (3, r3.digest)


@pytest.mark.security
def test_the_tip_is_re_signed_only_over_the_same_previous_record(log: SupplyLog) -> None:
    tip = chain_to(log, 3)
    r4 = rec(4, {"a": 10}, prev=tip)
    log.check_and_record(r4)
    # Another cut of #4 over #3 (the coordinator crashed before appending): signed.
    r4b = rec(4, {"a": 11}, prev=tip, produced_at_ms=T0 + 7)
    log.check_and_record(r4b)
    # A #4 over anything else is a fork.
    with pytest.raises(
        SupplyChainBroken,
        match=rf"^{ISIN}#4: previous_hash is not that of the record #4 this member signed",
    ):
        log.check_and_record(rec(4, {"a": 12}, prev=secrets.token_bytes(32)))
    assert log.last(ISIN) == (4, r4b.digest)


@pytest.mark.security
def test_the_first_record_of_a_security(log: SupplyLog) -> None:
    with pytest.raises(
        SupplyOutOfSequence, match=rf"^{ISIN}#2: this member signed no record of this security"
    ):
        log.check_and_record(rec(2, {"a": 10}, prev=secrets.token_bytes(32)))
    with pytest.raises(
        SupplyChainBroken, match=rf"^{ISIN}#1: the first record must chain to GENESIS_HASH$"
    ):
        log.check_and_record(rec(1, {"a": 10}, prev=secrets.token_bytes(32)))
    assert log.last(ISIN) is None
    r1 = rec(1, {"a": 10})
    log.check_and_record(r1)
    assert log.last(ISIN) == (1, r1.digest)


@pytest.mark.security
def test_a_member_that_fell_behind_continues_after_a_certified_anchor(
    log: SupplyLog, committee: tuple[Committee, list[LocalKeySigner]]
) -> None:
    """Down while the others signed #4..#6: the coordinator's #7 comes with #6 certified."""
    com, signers = committee
    tip = chain_to(log, 3)
    r4 = rec(4, {"a": 11}, prev=tip)
    r5 = rec(5, {"a": 12}, prev=r4)
    r6 = rec(6, {"a": 13}, prev=r5)
    anchor = verify_anchor(certify(r6, signers[:3]), com)
    r7 = rec(7, {"a": 14}, prev=r6)
    with pytest.raises(SupplyOutOfSequence):
        log.check_and_record(r7)
    log.check_and_record(r7, anchor)
    assert log.last(ISIN) == (7, r7.digest)
    log.check_and_record(rec(8, {"a": 14}, prev=r7))


@pytest.mark.security
def test_a_certified_anchor_also_heals_a_diverged_tip(
    log: SupplyLog, committee: tuple[Committee, list[LocalKeySigner]]
) -> None:
    """This member signed one cut of #4, the committee certified another."""
    com, signers = committee
    tip = chain_to(log, 3)
    log.check_and_record(rec(4, {"a": 11}, prev=tip))
    certified = rec(4, {"a": 11}, prev=tip, produced_at_ms=T0 + 3)
    r5 = rec(5, {"a": 12}, prev=certified)
    with pytest.raises(SupplyChainBroken, match="no certified previous record was sent"):
        log.check_and_record(r5)
    log.check_and_record(r5, verify_anchor(certify(certified, signers[1:]), com))
    assert log.last(ISIN) == (5, r5.digest)


@pytest.mark.security
def test_a_new_member_or_one_restored_from_a_backup_is_bootstrapped(
    db_path: Path, tmp_path: Path, committee: tuple[Committee, list[LocalKeySigner]]
) -> None:
    com, signers = committee
    backup = tmp_path / "backup.sqlite"
    live = SupplyLog(db_path)
    tip = chain_to(live, 2)
    live.close()
    # An old backup of the database (taken at #2) ...
    src, dst = sqlite3.connect(db_path), sqlite3.connect(backup)
    src.backup(dst)
    src.close()
    dst.close()
    # ... while the chain went on to #9 elsewhere.
    r9 = rec(9, {"a": 20}, prev=secrets.token_bytes(32))
    r10 = rec(10, {"a": 21}, prev=r9)
    restored = SupplyLog(backup)
    fresh = SupplyLog(tmp_path / "new-member.sqlite")
    try:
        for member in (restored, fresh):
            with pytest.raises(SupplyOutOfSequence):
                member.check_and_record(r10)
            member.check_and_record(r10, verify_anchor(certify(r9, signers[:3]), com))
            assert member.last(ISIN) == (10, r10.digest)
        assert tip.sequence == 2
    finally:
        restored.close()
        fresh.close()


@pytest.mark.security
def test_an_anchor_must_be_certified_by_the_committee(
    committee: tuple[Committee, list[LocalKeySigner]],
) -> None:
    com, signers = committee
    r6 = rec(6, {"a": 13}, prev=secrets.token_bytes(32))
    outsiders = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(3)]
    with pytest.raises(
        SupplyAnchorInvalid, match=rf"^anchor {ISIN}#6: 2 valid member signatures, threshold 3$"
    ):
        verify_anchor(certify(r6, signers[:2]), com)
    with pytest.raises(SupplyAnchorInvalid, match="0 valid member signatures"):
        verify_anchor(certify(r6, outsiders), com)
    # The same member three times counts once.
    with pytest.raises(SupplyAnchorInvalid, match="1 valid member signatures"):
        verify_anchor(certify(r6, [signers[0]] * 3), com)
    # Signatures over another record do not certify this one.
    other = rec(6, {"a": 14}, prev=r6.previous_hash)
    with pytest.raises(SupplyAnchorInvalid, match="0 valid member signatures"):
        verify_anchor(SignedRecord(r6, certify(other, signers).signatures), com)
    with pytest.raises(SupplyAnchorInvalid, match="epoch 2, committee epoch is 1"):
        verify_anchor(certify(rec(6, {"a": 13}, epoch=2), signers), com)
    assert verify_anchor(certify(r6, signers), com) == r6


@pytest.mark.security
def test_an_anchor_that_is_not_the_records_predecessor_is_refused(
    log: SupplyLog, committee: tuple[Committee, list[LocalKeySigner]]
) -> None:
    com, signers = committee
    tip = chain_to(log, 3)
    r6 = rec(6, {"a": 13}, prev=secrets.token_bytes(32))
    anchor = verify_anchor(certify(r6, signers), com)
    with pytest.raises(SupplyAnchorInvalid, match=rf"^{ISIN}#9: the anchor is sequence 6, not 8$"):
        log.check_and_record(rec(9, {"a": 14}, prev=r6), anchor)
    with pytest.raises(SupplyAnchorInvalid, match=rf"^{ISIN}#7: previous_hash does not name"):
        log.check_and_record(rec(7, {"a": 14}, prev=secrets.token_bytes(32)), anchor)
    other = verify_anchor(certify(rec(6, {"a": 13}, security=OTHER_ISIN), signers), com)
    with pytest.raises(SupplyAnchorInvalid, match="a record of another security"):
        log.check_and_record(rec(7, {"a": 14}, prev=other), other)
    assert log.last(ISIN) == (3, tip.digest), "nothing was recorded"


@pytest.mark.security
def test_an_anchor_never_takes_a_member_back(
    log: SupplyLog, committee: tuple[Committee, list[LocalKeySigner]]
) -> None:
    """A certified old record does not let anyone rewind the chain or lower a height."""
    com, signers = committee
    r1 = rec(1, {"a": 10})
    log.check_and_record(r1)
    r2 = rec(2, {"a": 30}, prev=r1)
    log.check_and_record(r2)
    r3 = rec(3, {"a": 31}, prev=r2)
    log.check_and_record(r3)
    anchor = verify_anchor(certify(r1, signers), com)
    with pytest.raises(SupplyRegression, match="already signed sequence 3"):
        log.check_and_record(rec(2, {"a": 40}, prev=r1), anchor)
    # Ahead of the tip but with a lower height: still refused.
    r9 = rec(9, {"a": 5}, prev=secrets.token_bytes(32))
    with pytest.raises(SupplyRegression, match="a height 5 is below height 31"):
        log.check_and_record(rec(10, {"a": 5}, prev=r9), verify_anchor(certify(r9, signers), com))
    assert log.last(ISIN) == (3, r3.digest)


@pytest.mark.security
def test_a_log_written_before_the_rule_is_migrated(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.execute(
        "CREATE TABLE supply_signed (security TEXT PRIMARY KEY, sequence INTEGER NOT NULL,"
        " digest BLOB NOT NULL, heights TEXT NOT NULL, registration_version INTEGER NOT NULL,"
        " at REAL NOT NULL)"
    )
    old_tip = rec(5, {"a": 10}, prev=secrets.token_bytes(32))
    db.execute(
        "INSERT INTO supply_signed VALUES (?, 5, ?, '{\"a\": 10}', 1, 0)", (ISIN, old_tip.digest)
    )
    db.commit()
    db.close()
    log = SupplyLog(db_path)
    try:
        assert log.last(ISIN) == (5, old_tip.digest)
        # The previous hash of #5 was not remembered: another #5 needs an anchor ...
        with pytest.raises(SupplyOutOfSequence):
            log.check_and_record(rec(5, {"a": 11}, prev=old_tip.previous_hash))
        # ... while the next link is signed as usual.
        log.check_and_record(rec(6, {"a": 11}, prev=old_tip))
    finally:
        log.close()


@pytest.mark.security
def test_an_anchor_with_more_signatures_than_members_is_refused_before_any_recovery(
    committee: tuple[Committee, list[LocalKeySigner]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """60,000 copies of one signature used to cost 60,000 recoveries on the event loop."""
    com, signers = committee
    r6 = rec(6, {"a": 13}, prev=secrets.token_bytes(32))
    recovered = signatures_checked(monkeypatch, supply_log_module)
    flood = SignedRecord(r6, (signers[0].sign_digest(r6.digest),) * 60_000)
    with pytest.raises(
        SupplyAnchorInvalid, match=rf"^anchor {ISIN}#6: 60000 signatures, the committee has 4"
    ):
        verify_anchor(flood, com)
    assert recovered == []
    # Five signatures for four members: refused as well, still without a recovery.
    five = (*certify(r6, signers).signatures, signers[0].sign_digest(r6.digest))
    with pytest.raises(SupplyAnchorInvalid, match="5 signatures, the committee has 4"):
        verify_anchor(SignedRecord(r6, five), com)
    assert recovered == []


@pytest.mark.security
def test_anchor_recovery_drops_duplicates_and_stops_at_the_threshold(
    committee: tuple[Committee, list[LocalKeySigner]], monkeypatch: pytest.MonkeyPatch
) -> None:
    com, signers = committee
    r6 = rec(6, {"a": 13}, prev=secrets.token_bytes(32))
    recovered = signatures_checked(monkeypatch, supply_log_module)
    sigs = certify(r6, signers).signatures
    assert verify_anchor(SignedRecord(r6, sigs), com) == r6
    assert recovered == list(sigs[:3]), "t = 3 valid signatures are enough"
    recovered.clear()
    with pytest.raises(SupplyAnchorInvalid, match="2 valid member signatures, threshold 3"):
        verify_anchor(SignedRecord(r6, (sigs[0], sigs[0], sigs[1], sigs[1])), com)
    assert recovered == [sigs[0], sigs[1]], "a copy is never recovered twice"


@pytest.mark.security
def test_the_next_link_never_depends_on_the_anchor_sent_with_it(
    log: SupplyLog, committee: tuple[Committee, list[LocalKeySigner]]
) -> None:
    """An anchor that does not verify (an older epoch after a rotation, a forgery) does not
    block a record that simply extends this member's chain; it is not even checked."""
    com, signers = committee
    tip = chain_to(log, 3)
    stale = PendingAnchor(certify(tip, signers[:1]), com)  # 1 of t = 3: not certified
    with pytest.raises(SupplyAnchorInvalid):
        stale.verify()
    r4 = rec(4, {"a": 11}, prev=tip)
    log.check_and_record(r4, stale)
    assert log.last(ISIN) == (4, r4.digest)
    # The tip again, with an anchor of another epoch: also signed.
    other_epoch = PendingAnchor(certify(rec(3, {"a": 10}, epoch=2), signers), com)
    log.check_and_record(r4, other_epoch)
    # A record that needs the anchor is still refused when it does not verify, and
    # nothing is recorded.
    r5 = rec(5, {"a": 12}, prev=r4)
    r6 = rec(6, {"a": 13}, prev=r5)
    with pytest.raises(SupplyAnchorInvalid, match="1 valid member signatures, threshold 3"):
        log.check_and_record(r6, PendingAnchor(certify(r5, signers[:1]), com))
    assert log.last(ISIN) == (4, r4.digest)
    log.check_and_record(r6, PendingAnchor(certify(r5, signers[1:]), com))
    assert log.last(ISIN) == (6, r6.digest)
