"""The verifier's durable vote log: at most one decision per transfer, across restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed
from verifiers.votes import ConflictingVote, Vote, VoteLog, VotesRefused

pytestmark = pytest.mark.unit

TID = bytes([0x11]) * 32
TID2 = bytes([0x22]) * 32
TH = bytes([0x33]) * 32
TH2 = bytes([0x44]) * 32


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "votes.sqlite"  # parent created by VoteLog


@pytest.fixture
def log(db_path: Path) -> Iterator[VoteLog]:
    v = VoteLog(db_path)
    yield v
    v.close()


def test_no_decision_initially(log: VoteLog) -> None:
    assert log.decision(TID) is None


@pytest.mark.parametrize("kind", [ClaimKind.COMMIT, ClaimKind.ABORT])
def test_records_decision(log: VoteLog, kind: ClaimKind) -> None:
    log.record(TID, kind, TH)
    assert log.decision(TID) is kind
    assert log.decision(TID2) is None


def test_same_decision_is_idempotent(log: VoteLog) -> None:
    log.record(TID, ClaimKind.COMMIT, TH)
    log.record(TID, ClaimKind.COMMIT, TH)
    assert log.decision(TID) is ClaimKind.COMMIT


@pytest.mark.parametrize(
    ("first", "second"),
    [(ClaimKind.COMMIT, ClaimKind.ABORT), (ClaimKind.ABORT, ClaimKind.COMMIT)],
)
def test_conflicting_decision_is_refused_and_first_kept(
    log: VoteLog, first: ClaimKind, second: ClaimKind
) -> None:
    log.record(TID, first, TH)
    with pytest.raises(ConflictingVote, match=f"already signed {first.name} for transfer 0x11"):
        log.record(TID, second, TH)
    assert log.decision(TID) is first


def test_same_decision_other_terms_is_refused(log: VoteLog) -> None:
    log.record(TID, ClaimKind.ABORT, TH)
    with pytest.raises(ConflictingVote, match="already signed other terms for transfer 0x1111"):
        log.record(TID, ClaimKind.ABORT, TH2)
    assert log.decision(TID) is ClaimKind.ABORT


def test_decisions_are_per_transfer(log: VoteLog) -> None:
    log.record(TID, ClaimKind.COMMIT, TH)
    log.record(TID2, ClaimKind.ABORT, TH)
    assert log.decision(TID) is ClaimKind.COMMIT
    assert log.decision(TID2) is ClaimKind.ABORT


def test_locked_is_not_a_decision(log: VoteLog) -> None:
    with pytest.raises(ValueError, match="only COMMIT and ABORT are decisions"):
        log.record(TID, ClaimKind.LOCKED, TH)
    assert log.decision(TID) is None


def test_conflicting_vote_is_a_precondition_failure() -> None:
    assert issubclass(ConflictingVote, PreconditionFailed)


def test_log_usable_after_a_refused_record(log: VoteLog) -> None:
    # The refused transaction must be rolled back, not left open.
    log.record(TID, ClaimKind.COMMIT, TH)
    with pytest.raises(ConflictingVote):
        log.record(TID, ClaimKind.ABORT, TH)
    log.record(TID2, ClaimKind.ABORT, TH2)
    assert log.decision(TID2) is ClaimKind.ABORT


def test_survives_reopening(db_path: Path) -> None:
    first = VoteLog(db_path)
    first.record(TID, ClaimKind.COMMIT, TH)
    first.close()

    second = VoteLog(db_path)
    try:
        assert second.decision(TID) is ClaimKind.COMMIT
        with pytest.raises(ConflictingVote):
            second.record(TID, ClaimKind.ABORT, TH)
        with pytest.raises(ConflictingVote):
            second.record(TID, ClaimKind.COMMIT, TH2)
        second.record(TID, ClaimKind.COMMIT, TH)  # idempotent after restart
    finally:
        second.close()


# ---- batched certificates (ADR 0025): a batch's votes in one transaction, all or nothing
@pytest.mark.batch
@pytest.mark.security
def test_record_many_is_all_or_nothing_and_names_every_refusal(log: VoteLog) -> None:
    tid3, tid4 = bytes([0x55]) * 32, bytes([0x66]) * 32
    log.record(TID, ClaimKind.ABORT, TH)
    log.record(TID2, ClaimKind.COMMIT, TH)
    batch = [
        Vote(tid3, ClaimKind.COMMIT, TH),
        Vote(TID, ClaimKind.COMMIT, TH),  # ABORT recorded before
        Vote(TID2, ClaimKind.COMMIT, TH2),  # other terms
        Vote(tid4, ClaimKind.COMMIT, TH),
    ]
    with pytest.raises(VotesRefused) as info:
        log.record_many(batch)
    assert sorted(info.value.refused) == [1, 2]
    assert all(isinstance(e, ConflictingVote) for e in info.value.refused.values())
    assert log.decision(tid3) is None and log.decision(tid4) is None, "rolled back"
    log.record_many([batch[0], batch[3], Vote(TID2, ClaimKind.COMMIT, TH)])
    assert (log.decision(tid3), log.decision(tid4)) == (ClaimKind.COMMIT, ClaimKind.COMMIT)
    log.record_many([batch[0], batch[3]])  # idempotent replay
