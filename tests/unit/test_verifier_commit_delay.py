"""A committee member refuses COMMIT while a leg of a large transfer is inside its ledger's
delay (ADR 0010): the pure rule, then the SignClaim handler with fixed finalized legs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.legs import Leg, LegState, LegStatus
from tests.unit.test_verifier_claim_service import BROKER, Member
from verifiers.policy import ClaimRefused, CommitTooEarly, check_commit_delay

pytestmark = [pytest.mark.unit, pytest.mark.governance, pytest.mark.security]

TH = bytes([0x5A]) * 32


def leg(state: LegState, not_before: int = 0) -> LegStatus:
    return LegStatus(state, TH, 0, 10, not_before)


def test_commit_waits_for_the_later_of_both_legs_delays() -> None:
    check_commit_delay(leg(LegState.LOCKED), leg(LegState.PREPARED), now=1_000)
    with pytest.raises(CommitTooEarly, match="notBefore=1500, nowTs=1000"):
        check_commit_delay(leg(LegState.LOCKED, 1_500), leg(LegState.PREPARED, 1_200), 1_000)
    with pytest.raises(CommitTooEarly, match="notBefore=1200"):
        check_commit_delay(leg(LegState.LOCKED), leg(LegState.PREPARED, 1_200), 1_000)
    check_commit_delay(leg(LegState.LOCKED, 1_500), leg(LegState.PREPARED, 1_200), 1_500)
    assert issubclass(CommitTooEarly, ClaimRefused)


def test_a_member_signs_no_commit_inside_the_source_delay(tmp_path: Path) -> None:
    m = Member(tmp_path, frozenset({BROKER.address}))
    t = m.terms()
    held = int(time.time()) + 3_600
    m.a.legs[(t.transfer_id, Leg.OUTBOUND)] = LegStatus(LegState.LOCKED, t.terms_hash, 0, 9, held)
    m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    with pytest.raises(CommitTooEarly, match=f"notBefore={held}"):
        m.sign(ClaimKind.COMMIT, t)
    assert m.votes.decision(t.transfer_id) is None  # no vote recorded: it may sign later
    with pytest.raises(ClaimRefused, match="a prepared transfer commits"):
        m.sign(ClaimKind.ABORT, t)
    m.a.legs[(t.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, t.terms_hash, 0, 9, int(time.time()) - 1
    )
    out = m.sign(ClaimKind.COMMIT, t)
    assert [s.ledger_id for s in out.signatures] == ["a", "b"]
    assert m.votes.decision(t.transfer_id) is ClaimKind.COMMIT
