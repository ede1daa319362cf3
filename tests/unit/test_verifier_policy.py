"""When a committee member may sign: check_claim over every pair of finalized leg states."""

from __future__ import annotations

import itertools

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import BridgeError, PreconditionFailed
from bridge.domain.legs import INBOUND_STATES, OUTBOUND_STATES, LegState, LegStatus, RejectReason
from bridge.ledgers.kinds import holder_direct_locks
from verifiers.policy import ClaimRefused, check_claim

pytestmark = pytest.mark.unit

S = LegState
TH = bytes([0x5A]) * 32
OTHER = bytes([0xA5]) * 32
ZERO = b"\0" * 32


def leg(state: LegState, terms_hash: bytes = TH, height: int = 10, reason: int = 0) -> LegStatus:
    return LegStatus(state=state, terms_hash=terms_hash, reason=reason, height=height)


# The allowed (source, target) pairs per claim, written out by hand from the policy.
LOCKED_OK = {(S.LOCKED, t) for t in INBOUND_STATES}
COMMIT_OK = {
    (S.LOCKED, S.PREPARED),
    (S.LOCKED, S.MINTED),
    (S.BURNED, S.PREPARED),
    (S.BURNED, S.MINTED),
}
ABORT_OK = {
    (S.NONE, S.REJECTED),
    (S.NONE, S.EXPIRED),
    (S.NONE, S.ABORTED),
    (S.LOCKED, S.REJECTED),
    (S.LOCKED, S.EXPIRED),
    (S.LOCKED, S.ABORTED),
    (S.RELEASED, S.NONE),
    (S.RELEASED, S.REJECTED),
    (S.RELEASED, S.EXPIRED),
    (S.RELEASED, S.ABORTED),
}
ALLOWED = {ClaimKind.LOCKED: LOCKED_OK, ClaimKind.COMMIT: COMMIT_OK, ClaimKind.ABORT: ABORT_OK}
GRID = list(itertools.product(ClaimKind, OUTBOUND_STATES, INBOUND_STATES))


@pytest.mark.parametrize(
    ("kind", "src", "dst"), GRID, ids=[f"{k.name}-{s.name}-{t.name}" for k, s, t in GRID]
)
def test_claim_allowed_exactly_per_policy(kind: ClaimKind, src: LegState, dst: LegState) -> None:
    if (src, dst) in ALLOWED[kind]:
        check_claim(kind, TH, leg(src), leg(dst), instructed=True)
    else:
        with pytest.raises(ClaimRefused):
            check_claim(kind, TH, leg(src), leg(dst), instructed=True)


@pytest.mark.parametrize(("src", "dst"), sorted(COMMIT_OK))
def test_commit_and_abort_are_never_both_signable(src: LegState, dst: LegState) -> None:
    # The safety core: a pair where COMMIT may be signed never allows ABORT.
    with pytest.raises(ClaimRefused):
        check_claim(ClaimKind.ABORT, TH, leg(src), leg(dst), instructed=True)


def test_commit_and_abort_sets_are_disjoint() -> None:
    assert not (COMMIT_OK & ABORT_OK)


def test_locked_refusal_names_the_leg_state() -> None:
    with pytest.raises(ClaimRefused, match="source leg is NONE at height 7, not LOCKED"):
        check_claim(ClaimKind.LOCKED, TH, leg(S.NONE, height=7), leg(S.NONE), instructed=True)
    with pytest.raises(ClaimRefused, match="source leg is BURNED at height 8, not LOCKED"):
        check_claim(ClaimKind.LOCKED, TH, leg(S.BURNED, height=8), leg(S.MINTED), instructed=True)


def test_commit_refusal_names_the_leg_state() -> None:
    with pytest.raises(ClaimRefused, match="target leg is REJECTED at height 9, not PREPARED"):
        check_claim(ClaimKind.COMMIT, TH, leg(S.LOCKED), leg(S.REJECTED, height=9), instructed=True)
    with pytest.raises(ClaimRefused, match="source leg is RELEASED at height 3"):
        check_claim(
            ClaimKind.COMMIT, TH, leg(S.RELEASED, height=3), leg(S.PREPARED), instructed=True
        )


def test_abort_refusal_names_the_leg_states() -> None:
    with pytest.raises(ClaimRefused, match="cannot abort: source LOCKED, target PREPARED"):
        check_claim(ClaimKind.ABORT, TH, leg(S.LOCKED), leg(S.PREPARED), instructed=True)
    with pytest.raises(ClaimRefused, match="cannot abort: source BURNED, target ABORTED"):
        check_claim(ClaimKind.ABORT, TH, leg(S.BURNED), leg(S.ABORTED), instructed=True)
    with pytest.raises(ClaimRefused, match="target leg is NONE at height 4: nothing to abort on"):
        check_claim(ClaimKind.ABORT, TH, leg(S.LOCKED), leg(S.NONE, height=4), instructed=True)


@pytest.mark.parametrize(
    ("kind", "src", "dst"),
    [
        (ClaimKind.LOCKED, S.LOCKED, S.NONE),
        (ClaimKind.COMMIT, S.LOCKED, S.PREPARED),
        (ClaimKind.ABORT, S.LOCKED, S.REJECTED),
    ],
)
def test_source_with_other_terms_is_refused(kind: ClaimKind, src: LegState, dst: LegState) -> None:
    check_claim(kind, TH, leg(src), leg(dst), instructed=True)  # allowed with matching terms ...
    with pytest.raises(ClaimRefused, match="source leg holds different terms"):
        check_claim(kind, TH, leg(src, OTHER), leg(dst), instructed=True)  # ... refused with others


@pytest.mark.parametrize(
    ("kind", "src", "dst"),
    [
        (ClaimKind.LOCKED, S.LOCKED, S.PREPARED),
        (ClaimKind.COMMIT, S.LOCKED, S.PREPARED),
        (ClaimKind.ABORT, S.LOCKED, S.EXPIRED),
    ],
)
def test_target_with_other_terms_is_refused(kind: ClaimKind, src: LegState, dst: LegState) -> None:
    check_claim(kind, TH, leg(src), leg(dst), instructed=True)
    with pytest.raises(ClaimRefused, match="target leg holds different terms"):
        check_claim(kind, TH, leg(src), leg(dst, OTHER), instructed=True)


def test_none_leg_hash_is_ignored() -> None:
    # A leg in NONE holds no terms; whatever hash the reader reports is irrelevant.
    check_claim(ClaimKind.LOCKED, TH, leg(S.LOCKED), leg(S.NONE, OTHER), instructed=True)
    check_claim(ClaimKind.ABORT, TH, leg(S.NONE, OTHER), leg(S.REJECTED), instructed=True)


def test_locked_leg_with_zero_terms_hash_does_not_match_arbitrary_terms() -> None:
    with pytest.raises(ClaimRefused, match="different terms"):
        check_claim(ClaimKind.LOCKED, TH, leg(S.LOCKED, ZERO), leg(S.NONE), instructed=True)


def test_claim_refused_is_a_precondition_failure() -> None:
    assert issubclass(ClaimRefused, PreconditionFailed)
    assert issubclass(ClaimRefused, BridgeError)
    with pytest.raises(PreconditionFailed):
        check_claim(ClaimKind.COMMIT, TH, leg(S.NONE), leg(S.NONE), instructed=True)


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (0, "none"),
        (1, "unknown security"),
        (2, "recipient not eligible"),
        (3, "recipient frozen"),
        (4, "token paused"),
        (5, "invalid recipient"),
        (99, "reason code 99"),
    ],
)
def test_reject_reason_describe(reason: int, text: str) -> None:
    assert RejectReason.describe(reason) == text


# -- protocol v2: locks must be instructed ---------------------------------------------------

REGISTERED = b"\x0b" * 20
SENDER = b"\0" * 12 + b"\x51" * 20


@pytest.mark.security
def test_is_instructed_needs_a_registered_key_or_the_evm_sender() -> None:
    from verifiers.policy import is_instructed

    keys = frozenset({REGISTERED})
    assert is_instructed(keys, holder_direct_locks("fabric"), SENDER, b"\0" * 12 + REGISTERED)
    assert is_instructed(keys, holder_direct_locks("evm"), SENDER, b"\0" * 12 + REGISTERED)
    assert is_instructed(keys, holder_direct_locks("evm"), SENDER, SENDER)  # holder-direct
    assert not is_instructed(
        keys, holder_direct_locks("fabric"), SENDER, SENDER
    )  # no holder signature on Fabric
    assert not is_instructed(keys, holder_direct_locks("evm"), SENDER, b"\0" * 12 + b"\x0c" * 20)
    assert not is_instructed(
        frozenset(), holder_direct_locks("evm"), SENDER, b"\0" * 12 + REGISTERED
    )
    assert not is_instructed(
        keys, holder_direct_locks("evm"), SENDER, b"\x01" + b"\0" * 11 + REGISTERED
    )
    assert not is_instructed(keys | {bytes(20)}, holder_direct_locks("evm"), SENDER, bytes(32))


@pytest.mark.security
@pytest.mark.parametrize("dst", [S.NONE, S.REJECTED, S.EXPIRED, S.ABORTED])
def test_uninstructed_lock_gets_no_locked_or_commit_only_abort(dst: LegState) -> None:
    from verifiers.policy import UninstructedLock

    for kind in (ClaimKind.LOCKED, ClaimKind.COMMIT):
        with pytest.raises(UninstructedLock, match="no brokerage instructed it"):
            check_claim(kind, TH, leg(S.LOCKED), leg(dst), instructed=False)
    check_claim(ClaimKind.ABORT, TH, leg(S.LOCKED), leg(dst), instructed=False)


@pytest.mark.security
@pytest.mark.parametrize("dst", [S.PREPARED, S.MINTED])
def test_uninstructed_abort_never_against_a_prepared_target(dst: LegState) -> None:
    with pytest.raises(ClaimRefused, match="a prepared transfer commits"):
        check_claim(ClaimKind.ABORT, TH, leg(S.LOCKED), leg(dst), instructed=False)
    with pytest.raises(ClaimRefused, match="a prepared transfer commits"):
        check_claim(ClaimKind.ABORT, TH, leg(S.BURNED), leg(S.NONE), instructed=False)


@pytest.mark.security
def test_uninstructed_abort_needs_a_source_lock() -> None:
    with pytest.raises(ClaimRefused, match="source leg is NONE: nothing to abort"):
        check_claim(ClaimKind.ABORT, TH, leg(S.NONE), leg(S.NONE), instructed=False)


@pytest.mark.security
def test_instructed_lock_with_target_none_cannot_be_aborted() -> None:
    with pytest.raises(ClaimRefused, match="nothing to abort on"):
        check_claim(ClaimKind.ABORT, TH, leg(S.LOCKED), leg(S.NONE), instructed=True)


@pytest.mark.security
@pytest.mark.parametrize("dst", [S.PREPARED, S.MINTED])
@pytest.mark.parametrize("src", [S.LOCKED, S.BURNED])
def test_commit_needs_no_instruction_once_the_target_is_prepared(
    src: LegState, dst: LegState
) -> None:
    """A key removed while the transfer is PREPARED does not strand it: COMMIT is signed."""
    check_claim(ClaimKind.COMMIT, TH, leg(src), leg(dst), instructed=False)
    with pytest.raises(ClaimRefused, match="a prepared transfer commits"):
        check_claim(ClaimKind.ABORT, TH, leg(src), leg(dst), instructed=False)


@pytest.mark.security
def test_abort_towards_an_unknown_target_only_for_this_lock() -> None:
    from verifiers.policy import check_abort_unknown_target

    check_abort_unknown_target(TH, leg(S.LOCKED))
    check_abort_unknown_target(TH, leg(S.RELEASED))
    for state in (S.NONE, S.BURNED):
        with pytest.raises(ClaimRefused, match=f"source leg is {state.name} at height 10"):
            check_abort_unknown_target(TH, leg(state))
    with pytest.raises(ClaimRefused, match="source leg holds different terms"):
        check_abort_unknown_target(TH, leg(S.LOCKED, terms_hash=OTHER))
