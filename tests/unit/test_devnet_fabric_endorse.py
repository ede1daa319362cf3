"""The devnet's Fabric admin calls ask again for endorsements the gateway could not
collect (two peers a block apart), and never for a chaincode's refusal."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from bridge.core.reasons import ErrorReason
from bridge.devnet.fabric_bridge import ENDORSE_ATTEMPTS, endorse_agreed
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.ledgers.fabric.gateway import GatewayClient

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class _Endorser:
    """Raises the given errors in turn, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[str, str, list[str], bool]] = []

    async def endorse(self, chaincode: str, fn: str, args: list[str], is_init: bool) -> Any:
        self.calls.append((chaincode, fn, args, is_init))
        if self.errors:
            raise self.errors.pop(0)
        return "prepared"


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bridge.devnet.fabric_bridge.ENDORSE_WAIT_S", 0.0)


def _run(endorser: _Endorser) -> Any:
    client = cast(GatewayClient, endorser)
    return asyncio.run(endorse_agreed(client, "kstb", "Issue", ("ISIN", "h", "5")))


def test_unavailable_endorsements_are_asked_again() -> None:
    mismatch = Unavailable("endorse kstb.Issue failed: ABORTED ProposalResponsePayloads")
    endorser = _Endorser(mismatch, mismatch)
    assert _run(endorser) == "prepared"
    assert endorser.calls == [("kstb", "Issue", ["ISIN", "h", "5"], False)] * 3


def test_a_refusal_is_not_asked_again() -> None:
    endorser = _Endorser(LedgerRejected(ErrorReason.NOT_ADMIN, "no"))
    with pytest.raises(LedgerRejected):
        _run(endorser)
    assert len(endorser.calls) == 1


def test_the_last_unavailable_is_raised_after_the_attempts() -> None:
    endorser = _Endorser(*(Unavailable(f"attempt {i}") for i in range(ENDORSE_ATTEMPTS)))
    with pytest.raises(Unavailable, match=f"attempt {ENDORSE_ATTEMPTS - 1}"):
        _run(endorser)
    assert len(endorser.calls) == ENDORSE_ATTEMPTS
