"""The Fabric ``Legs`` answer's codec: one status per asked id, in order, or ValueError
(the adapter types it ``LedgerRejected(MalformedAnswer)``); never a guess. And the Fabric and
CometBFT adapters' single leg read, which is that read for a list of one."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState, leg_state_from_ledger
from bridge.ledgers.cometbft.adapter import CometAdapter
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric.adapter import FabricAdapter

pytestmark = [pytest.mark.unit, pytest.mark.batch]


def record(tid: bytes, **over: object) -> dict[str, object]:
    """A ``Legs`` record as the chaincode writes it (``GetLeg``'s fields, id, not-before)."""
    ids = [tid]
    raw = codec.transfer_ids_to_json(ids)  # the request's own id spelling
    rec: dict[str, object] = {
        "state": 1,  # the endpoint's outbound LOCKED
        "terms_hash": "0x" + "ab" * 32,
        "reason": 0,
        "transfer_id": json.loads(raw)[0],
        "not_before": 1_700_000_100,
    }
    rec.update(over)
    return rec


def test_a_well_formed_answer_is_read_in_order_with_its_delay() -> None:
    ids = [secrets.token_bytes(32) for _ in range(3)]
    got = codec.legs_from_json({"legs": [record(t) for t in ids]}, ids, Leg.OUTBOUND, 7)
    assert [s.state for s in got] == [leg_state_from_ledger(Leg.OUTBOUND, 1)] * 3
    assert got[0].state is LegState.LOCKED
    assert {s.not_before for s in got} == {1_700_000_100} and {s.height for s in got} == {7}


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda recs: recs[:-1], "must list 3 legs"),
        (lambda recs: [recs[1], recs[0], recs[2]], "out of order"),
        (
            lambda recs: [{k: v for k, v in r.items() if k != "not_before"} for r in recs],
            "lacks 'not_before'",
        ),
    ],
)
def test_a_short_reordered_or_delay_less_answer_is_refused(mangle: object, error: str) -> None:
    ids = [secrets.token_bytes(32) for _ in range(3)]
    recs = mangle([record(t) for t in ids])  # type: ignore[operator]
    with pytest.raises(ValueError, match=error):
        codec.legs_from_json({"legs": recs}, ids, Leg.OUTBOUND, 7)


# ---- one leg, read by the adapters as a list of one (Fabric and CometBFT share the codec)


class _Peer:
    """The one evaluate/query a single leg read makes, answered from a script."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[str]]] = []

    async def evaluate(self, chaincode: str, function: str, args: list[str]) -> bytes:
        self.calls.append((function, args))
        return json.dumps(self.answer).encode()

    async def query(self, function: str, args: list[str], height: int) -> tuple[bytes, int]:
        self.calls.append((function, args))
        return json.dumps(self.answer).encode(), height


def _fabric(peer: _Peer) -> FabricAdapter:
    adapter = FabricAdapter.__new__(FabricAdapter)
    adapter._client = peer  # type: ignore[assignment]
    adapter._chaincode = "bridge"
    return adapter


def _comet(peer: _Peer) -> CometAdapter:
    adapter = CometAdapter.__new__(CometAdapter)
    adapter._ledger = LedgerId("unit-cmt")
    adapter._client = peer  # type: ignore[assignment]

    async def final() -> int:
        return 9

    adapter.finalized_height = final  # type: ignore[method-assign]
    return adapter


KINDS = [pytest.param(_fabric, id="fabric"), pytest.param(_comet, id="cometbft")]


@pytest.mark.parametrize("make", KINDS)
def test_one_leg_is_one_legs_read_with_its_delay(make: Callable[[_Peer], Any]) -> None:
    """Was GetLeg then NotBefore: two round trips, and a bare ValueError when malformed."""
    tid = secrets.token_bytes(32)
    peer = _Peer({"legs": [record(tid)]})
    got = asyncio.run(make(peer).get_leg(tid, Leg.OUTBOUND, 7))
    assert (got.state, got.not_before, got.height) == (LegState.LOCKED, 1_700_000_100, 7)
    assert [f for f, _ in peer.calls] == ["Legs"]


@pytest.mark.parametrize("make", KINDS)
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("not an object", id="not-an-object"),
        pytest.param({"legs": []}, id="no-leg"),
        pytest.param({"state": 1}, id="a-GetLeg-shaped-answer"),
        pytest.param("other-id", id="another-transfer"),
        pytest.param("no-delay", id="no-not-before"),
    ],
)
def test_a_malformed_single_leg_answer_is_typed_malformed(
    make: Callable[[_Peer], Any], answer: object
) -> None:
    tid = secrets.token_bytes(32)
    if answer == "other-id":
        answer = {"legs": [record(secrets.token_bytes(32))]}
    elif answer == "no-delay":
        rec = record(tid)
        del rec["not_before"]
        answer = {"legs": [rec]}
    with pytest.raises(LedgerRejected) as err:
        asyncio.run(make(_Peer(answer)).get_leg(tid, Leg.OUTBOUND, 7))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER
