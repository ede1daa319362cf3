"""Every store written by the previous release (287b48a) upgrades with every row kept and
works with the current code; a store newer than the code, or of another kind, is refused
with a typed error and left untouched; a failing migration changes nothing (ADR 0022).

The fixtures are SQL dumps the previous release's own code wrote
(``tests/fixtures/stores/make_fixtures.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.coordinator import schema
from bridge.coordinator.db import open_sqlite
from bridge.coordinator.store import SqliteTransferStore
from bridge.coordinator.supply_store import SqliteSupplyStore
from bridge.domain.claims import ClaimKind
from bridge.domain.legs import EventPosition
from bridge.domain.rotation import RotationProposal
from bridge.domain.supply import Assessment, SignedRecord
from bridge.storage.migrations import Migration, StoreTooNew, WrongStore, migrate
from bridge.storage.sqlite import open_durable, transaction
from relayers import checkpoint
from relayers.checkpoint import CheckpointStore
from tests.unit.test_store import make_record
from tests.unit.test_supply_store import record
from verifiers import store as member_store
from verifiers.rotation_log import RotationLog
from verifiers.supply_log import SupplyLog
from verifiers.votes import ConflictingVote, VoteLog

pytestmark = [pytest.mark.unit, pytest.mark.ops]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stores"
LATEST = {
    "coordinator": schema.LATEST,
    "verifier": member_store.MIGRATIONS[-1].version,
    "relayer": checkpoint.MIGRATIONS[-1].version,
}


def load(kind: str, tmp_path: Path) -> Path:
    """A SQLite file with the previous release's store of ``kind``."""
    path = tmp_path / f"{kind}.sqlite"
    db = sqlite3.connect(path)
    db.executescript((FIXTURES / f"{kind}-287b48a.sql").read_text())
    db.close()
    return path


def rows(path: Path) -> dict[str, set[tuple[object, ...]]]:
    """Every row of every table (as the columns each table had)."""
    db = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {t: set(db.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}
    finally:
        db.close()


def survived(before: dict[str, set[tuple[object, ...]]], path: Path) -> None:
    """Every table and row of ``before`` is in ``path`` (new columns appended are ignored)."""
    after = sqlite3.connect(path)
    try:
        for table, old in before.items():
            width = len(next(iter(old))) if old else 0
            cols = [r[1] for r in after.execute(f'PRAGMA table_info("{table}")')][:width]
            got = set(after.execute(f'SELECT {", ".join(cols) or "1"} FROM "{table}"').fetchall())
            assert old <= got, f"rows of {table} lost in the upgrade"
    finally:
        after.close()


def version_and_kind(path: Path) -> tuple[int, str]:
    db = sqlite3.connect(path)
    try:
        v = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        k = db.execute("SELECT kind FROM store_identity").fetchone()[0]
        return int(v), str(k)
    finally:
        db.close()


async def test_the_previous_coordinator_log_upgrades_and_works(tmp_path: Path) -> None:
    path = load("coordinator", tmp_path)
    before = rows(path)
    assert before["transfers"], "the fixture has transfers"
    store = SqliteTransferStore(path)
    try:
        assert version_and_kind(path) == (schema.LATEST, "coordinator")
        survived(before, path)
        first = await store.get(make_record(1).transfer_id)
        assert first is not None
        assert first.transactions == {"lock": "0x" + "0" * 63 + "1"}
        decision = await store.decision(first.transfer_id)
        assert decision is not None
        assert decision.kind is ClaimKind.COMMIT
        assert await store.scanned_height("brokerage-a") == 12
        assert len(await store.misbehaviour(10)) == 1
        created = await store.create(make_record(6))
        assert created[1], "a new transfer is recorded after the upgrade"
        assert len((await store.list_transfers(None, None, 100, 0))[0]) == 6
        # Schema 11: the older rows' target ledgers came from their requests.
        by_target, _ = await store.list_transfers(None, None, 100, 0, ledger="brokerage-b")
        assert len(by_target) == 6
    finally:
        store.close()
    supply = SqliteSupplyStore(path)
    try:
        assert [a.feed_sequence for a in await supply.feed(0, 10)] == [1, 2]
        signed = SignedRecord(record(3, {"a": 10}), (b"\x5a" * 65,))
        got = await supply.append(signed, Assessment((), (), {}), 1.0)
        assert got.feed_sequence == 3
    finally:
        supply.close()


def test_the_previous_member_store_upgrades_and_works(tmp_path: Path) -> None:
    path = load("verifier", tmp_path)
    before = rows(path)
    assert len(before["votes"]) == 4
    votes = VoteLog(path)
    rotations = RotationLog(path)
    supply = SupplyLog(path)
    try:
        assert version_and_kind(path) == (LATEST["verifier"], "verifier")
        survived(before, path)
        one = (1).to_bytes(32, "big")
        assert votes.decision(one) is ClaimKind.COMMIT
        votes.record(one, ClaimKind.COMMIT, b"\x01" * 32)  # the same vote again: idempotent
        with pytest.raises(ConflictingVote):
            votes.record(one, ClaimKind.ABORT, b"\x01" * 32)  # never the other decision
        votes.record(b"\x09" * 32, ClaimKind.ABORT, b"\x09" * 32)
        assert votes.decision(b"\x09" * 32) is ClaimKind.ABORT
        proposal = RotationProposal(
            2, 2, (b"\x01" * 20, b"\x02" * 20, b"\x03" * 20), 1_700_000_100, 600
        )
        assert rotations.signed(2) == proposal.fingerprint
        # The supply chain continues from the record the previous release signed last.
        two = record(2, {"a": 11}, previous=record(1, {"a": 10}).digest)
        supply.check_and_record(record(3, {"a": 12}, previous=two.digest))
    finally:
        votes.close()
        rotations.close()
        supply.close()


def test_the_previous_relayer_checkpoints_upgrade_and_work(tmp_path: Path) -> None:
    path = load("relayer", tmp_path)
    before = rows(path)
    store = CheckpointStore(path, "brokerage-a")
    try:
        assert version_and_kind(path) == (LATEST["relayer"], "relayer")
        survived(before, path)
        assert store.load() == EventPosition(42, 3)
        store.save(EventPosition(43, 0))
        assert store.load() == EventPosition(43, 0)
    finally:
        store.close()
    other = CheckpointStore(path, "depository")
    try:
        assert other.load() == EventPosition(7, 0)
    finally:
        other.close()


OPENERS: dict[str, Callable[[Path], object]] = {
    "coordinator": open_sqlite,
    "verifier": VoteLog,
    "relayer": lambda p: CheckpointStore(p, "brokerage-a"),
}


@pytest.mark.parametrize("kind", sorted(OPENERS))
def test_a_store_newer_than_the_code_is_refused_untouched(kind: str, tmp_path: Path) -> None:
    path = load(kind, tmp_path)
    opened = OPENERS[kind](path)
    opened.close()  # type: ignore[attr-defined]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "INSERT INTO schema_version VALUES (?, 'from a later release', 0)", (LATEST[kind] + 1,)
    )
    db.close()
    before = rows(path)
    with pytest.raises(StoreTooNew) as refused:
        OPENERS[kind](path)
    assert (refused.value.store_kind, refused.value.have) == (kind, LATEST[kind] + 1)
    assert rows(path) == before


@pytest.mark.parametrize(("kind", "opened_as"), [("verifier", "relayer"), ("relayer", "coordinator"),
                                                  ("coordinator", "verifier")])  # fmt: skip
def test_a_store_of_another_kind_is_refused_untouched(
    kind: str, opened_as: str, tmp_path: Path
) -> None:
    path = load(kind, tmp_path)
    OPENERS[kind](path).close()  # type: ignore[attr-defined]
    before = rows(path)
    with pytest.raises(WrongStore) as refused:
        OPENERS[opened_as](path)
    assert (refused.value.expected, refused.value.found) == (opened_as, kind)
    assert rows(path) == before


def test_a_failing_migration_leaves_the_store_at_its_version(tmp_path: Path) -> None:
    """Each step is one transaction with its schema_version row: a step that fails half-way
    leaves neither its tables nor its version; the next start retries it."""

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("disk full")

    def fixed(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x INTEGER)")

    def first(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE one (x INTEGER)")

    db = open_durable(tmp_path / "s.sqlite")
    try:
        steps = [Migration(1, "one", first), Migration(2, "broken", broken)]
        with pytest.raises(RuntimeError, match="disk full"):
            migrate("test", steps, transaction(db))
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "one" in tables
        assert "half" not in tables
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 1
        steps[1] = Migration(2, "fixed", fixed)
        assert migrate("test", steps, transaction(db)) == 2
    finally:
        db.close()
