"""The Fabric ``Legs`` answer's codec: one status per asked id, in order, or ValueError
(the adapter types it ``LedgerRejected(MalformedAnswer)``); never a guess."""

from __future__ import annotations

import json
import secrets

import pytest

from bridge.domain.legs import Leg, LegState
from bridge.ledgers.fabric import codec

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
    assert [s.state for s in got] == [codec.leg_state_from_ledger(Leg.OUTBOUND, 1)] * 3
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
