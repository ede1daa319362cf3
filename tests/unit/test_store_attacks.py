"""Negative tests for the attacker review of stores (prompts s17 review-stores, findings 1-9).

Each test mounts the reviewer's attack and asserts the precise typed refusal and that
nothing was changed: the store file byte-identical, no staged or extra file left behind.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from bridge.cli.main import main as cli_main
from bridge.cli.store import KINDS
from bridge.coordinator.db import DatabaseInUse, open_sqlite
from bridge.domain.claims import ClaimKind
from bridge.domain.legs import EventPosition
from bridge.storage import backup as backup_module
from bridge.storage.backup import backup, content_digest, restore
from bridge.storage.migrations import StoreError, WrongOwner, WrongStore
from bridge.storage.schema import SchemaMismatch
from bridge.storage.sqlite import NotRestored, StoreInUse, StoreMissing, hold_lock
from relayers.checkpoint import (
    END_OF_BLOCK,
    CheckpointStore,
    RewindRefused,
    rewind,
    rewind_position,
)
from tests.unit.test_supply_log import ISIN, rec
from verifiers import store as member_store
from verifiers.store import (
    AcknowledgementMissing,
    QuarantineNotEntered,
    open_member_store,
    quarantined,
)
from verifiers.supply_log import SupplyLog, SupplyLogQuarantined
from verifiers.votes import StaleVoteLog, VoteLog

pytestmark = [pytest.mark.unit, pytest.mark.ops, pytest.mark.security]

VERIFIER, RELAYER = KINDS["verifier"], KINDS["relayer"]
MEMBER_A, MEMBER_B = b"\xaa" * 20, b"\xbb" * 20


def tid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def files(directory: Path) -> dict[str, str]:
    """Every file in ``directory`` and the SHA-256 of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture
def member(tmp_path: Path) -> tuple[Path, Path]:
    """A member store (votes 1, 2 signed; bound to MEMBER_A) and its backup; then vote 3
    signed after the backup. Yields (store, backup), the store closed."""
    store = tmp_path / "state" / "votes.sqlite"
    log = VoteLog(store, MEMBER_A)
    log.record(tid(1), ClaimKind.COMMIT, tid(1))
    log.record(tid(2), ClaimKind.ABORT, tid(2))
    backup(VERIFIER, store, tmp_path / "votes.bak")
    log.record(tid(3), ClaimKind.COMMIT, tid(3))
    log.close()
    return store, tmp_path / "votes.bak"


def tamper(path: Path, *statements: str, redigest: bool = False) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for sql in statements:
            db.execute(sql)
        if redigest:
            db.execute("UPDATE backup_info SET content_sha256 = ?", (content_digest(db),))
    finally:
        db.close()


# ---- finding 1: a backup's schema is the kind's own, checked on the restore's own copy


def test_a_backup_with_added_triggers_is_refused_and_changes_nothing(
    member: tuple[Path, Path],
) -> None:
    store, bak = member
    tamper(
        bak,
        "CREATE TRIGGER lift AFTER INSERT ON restores BEGIN UPDATE restores SET lifted_at = 0; END",
        "CREATE TRIGGER forget AFTER INSERT ON votes BEGIN DELETE FROM votes; END",
    )
    # (the digest covers tables only: it still matches)
    before = files(store.parent)
    with pytest.raises(SchemaMismatch) as err:
        restore(VERIFIER, bak, store, "ticket 1")
    assert {e[1] for e in err.value.extra} == {"lift", "forget"}
    assert files(store.parent) == before, "the store and its directory are unchanged"


def test_a_crafted_backup_with_its_digest_recomputed_is_refused(
    member: tuple[Path, Path],
) -> None:
    """``restores.lifted_at DEFAULT 0``: every quarantine entered would read as lifted. The
    digest is recomputed by the attacker; the canonical schema still differs."""
    store, bak = member
    tamper(
        bak,
        "ALTER TABLE restores RENAME TO restores_old",
        "CREATE TABLE restores ( id INTEGER PRIMARY KEY AUTOINCREMENT, restored_at REAL NOT"
        " NULL, backup_taken_at REAL NOT NULL, acknowledgement TEXT NOT NULL, lifted_at REAL"
        " DEFAULT 0, lift_acknowledgement TEXT NOT NULL DEFAULT '')",
        "DROP TABLE restores_old",
        redigest=True,
    )
    before = files(store.parent)
    with pytest.raises(SchemaMismatch):
        restore(VERIFIER, bak, store, "ticket 1")
    assert files(store.parent) == before


def test_the_backup_is_checked_and_restored_from_one_private_copy(
    member: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup is swapped for a tampered file right after it was checked: the restore
    publishes what it checked (the genuine backup), not the swapped file."""
    store, bak = member
    evil = bak.with_name("evil.bak")
    evil.write_bytes(bak.read_bytes())
    tamper(evil, "CREATE TRIGGER forget AFTER INSERT ON votes BEGIN DELETE FROM votes; END")
    real = backup_module._check_backup

    def check_then_swap(*args: object) -> object:
        info = real(*args)  # type: ignore[arg-type]
        os.replace(evil, bak)  # the attacker's swap, after the check
        return info

    monkeypatch.setattr(backup_module, "_check_backup", check_then_swap)
    restore(VERIFIER, bak, store, "ticket 1")
    raw = sqlite3.connect(store)
    try:
        assert raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
    finally:
        raw.close()
    db = open_member_store(store)
    try:
        assert quarantined(db) is not None
    finally:
        db.close()


def test_a_restore_that_does_not_read_back_quarantined_is_refused(
    member: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, bak = member
    monkeypatch.setattr(member_store, "enter_quarantine", lambda *a: None)
    before = files(store.parent)
    with pytest.raises(QuarantineNotEntered):
        restore(VERIFIER, bak, store, "ticket 1")
    assert files(store.parent) == before


def test_a_live_store_with_an_added_trigger_is_refused_on_open(
    member: tuple[Path, Path],
) -> None:
    store, _ = member
    tamper(store, "CREATE TRIGGER forget AFTER INSERT ON votes BEGIN DELETE FROM votes; END")
    before = files(store.parent)
    with pytest.raises(SchemaMismatch):
        VoteLog(store)
    assert files(store.parent) == before


# ---- finding 2: the store path is never empty; a vanished store is never re-created


def test_a_crash_before_the_rename_leaves_the_old_store_in_place(
    member: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, bak = member

    def crash(src: object, dst: object) -> None:
        raise OSError("power lost")

    monkeypatch.setattr(os, "replace", crash)  # the publishing rename
    with pytest.raises(OSError, match="power lost"):
        restore(VERIFIER, bak, store, "ticket 1")
    assert not list(store.parent.glob("*.restoring-*")), "the staged copy is removed"
    log = VoteLog(store, MEMBER_A)
    try:
        assert log.decision(tid(3)) is ClaimKind.COMMIT, "the old store, with its log"
    finally:
        log.close()


def test_a_member_store_that_vanished_is_not_recreated_empty(
    member: tuple[Path, Path],
) -> None:
    store, _ = member
    store.unlink()
    with pytest.raises(StoreMissing):
        VoteLog(store, MEMBER_A)
    assert not store.exists()
    # First start (no .opened marker: no store was ever opened here) still creates one.
    fresh = store.with_name("fresh.sqlite")
    VoteLog(fresh, MEMBER_A).close()
    assert fresh.is_file()


# ---- finding 3: no restore path skips the quarantine


def test_a_backup_copied_into_place_is_refused(member: tuple[Path, Path]) -> None:
    store, bak = member
    store.write_bytes(bak.read_bytes())
    before = files(store.parent)
    with pytest.raises(NotRestored):
        VoteLog(store, MEMBER_A)
    assert files(store.parent) == before


def test_the_release_before_versioning_cannot_sign_on_an_upgraded_store(
    member: tuple[Path, Path],
) -> None:
    """287b48a inserts positionally; on a version-3 store every such insert fails."""
    store, _ = member
    raw = sqlite3.connect(store)
    try:
        with pytest.raises(sqlite3.OperationalError, match="5 columns but 4 values"):
            raw.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", (tid(9), 2, tid(9), 0.0))
        with pytest.raises(sqlite3.OperationalError, match="4 columns but 3 values"):
            raw.execute("INSERT INTO rotation_votes VALUES (?, ?, ?)", (9, b"f" * 32, 0.0))
        assert raw.execute("SELECT COUNT(*) FROM votes").fetchone() == (3,)
    finally:
        raw.close()


# ---- finding 4: a backup of another member is refused


def test_a_backup_of_another_member_is_refused(tmp_path: Path, member: tuple[Path, Path]) -> None:
    store, _ = member
    other = tmp_path / "other" / "votes.sqlite"
    VoteLog(other, MEMBER_B).close()
    backup(VERIFIER, other, tmp_path / "other.bak")
    before = files(store.parent)
    with pytest.raises(WrongOwner) as err:
        restore(VERIFIER, tmp_path / "other.bak", store, "ticket 1")
    assert (err.value.expected, err.value.found) == (MEMBER_A, MEMBER_B)
    assert files(store.parent) == before
    with pytest.raises(WrongOwner):
        VoteLog(store, MEMBER_B)  # nor opened by another member's daemon
    assert files(store.parent) == before


# ---- finding 5: a rewind never skips events


def test_rewind_refuses_forward_moves_unknown_ledgers_and_missing_stores(tmp_path: Path) -> None:
    path = tmp_path / "relayer.sqlite"
    cp = CheckpointStore(path, "a")
    cp.save(EventPosition(10, 3))
    cp.close()
    before = files(tmp_path)
    with pytest.raises(RewindRefused, match="ahead"):
        rewind(path, "a", rewind_position(20))
    with pytest.raises(RewindRefused, match="no checkpoint for ledger 'b'"):
        rewind(path, "b", rewind_position(5))
    with pytest.raises(StoreMissing):
        rewind(tmp_path / "typo.sqlite", "a", rewind_position(5))
    assert files(tmp_path) == before
    # Block H itself may have been partly delivered when the coordinator recorded H.
    assert rewind_position(10) == EventPosition(9, END_OF_BLOCK)
    assert rewind_position(0) < EventPosition(0, 0), "scanned 0: block 0 is re-delivered too"
    assert rewind(path, "a", rewind_position(10)) == EventPosition(10, 3)


# ---- finding 6: one lock per file, whatever the name; the coordinator locks first


def test_a_restore_through_a_symlink_meets_the_daemons_lock(member: tuple[Path, Path]) -> None:
    store, bak = member
    link = store.with_name("alias.sqlite")
    link.symlink_to(store)
    log = VoteLog(link, MEMBER_A)  # the daemon runs on the symlink's name
    try:
        before = hashlib.sha256(store.read_bytes()).hexdigest()
        with pytest.raises(StoreInUse):
            restore(VERIFIER, bak, store, "ticket 1")
        assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    finally:
        log.close()


def test_the_coordinator_locks_before_it_connects(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    held = hold_lock(path, exclusive=True)  # a restore in progress
    try:
        with pytest.raises(DatabaseInUse):
            open_sqlite(path, exclusive=True)
        assert not path.exists(), "nothing was created or migrated"
    finally:
        held.close()
    open_sqlite(path, exclusive=True).close()


# ---- finding 7: the supply log abstains while quarantined


def test_a_quarantined_member_signs_no_new_supply_record(tmp_path: Path) -> None:
    store = tmp_path / "state" / "member.sqlite"
    log = SupplyLog(store)
    r1 = rec(1, {"a": 10})
    log.check_and_record(r1)
    backup(VERIFIER, store, tmp_path / "m.bak")
    log.check_and_record(rec(2, {"a": 11}, prev=r1))  # D1, forgotten by the restore
    log.close()
    restore(VERIFIER, tmp_path / "m.bak", store, "ticket 7")
    log = SupplyLog(store)
    try:
        with pytest.raises(SupplyLogQuarantined):
            log.check_and_record(rec(2, {"a": 12}, prev=r1))  # D2: a fork of #2
        with pytest.raises(SupplyLogQuarantined):
            log.check_and_record(rec(1, {"a": 10}, produced_at_ms=2), None)  # another #1
        assert log.last(ISIN) == (1, r1.digest), "nothing recorded"
        log.check_and_record(r1)  # the very record it holds: nothing new is signed
    finally:
        log.close()


def test_votes_still_abstain_after_the_hardened_restore(member: tuple[Path, Path]) -> None:
    store, bak = member
    restore(VERIFIER, bak, store, "ticket 1")
    votes = VoteLog(store, MEMBER_A)
    try:
        with pytest.raises(StaleVoteLog):
            votes.record(tid(3), ClaimKind.ABORT, tid(3))  # forgotten by the restore
        assert votes.decision(tid(3)) is None
    finally:
        votes.close()


# ---- finding 8: lifting needs words and an existing store


def test_lift_refuses_a_blank_acknowledgement_and_a_mistyped_path(
    member: tuple[Path, Path],
) -> None:
    store, bak = member
    restore(VERIFIER, bak, store, "ticket 1")
    before = files(store.parent)
    assert cli_main(["store", "lift-quarantine", "--path", str(store), "--acknowledge", "  "]) == 1
    assert files(store.parent) == before
    typo = store.with_name("vote.sqlite")
    assert cli_main(["store", "lift-quarantine", "--path", str(typo), "--acknowledge", "ok"]) == 1
    assert not typo.exists()
    db = open_member_store(store)
    try:
        with pytest.raises(AcknowledgementMissing):
            member_store.lift_quarantine(db, "\t")
        assert quarantined(db) is not None
    finally:
        db.close()


# ---- finding 9: an unstamped file of another kind is never adopted


def test_a_relayer_file_is_neither_adopted_nor_replaced_as_a_vote_log(tmp_path: Path) -> None:
    relayer = tmp_path / "relayer.sqlite"
    raw = sqlite3.connect(relayer)  # as release 287b48a wrote it: unstamped
    raw.execute(
        "CREATE TABLE checkpoint ( ledger TEXT PRIMARY KEY, height INTEGER NOT NULL,"
        " idx INTEGER NOT NULL)"
    )
    raw.execute("INSERT INTO checkpoint VALUES ('a', 7, 1)")
    raw.commit()
    raw.close()
    before = files(tmp_path)
    with pytest.raises(WrongStore) as err:
        open_member_store(relayer, create=True)
    assert err.value.found == "unknown"
    lock = relayer.with_name("relayer.sqlite.lock")
    lock.unlink(missing_ok=True)
    assert files(tmp_path) == before
    member = tmp_path / "m" / "votes.sqlite"
    VoteLog(member, MEMBER_A).close()
    backup(VERIFIER, member, tmp_path / "m.bak")
    before = files(tmp_path)
    with pytest.raises(WrongStore):
        restore(VERIFIER, tmp_path / "m.bak", relayer, "ticket 1")
    lock.unlink(missing_ok=True)
    assert files(tmp_path) == before


# ---- finding 10: file handling


def test_a_backup_never_replaces_a_file_that_appeared_meanwhile(
    tmp_path: Path, member: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = member
    target = tmp_path / "race.bak"
    real = backup_module._integrity

    def racer(db: sqlite3.Connection, path: Path) -> None:
        real(db, path)
        assert path.stat().st_mode & 0o777 == 0o600, "private from its creation"
        target.write_bytes(b"another process's file")

    monkeypatch.setattr(backup_module, "_integrity", racer)
    with pytest.raises(StoreError, match="exists"):
        backup(VERIFIER, store, target)
    assert target.read_bytes() == b"another process's file"
    assert not list(tmp_path.glob("race.bak.partial*"))


def test_a_restored_store_keeps_the_mode_of_the_one_it_replaces(
    member: tuple[Path, Path],
) -> None:
    store, bak = member
    os.chmod(store, 0o640)
    first = restore(VERIFIER, bak, store, "ticket 1")
    assert store.stat().st_mode & 0o777 == 0o640
    second = restore(VERIFIER, bak, store, "ticket 2")
    assert first.previous is not None and second.previous is not None
    assert first.previous != second.previous, "one kept copy per restore, never overwritten"
    assert first.previous.is_file() and second.previous.is_file()


def test_the_coordinator_refuses_a_copied_backup_and_an_added_trigger(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    open_sqlite(path).close()
    backup(KINDS["coordinator"], path, tmp_path / "c.bak")
    copied = tmp_path / "copied.sqlite"
    copied.write_bytes((tmp_path / "c.bak").read_bytes())
    before = files(tmp_path)
    with pytest.raises(NotRestored):
        open_sqlite(copied)
    tamper(path, "CREATE TRIGGER t AFTER INSERT ON decisions BEGIN DELETE FROM decisions; END")
    before = files(tmp_path)
    with pytest.raises(SchemaMismatch):
        open_sqlite(path, exclusive=True)
    after = files(tmp_path)
    assert after.pop("coordinator.sqlite.lock") == hashlib.sha256(b"").hexdigest()
    assert after == before, "only the (empty) lock file was created"
