"""The coordinator's level-triggered step function, checked over every input combination."""

from __future__ import annotations

import itertools

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.legs import INBOUND_STATES, OUTBOUND_STATES, Action, LegState
from bridge.domain.transfer import NextStep, StepKind, TransferState, next_step

pytestmark = pytest.mark.unit

S = LegState
SOURCES = [S.NONE, S.LOCKED, S.BURNED, S.RELEASED]
TARGETS = [S.NONE, S.PREPARED, S.REJECTED, S.EXPIRED, S.MINTED, S.ABORTED]
DECISIONS = [None, ClaimKind.COMMIT, ClaimKind.ABORT]
ALL = list(itertools.product(DECISIONS, SOURCES, TARGETS))
UNDECIDED = [c for c in ALL if c[0] is None]
COMMITS = [c for c in ALL if c[0] is ClaimKind.COMMIT]
ABORTS = [c for c in ALL if c[0] is ClaimKind.ABORT]
DECIDED = COMMITS + ABORTS


def _id(case: tuple[ClaimKind | None, LegState, LegState]) -> str:
    d, s, t = case
    return f"{d.name if d else 'none'}-{s.name}-{t.name}"


def test_the_grid_covers_every_leg_state() -> None:
    assert tuple(SOURCES) == OUTBOUND_STATES
    assert tuple(TARGETS) == INBOUND_STATES
    assert len(ALL) == 72


def _actions(step: NextStep) -> set[Action]:
    return {a for a in (step.source_action, step.target_action) if a is not None}


@pytest.mark.parametrize("case", ABORTS, ids=_id)
def test_abort_decision_never_commits(case: tuple[ClaimKind | None, LegState, LegState]) -> None:
    decision, source, target = case
    step = next_step(decision, source, target)
    assert Action.COMMIT not in _actions(step)
    assert step.claim is not ClaimKind.COMMIT
    assert step.state in (TransferState.ABORTING, TransferState.ABORTED)


@pytest.mark.parametrize("case", COMMITS, ids=_id)
def test_commit_decision_never_aborts(case: tuple[ClaimKind | None, LegState, LegState]) -> None:
    decision, source, target = case
    step = next_step(decision, source, target)
    assert Action.ABORT not in _actions(step)
    assert step.claim is not ClaimKind.ABORT
    assert step.state in (TransferState.COMMITTING, TransferState.COMMITTED)


@pytest.mark.parametrize("case", ALL, ids=_id)
def test_done_exactly_when_both_legs_finished(
    case: tuple[ClaimKind | None, LegState, LegState],
) -> None:
    decision, source, target = case
    step = next_step(decision, source, target)
    committed = decision is ClaimKind.COMMIT and source is S.BURNED and target is S.MINTED
    aborted = decision is ClaimKind.ABORT and source in (S.NONE, S.RELEASED) and target is S.ABORTED
    assert (step.step is StepKind.DONE) == (committed or aborted)
    assert step.state.terminal == (committed or aborted)
    if committed:
        assert step.state is TransferState.COMMITTED
    if aborted:
        assert step.state is TransferState.ABORTED
    if step.step is StepKind.DONE:
        assert _actions(step) == set()
        assert step.claim is None


@pytest.mark.parametrize("case", DECIDED, ids=_id)
def test_decided_transfer_applies_to_exactly_the_unfinished_legs(
    case: tuple[ClaimKind | None, LegState, LegState],
) -> None:
    decision, source, target = case
    step = next_step(decision, source, target)
    if step.step is StepKind.DONE:
        assert _actions(step) == set()
        return
    assert step.step is StepKind.APPLY
    assert step.claim is None
    if decision is ClaimKind.COMMIT:
        assert step.source_action == (None if source is S.BURNED else Action.COMMIT)
        assert step.target_action == (None if target is S.MINTED else Action.COMMIT)
    else:
        src_done = source in (S.NONE, S.RELEASED)
        assert step.source_action == (None if src_done else Action.ABORT)
        assert step.target_action == (None if target is S.ABORTED else Action.ABORT)


@pytest.mark.parametrize("case", UNDECIDED, ids=_id)
def test_without_decision_never_applies_or_finishes(
    case: tuple[ClaimKind | None, LegState, LegState],
) -> None:
    decision, source, target = case
    step = next_step(decision, source, target)
    assert step.step not in (StepKind.APPLY, StepKind.DONE)
    assert Action.COMMIT not in _actions(step)
    assert Action.ABORT not in _actions(step)
    assert not step.state.terminal
    assert step.claim is not ClaimKind.LOCKED


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_no_decision_source_none_locks(target: LegState) -> None:
    assert next_step(None, S.NONE, target) == NextStep(
        TransferState.SUBMITTED, StepKind.LOCK, source_action=Action.LOCK
    )


def test_no_decision_locked_and_target_none_prepares() -> None:
    assert next_step(None, S.LOCKED, S.NONE) == NextStep(
        TransferState.SOURCE_LOCKED, StepKind.PREPARE, target_action=Action.PREPARE
    )


def test_no_decision_locked_and_prepared_certifies_commit() -> None:
    assert next_step(None, S.LOCKED, S.PREPARED) == NextStep(
        TransferState.TARGET_PREPARED, StepKind.CERTIFY, claim=ClaimKind.COMMIT
    )


def test_no_decision_locked_and_minted_certifies_commit() -> None:
    step = next_step(None, S.LOCKED, S.MINTED)
    assert (step.step, step.claim) == (StepKind.CERTIFY, ClaimKind.COMMIT)


@pytest.mark.parametrize("target", [S.REJECTED, S.EXPIRED, S.ABORTED], ids=lambda t: t.name)
def test_no_decision_locked_and_target_refused_certifies_abort(target: LegState) -> None:
    assert next_step(None, S.LOCKED, target) == NextStep(
        TransferState.SOURCE_LOCKED, StepKind.CERTIFY, claim=ClaimKind.ABORT
    )


@pytest.mark.parametrize("target", [S.NONE, S.PREPARED, S.MINTED], ids=lambda t: t.name)
def test_no_decision_source_burned_certifies_commit(target: LegState) -> None:
    assert next_step(None, S.BURNED, target) == NextStep(
        TransferState.COMMITTING, StepKind.CERTIFY, claim=ClaimKind.COMMIT
    )


@pytest.mark.parametrize("target", [S.NONE, S.REJECTED, S.EXPIRED, S.ABORTED])
def test_no_decision_source_released_certifies_abort(target: LegState) -> None:
    step = next_step(None, S.RELEASED, target)
    assert (step.step, step.claim) == (StepKind.CERTIFY, ClaimKind.ABORT)


def test_commit_decision_concrete_steps() -> None:
    assert next_step(ClaimKind.COMMIT, S.LOCKED, S.PREPARED) == NextStep(
        TransferState.COMMITTING,
        StepKind.APPLY,
        source_action=Action.COMMIT,
        target_action=Action.COMMIT,
    )
    assert next_step(ClaimKind.COMMIT, S.BURNED, S.PREPARED) == NextStep(
        TransferState.COMMITTING, StepKind.APPLY, target_action=Action.COMMIT
    )
    assert next_step(ClaimKind.COMMIT, S.LOCKED, S.MINTED) == NextStep(
        TransferState.COMMITTING, StepKind.APPLY, source_action=Action.COMMIT
    )
    assert next_step(ClaimKind.COMMIT, S.BURNED, S.MINTED) == NextStep(
        TransferState.COMMITTED, StepKind.DONE
    )


def test_abort_decision_concrete_steps() -> None:
    # A NONE target still gets an ABORT: the contract records a tombstone.
    assert next_step(ClaimKind.ABORT, S.LOCKED, S.NONE) == NextStep(
        TransferState.ABORTING,
        StepKind.APPLY,
        source_action=Action.ABORT,
        target_action=Action.ABORT,
    )
    assert next_step(ClaimKind.ABORT, S.RELEASED, S.REJECTED) == NextStep(
        TransferState.ABORTING, StepKind.APPLY, target_action=Action.ABORT
    )
    assert next_step(ClaimKind.ABORT, S.LOCKED, S.ABORTED) == NextStep(
        TransferState.ABORTING, StepKind.APPLY, source_action=Action.ABORT
    )
    assert next_step(ClaimKind.ABORT, S.RELEASED, S.ABORTED) == NextStep(
        TransferState.ABORTED, StepKind.DONE
    )


def test_terminal_states() -> None:
    terminal = {s for s in TransferState if s.terminal}
    assert terminal == {TransferState.COMMITTED, TransferState.ABORTED, TransferState.FAILED}


def test_transfer_state_values_match_proto() -> None:
    assert [int(s) for s in TransferState] == list(range(1, 10))
    assert TransferState.SUBMITTED == 1
    assert TransferState.FAILED == 8
    assert TransferState.QUEUED == 9  # flow limits (ADR 0010)
