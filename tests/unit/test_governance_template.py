"""The governance-write skeleton of :class:`bridge.ledgers.steps.StepTemplate`, on a fake kind.

Every branch of ``install_committee``/``apply_order`` that the kinds share: read-only
refusal, already applied by the read (nothing sent), local order expiry, refusals re-checked
against the applied state (the endpoint's ``RotationAlreadyInstalled``, a concurrent
submitter, a refusal after ordering) and the kind's confirmation of a refusal.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.committee import Committee, CommitteeRotation, EpochWindow
from bridge.domain.errors import LedgerRejected
from bridge.domain.governance import HaltStatus, OrderAction, make_order
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Leg, LegStatus, SignatureSet, TxOutcome
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.steps import GovernanceWrite, RotationWrite, Step, StepTemplate

pytestmark = [pytest.mark.unit, pytest.mark.governance, pytest.mark.conformance]


def _committee(epoch: int) -> Committee:
    members = sorted(LocalKeySigner(secrets.token_bytes(32)).address for _ in range(3))
    return Committee(epoch, 2, tuple(members))


OLD, NEW = _committee(1), _committee(2)
ROTATION = CommitteeRotation(1, NEW, activation=1_000, overlap=60)
CERT = SignatureSet(1, (b"\x01" * 65, b"\x02" * 65))


def _order(sequence: int = 1, expiry: int | None = None) -> Any:
    return make_order(
        network=bytes(32),
        ledger=LedgerId("fake").word,
        security=None,
        action=OrderAction.HALT,
        sequence=sequence,
        expiry=int(time.time()) + 600 if expiry is None else expiry,
    )


class FakeKind(StepTemplate):
    """A kind whose ledger is two fields; ``refuse`` makes the send (or, ``at_wait``, the
    wait) raise it, ``race`` applies the write just before refusing (a concurrent
    submitter)."""

    def __init__(self, *, writable: bool = True, local_expiry: bool = False) -> None:
        self._writable = writable
        self.local_order_expiry = local_expiry
        self.installed = False
        self.sequence = 0
        self.sent: list[str] = []
        self.refuse: LedgerRejected | None = None
        self.at_wait = False
        self.race = False
        self.confirm: LedgerRejected | None = None  # None: the kind's view says applied

    ledger = LedgerId("fake")
    bridge_word = bytes(32)

    @property
    def writable(self) -> bool:
        return self._writable

    async def get_leg(self, transfer_id: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        raise AssertionError("not used")

    async def finalized_height(self) -> int:
        return 7

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        if self.installed:
            return (EpochWindow(OLD, 0, 1_060), EpochWindow(NEW, 1_000, None))
        return (EpochWindow(OLD, 0, None),)

    async def halt_status(self, security: SecurityId | None) -> HaltStatus:
        return HaltStatus(False, self.sequence > 0, self.sequence, None)

    async def _send_step(self, step: Step) -> Any:
        raise AssertionError("not used")

    async def _wait_step_final(self, step: Step, handle: Any) -> TxOutcome:
        raise AssertionError("not used")

    def _apply(self, write: GovernanceWrite) -> None:
        if isinstance(write, RotationWrite):
            self.installed = True
        else:
            self.sequence = write.order.sequence

    def _maybe_refuse(self, write: GovernanceWrite) -> None:
        if self.refuse is not None:
            if self.race:
                self._apply(write)
            raise self.refuse

    async def _send_write(self, write: GovernanceWrite) -> Any:
        self.sent.append(write.function)
        if not self.at_wait:
            self._maybe_refuse(write)
        return "handle"

    async def _wait_write_final(self, write: GovernanceWrite, handle: Any) -> TxOutcome:
        assert handle == "handle"
        if self.at_wait:
            self._maybe_refuse(write)
        self._apply(write)
        return TxOutcome(tx_id="tx", height=8, already_applied=False)

    async def _confirm_write_refusal(
        self, write: GovernanceWrite, refusal: LedgerRejected, *, ordered: bool
    ) -> None:
        if self.confirm is not None:
            raise self.confirm
        self._apply(write)  # the peer the kind trusts shows it applied: so does its state


async def test_a_read_only_adapter_sends_nothing() -> None:
    kind = FakeKind(writable=False)
    for call in (kind.install_committee(ROTATION, CERT), kind.apply_order(_order(), b"s")):
        with pytest.raises(LedgerRejected) as exc:
            await call
        assert exc.value.reason == ErrorReason.READ_ONLY
    assert kind.sent == []


async def test_a_write_sent_once_then_read_as_applied_without_sending() -> None:
    kind = FakeKind()
    first = await kind.install_committee(ROTATION, CERT)
    assert first == TxOutcome("tx", 8, False)
    again = await kind.install_committee(ROTATION, CERT)
    assert again == TxOutcome("", 7, True)
    order = _order(3)
    assert not (await kind.apply_order(order, b"s")).already_applied
    # This order or an earlier one: applied (a later sequence supersedes it).
    assert (await kind.apply_order(order, b"s")).already_applied
    assert (await kind.apply_order(_order(2), b"s")).already_applied
    assert kind.sent == ["RotateCommittee", "ApplyOrder"]


@pytest.mark.security
async def test_an_expired_order_is_refused_unsent_only_where_the_submitter_sets_the_clock() -> None:
    local = FakeKind(local_expiry=True)
    with pytest.raises(LedgerRejected) as exc:
        await local.apply_order(_order(expiry=1), b"s")
    assert exc.value.reason == ErrorReason.ORDER_EXPIRED and local.sent == []
    chain = FakeKind()  # the endpoint's own clock decides
    await chain.apply_order(_order(expiry=1), b"s")
    assert chain.sent == ["ApplyOrder"]


@pytest.mark.parametrize("at_wait", [False, True], ids=["at-send", "after-ordering"])
async def test_rotation_already_installed_is_already_applied(at_wait: bool) -> None:
    kind = FakeKind()
    kind.refuse = LedgerRejected(ErrorReason.ROTATION_ALREADY_INSTALLED, "replay")
    kind.at_wait, kind.race = at_wait, True  # another submitter installed it meanwhile
    out = await kind.install_committee(ROTATION, CERT)
    assert out == TxOutcome("", 7, True)


@pytest.mark.security
@pytest.mark.parametrize("at_wait", [False, True], ids=["at-send", "after-ordering"])
async def test_rotation_already_installed_that_the_state_does_not_show_is_malformed(
    at_wait: bool,
) -> None:
    """One node's ``RotationAlreadyInstalled`` for a rotation the ledger's committees do
    not hold is not taken as installed (the coordinator would record it so)."""
    kind = FakeKind()
    kind.refuse = LedgerRejected(ErrorReason.ROTATION_ALREADY_INSTALLED, "a lying node")
    kind.at_wait = at_wait
    with pytest.raises(LedgerRejected) as exc:
        await kind.install_committee(ROTATION, CERT)
    assert exc.value.reason == ErrorReason.MALFORMED_ANSWER
    assert not kind.installed


@pytest.mark.parametrize("at_wait", [False, True], ids=["at-send", "after-ordering"])
async def test_a_refusal_after_a_concurrent_submitter_applied_the_write_is_already_applied(
    at_wait: bool,
) -> None:
    kind = FakeKind()
    kind.refuse = LedgerRejected(ErrorReason.STALE_ORDER, "sequence")
    kind.at_wait, kind.race = at_wait, True
    assert (await kind.apply_order(_order(4), b"s")).already_applied
    kind.refuse = LedgerRejected(ErrorReason.EPOCH_ALREADY_INSTALLED, "race")
    assert (await kind.install_committee(ROTATION, CERT)).already_applied


@pytest.mark.security
@pytest.mark.parametrize("at_wait", [False, True], ids=["at-send", "after-ordering"])
async def test_a_refusal_stands_as_the_kind_confirms_it_and_nothing_is_applied(
    at_wait: bool,
) -> None:
    kind = FakeKind()
    kind.refuse = LedgerRejected(ErrorReason.NOT_COMMITTEE_MEMBER, "endorser")
    kind.confirm = LedgerRejected(ErrorReason.TOO_FEW_SIGNATURES, "own peer")
    kind.at_wait = at_wait
    with pytest.raises(LedgerRejected) as exc:
        await kind.install_committee(ROTATION, CERT)
    assert exc.value.reason == ErrorReason.TOO_FEW_SIGNATURES
    assert not kind.installed
    # The kind's own view shows it applied: reported as such.
    kind.confirm = None
    assert (await kind.install_committee(ROTATION, CERT)) == TxOutcome("", 7, True)
