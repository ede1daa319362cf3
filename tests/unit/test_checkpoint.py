"""The relayer's durable delivery checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.domain.legs import EventPosition
from relayers.checkpoint import END_OF_BLOCK, CheckpointStore

pytestmark = pytest.mark.unit


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "relayer" / "checkpoint.sqlite"  # parent created by the store


@pytest.fixture
def store(db_path: Path) -> Iterator[CheckpointStore]:
    s = CheckpointStore(db_path, "brokerage-a")
    yield s
    s.close()


def test_load_is_none_initially(store: CheckpointStore) -> None:
    assert store.load() is None


def test_save_then_load(store: CheckpointStore) -> None:
    store.save(EventPosition(10, 2))
    assert store.load() == EventPosition(10, 2)
    store.save(EventPosition(10, 3))
    assert store.load() == EventPosition(10, 3)
    store.save(EventPosition(11, 0))
    assert store.load() == EventPosition(11, 0)


def test_saving_the_same_position_again_is_allowed(store: CheckpointStore) -> None:
    store.save(EventPosition(5, 1))
    store.save(EventPosition(5, 1))
    assert store.load() == EventPosition(5, 1)


@pytest.mark.parametrize("backwards", [EventPosition(9, 99), EventPosition(10, 1)])
def test_refuses_to_move_backwards(store: CheckpointStore, backwards: EventPosition) -> None:
    store.save(EventPosition(10, 2))
    with pytest.raises(ValueError, match="checkpoint would move backwards"):
        store.save(backwards)
    assert store.load() == EventPosition(10, 2)


def test_end_of_block_marker_orders_after_any_index(store: CheckpointStore) -> None:
    assert END_OF_BLOCK == 2**31 - 1
    store.save(EventPosition(7, END_OF_BLOCK))
    with pytest.raises(ValueError, match="move backwards"):
        store.save(EventPosition(7, 1000))
    store.save(EventPosition(8, 0))
    assert store.load() == EventPosition(8, 0)


def test_survives_reopen_and_is_per_ledger(db_path: Path) -> None:
    a = CheckpointStore(db_path, "brokerage-a")
    a.save(EventPosition(42, 3))
    a.close()

    a2 = CheckpointStore(db_path, "brokerage-a")
    b = CheckpointStore(db_path, "brokerage-b")
    try:
        assert a2.load() == EventPosition(42, 3)
        assert b.load() is None
        b.save(EventPosition(1, 0))  # another ledger's checkpoint is independent
        with pytest.raises(ValueError, match="move backwards"):
            a2.save(EventPosition(41, 0))
        assert a2.load() == EventPosition(42, 3)
    finally:
        a2.close()
        b.close()
