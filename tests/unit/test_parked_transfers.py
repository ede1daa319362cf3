"""A parked target leg as the coordinator records and reports it (issue 10 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.coordinator.service import transfer_to_pb
from bridge.coordinator.store import SqliteTransferStore
from bridge.domain.legs import LegState, LegStatus
from bridge.domain.transfer import TransferState
from tests.unit.test_store import make_record

pytestmark = [pytest.mark.unit, pytest.mark.governance]


def test_a_minted_leg_with_a_reason_is_parked() -> None:
    def status(state: LegState, reason: int) -> LegStatus:
        return LegStatus(state=state, terms_hash=bytes(32), reason=reason, height=1)

    assert status(LegState.MINTED, 3).parked
    assert status(LegState.MINTED, 2).parked
    assert not status(LegState.MINTED, 0).parked
    assert not status(LegState.REJECTED, 3).parked  # a refusal at prepare is no parking


async def test_the_store_records_parking_once_and_the_api_says_so(tmp_path: Path) -> None:
    store = SqliteTransferStore(tmp_path / "coordinator.sqlite")
    try:
        record, _ = await store.create(make_record(1, state=TransferState.COMMITTED))
        assert record.parked_reason == 0
        message = transfer_to_pb(record)
        assert (message.parked, message.parked_reason) == (False, 0)
        await store.record_parked(record.transfer_id, 3)
        await store.record_parked(record.transfer_id, 2)  # the first stays
        again = await store.get(record.transfer_id)
        assert again is not None and again.parked_reason == 3
        message = transfer_to_pb(again)
        assert (message.parked, message.parked_reason) == (True, 3)
        other, _ = await store.create(make_record(2))
        assert other.parked_reason == 0
    finally:
        store.close()
