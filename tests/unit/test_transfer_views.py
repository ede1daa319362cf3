"""What each caller reads of a transfer (review helper-140 #5): a brokerage of the target
ledger reads it without the source brokerage's order reference (its idempotency key) and,
before the lock, without the source side's reason; the source's brokerage, the depository
and the operator read it whole. Pure conversion of stored records to the API messages."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.coordinator.records import TransferUpdate
from bridge.coordinator.service import SOURCE_SIDE_TEXTS, _update_pb, transfer_to_pb
from bridge.domain.transfer import TransferState
from tests.unit.test_store import make_record

pytestmark = [pytest.mark.unit, pytest.mark.security]

FROZEN = "source ledger refused the lock (HolderFrozen)"


@pytest.mark.parametrize("state", [TransferState.FAILED, TransferState.SUBMITTED])
def test_the_target_brokerage_reads_no_source_side_reason_or_key(state: TransferState) -> None:
    record = dataclasses.replace(make_record(1, key="order-7731", state=state), reason=FROZEN)
    assert (record.request.source_ledger, record.request.target_ledger) == (
        "brokerage-a",
        "brokerage-b",
    )
    seen = transfer_to_pb(record, "brokerage-b")
    assert seen.idempotency_key == ""
    assert seen.reason == SOURCE_SIDE_TEXTS[state] and "HolderFrozen" not in str(seen)
    update = TransferUpdate(record.transfer_id, 2, state, FROZEN, 1.0)
    sent = _update_pb(update, record, "brokerage-b")
    assert sent.detail == SOURCE_SIDE_TEXTS[state] and "HolderFrozen" not in str(sent)
    assert sent.transfer == seen
    # Everything else stays: the target's brokerage reconciles with it.
    assert (seen.sender, seen.recipient, seen.amount, seen.state) == (
        record.request.sender, record.request.recipient, "100", int(state),
    )  # fmt: skip
    # The source's brokerage and every other role (viewer None) read it whole.
    for viewer in ("brokerage-a", None):
        whole = transfer_to_pb(record, viewer)
        assert (whole.idempotency_key, whole.reason) == ("order-7731", FROZEN)
        assert _update_pb(update, record, viewer).detail == FROZEN


def test_after_the_lock_the_target_brokerage_reads_the_reason() -> None:
    """From the lock on, the reason is about the target or the decision (a recipient the
    target refused is the target brokerage's own client): it is read as written."""
    aborted = "target rejected: recipient not eligible"
    record = dataclasses.replace(
        make_record(2, key="order-7732", state=TransferState.ABORTED), reason=aborted
    )
    seen = transfer_to_pb(record, "brokerage-b")
    assert (seen.idempotency_key, seen.reason) == ("", aborted)
    update = TransferUpdate(record.transfer_id, 5, TransferState.ABORTED, aborted, 1.0)
    assert _update_pb(update, record, "brokerage-b").detail == aborted


def test_a_resumed_transfers_failed_row_stays_redacted() -> None:
    """A FAILED transfer whose lock landed after all is resumed (SOURCE_LOCKED): a watch
    replays its FAILED row, whose detail is redacted by the row's own state, not by the
    record's (review helper-142 L4)."""
    resumed = "lock found on-chain after failure; resuming"
    record = dataclasses.replace(
        make_record(3, key="order-7733", state=TransferState.SOURCE_LOCKED), reason=resumed
    )
    failed_row = TransferUpdate(record.transfer_id, 2, TransferState.FAILED, FROZEN, 1.0)
    sent = _update_pb(failed_row, record, "brokerage-b")
    assert sent.detail == SOURCE_SIDE_TEXTS[TransferState.FAILED]
    assert (sent.transfer.reason, sent.transfer.idempotency_key) == (resumed, "")
    assert "HolderFrozen" not in str(sent)
    assert _update_pb(failed_row, record, "brokerage-a").detail == FROZEN
