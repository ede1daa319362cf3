"""Certified committee rotation through the adapter, for every ledger kind (ADR 0008/0009).

One scenario per kind, on the suite's shared endpoint: epoch e+1 is installed with a
certificate of epoch e through ``install_committee`` (refusals first: each with its precise
reason and nothing installed; then the install, then its replay as ``already_applied``);
``committees()`` shows both windows during the overlap; a claim of epoch e verifies during
the overlap and is refused ``WrongEpoch`` after it; a claim of epoch e+1 is refused
``EpochNotActive`` before the activation and verifies from it. The ledger's clock is its
transaction time (block time on EVM and CometBFT, the transaction timestamp on Fabric): the
harness's ``reach_time`` waits until a step is checked against a given time, and the steps
that must land before a time are sent with a margin on the later of the ledger's latest
time (a PoA chain may run ahead of this machine) and this machine's clock. Rotation is
irreversible, so the harness follows the new epoch at the end (later tests sign with it).

The windows are sized from the harness's ``step_seconds`` (how long one step takes on the
kind), not fixed: the activation leaves room for the refusals and the install, the overlap
for reaching the activation and one claim. Every check runs on every kind (the test fails,
rather than skips a check, if a phase took longer than its window allows).

A claim is checked with ``ABORT`` of an inbound leg that does not exist (the cheapest step
that verifies a certificate: it records a tombstone).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, CommitteeRotation, EpochWindow
from bridge.domain.errors import LedgerRejected
from bridge.domain.legs import Action, Leg, LegState, SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.adapter import LedgerAdapter
from tests.conformance.harness import KindHarness, Terms

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.governance]

MARGIN = 2
"""Seconds allowed between this machine's clock and the ledger's (BFT time lags a block)."""


def activation_delay(h: KindHarness) -> int:
    """Seconds from building the rotation to its activation: room for the refusals, the
    install and its reads (two steps' worth) and a second for the clocks' rounding to whole
    seconds, then the margin before the refused claim of the new epoch."""
    return MARGIN + 1 + math.ceil(2 * h.step_seconds)


def overlap(h: KindHarness) -> int:
    """Seconds the old epoch keeps verifying after the activation: reaching the activation
    (a second past it, plus the kind's block) and one step, then the margin."""
    return 2 * MARGIN + math.ceil(h.step_seconds)


@pytest.fixture
async def relayer(harness: KindHarness) -> AsyncIterator[LedgerAdapter]:
    adapter = harness.relayer()
    yield adapter
    await adapter.close()


def _domain(h: KindHarness, epoch: int) -> ClaimDomain:
    return ClaimDomain(h.ledger.word, h.bridge_word, epoch, h.network_word)


def _signed(digest: bytes, signers: Sequence[LocalKeySigner], epoch: int) -> SignatureSet:
    ordered = sorted(signers, key=lambda s: s.address)
    return SignatureSet(epoch, tuple(s.sign_digest(digest) for s in ordered))


async def _now(h: KindHarness) -> int:
    """The later of the ledger's latest time and this machine's clock."""
    return max(int(time.time()), await h.ledger_time())


async def _claim(
    h: KindHarness, relayer: LedgerAdapter, epoch: int, signers: Sequence[LocalKeySigner]
) -> ErrorReason | None:
    """ABORT a fresh inbound leg with a certificate of ``epoch`` by ``signers``: None when it
    verified (the leg is ABORTED), else the refusal's reason (the leg is still NONE)."""
    t = Terms(h).inbound(bytes(12) + secrets.token_bytes(20), 1)
    digest = claim_digest(_domain(h, epoch), Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash))
    try:
        out = await relayer.submit(Action.ABORT, t, _signed(digest, signers, epoch))
    except LedgerRejected as exc:
        assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.NONE
        return ErrorReason(exc.reason)
    await h.settled(out)
    assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.ABORTED
    return None


@pytest.mark.security
async def test_rotation_installs_once_and_both_epochs_verify_only_in_their_windows(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h = harness
    old_signers, old = list(h.signers), h.committee
    new_signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    new = Committee(old.epoch + 1, 3, tuple(s.address for s in new_signers))
    window = overlap(h)
    activation = await _now(h) + activation_delay(h)
    rotation = CommitteeRotation(old.epoch, new, activation, window)
    digest = rotation.digest(_domain(h, old.epoch))
    before = await relayer.committees()
    assert before[-1].committee == old

    # -- refusals: each typed, nothing installed
    forger = LocalKeySigner(secrets.token_bytes(32))
    refusals: list[tuple[SignatureSet, ErrorReason]] = [
        (_signed(digest, new_signers[:3], new.epoch), ErrorReason.WRONG_EPOCH),
        (_signed(digest, old_signers[:2], old.epoch), ErrorReason.TOO_FEW_SIGNATURES),
        (_signed(digest, [*old_signers[:2], forger], old.epoch), ErrorReason.NOT_COMMITTEE_MEMBER),
    ]
    for certificate, reason in refusals:
        with pytest.raises(LedgerRejected) as exc:
            await relayer.install_committee(rotation, certificate)
        assert exc.value.reason == reason, exc.value
        assert await relayer.committees() == before, f"{reason} changed the committees"

    # -- the install, and its replay
    certificate = _signed(digest, old_signers[:3], old.epoch)
    first = await relayer.install_committee(rotation, certificate)
    assert not first.already_applied and first.tx_id
    await h.settled(first)
    again = await relayer.install_committee(rotation, certificate)
    assert again.already_applied and again.tx_id == "", "idempotent: nothing sent"

    # -- both windows during the overlap
    windows = await relayer.committees()
    assert [w.committee for w in windows] == [old, new]
    previous, latest = windows
    assert latest == EpochWindow(new, activation, None)
    assert previous.active_until is not None
    assert activation + window <= previous.active_until <= activation + window + 120
    reader = h.reader()
    try:
        assert [w.committee for w in await reader.committees()] == [old, new]
    finally:
        await reader.close()

    # -- before the activation: the old epoch verifies, the new one is not active yet
    assert await _now(h) < activation - MARGIN, "the refusals and install took too long"
    assert await _claim(h, relayer, new.epoch, new_signers[:3]) is ErrorReason.EPOCH_NOT_ACTIVE
    assert await _claim(h, relayer, old.epoch, old_signers[:3]) is None

    # -- from the activation: both verify while the overlap lasts (the old epoch first: its
    # claim is the one that must land inside the overlap)
    await h.reach_time(activation + 1)
    assert await _now(h) < previous.active_until - MARGIN, "reaching the activation took too long"
    assert await _claim(h, relayer, old.epoch, old_signers[:3]) is None
    assert await _claim(h, relayer, new.epoch, new_signers[:3]) is None

    # -- after the overlap: only the new epoch verifies
    await h.reach_time(previous.active_until + 1)
    assert await _claim(h, relayer, old.epoch, old_signers[:3]) is ErrorReason.WRONG_EPOCH
    assert await _claim(h, relayer, new.epoch, new_signers[:3]) is None
    # The harness follows the endpoint: later tests certify with the new epoch.
    h.signers, h.committee = new_signers, new
