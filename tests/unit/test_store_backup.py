"""Backup and restore of the daemons' stores (ADR 0022).

Backups taken while another process writes are consistent snapshots; a restore refuses,
changing nothing, a running daemon, another kind, a damaged, foreign or newer backup, and a
member's store without an acknowledgement; a restored member's store is quarantined: it
never signs a decision it cannot prove it did not contradict after the backup.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.cli.main import main as cli_main
from bridge.cli.store import KINDS
from bridge.coordinator.db import open_sqlite
from bridge.coordinator.store import SqliteTransferStore
from bridge.domain.claims import ClaimKind
from bridge.domain.legs import EventPosition, Leg, LegState
from bridge.domain.rotation import RotationProposal
from bridge.storage.backup import (
    AcknowledgementRequired,
    NotABackup,
    backup,
    read_backup,
    restore,
)
from bridge.storage.migrations import StoreError, StoreTooNew, WrongStore
from bridge.storage.sqlite import StoreInUse
from relayers.checkpoint import CheckpointStore
from tests.unit.test_store import make_record
from tests.unit.test_verifier_claim_service import BROKER, Member
from verifiers.rotation_log import RotationLog, StaleRotationLog
from verifiers.store import open_member_store, quarantined
from verifiers.votes import StaleVoteLog, VoteLog

pytestmark = [pytest.mark.unit, pytest.mark.ops]

VERIFIER, RELAYER, COORDINATOR = KINDS["verifier"], KINDS["relayer"], KINDS["coordinator"]

WRITER = """
import sys
from pathlib import Path
from verifiers.votes import VoteLog
from bridge.domain.claims import ClaimKind
log = VoteLog(Path(sys.argv[1]))
n = 0
while True:
    n += 1
    log.record(n.to_bytes(32, "big"), ClaimKind.COMMIT, n.to_bytes(32, "big"))
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vote_numbers(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return sorted(
            int.from_bytes(r[0], "big") for r in db.execute("SELECT transfer_id FROM votes")
        )
    finally:
        db.close()


def test_backups_while_another_process_writes_are_consistent(tmp_path: Path) -> None:
    """A member process records votes as fast as it can; every backup is intact and holds
    exactly the votes committed before it (1..k, no gap, no torn transaction)."""
    store = tmp_path / "member.sqlite"
    VoteLog(store).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store)], cwd=Path.cwd())
    try:
        # Under load the writer may take seconds to import; back up only once it writes.
        deadline = time.monotonic() + 60
        while not vote_numbers(store) and time.monotonic() < deadline:
            assert writer.poll() is None, "the writer died before its first vote"
            time.sleep(0.1)
        seen = 0
        for i in range(5):
            time.sleep(0.3)
            target = tmp_path / f"b{i}.sqlite"
            info = backup(VERIFIER, store, target)
            assert info.kind == "verifier"
            assert read_backup(VERIFIER, target) == info
            numbers = vote_numbers(target)
            assert numbers == list(range(1, len(numbers) + 1)), "a snapshot, no gap"
            assert len(numbers) >= seen
            seen = len(numbers)
        assert writer.poll() is None, "the writer kept running through every backup"
        assert seen > 0
    finally:
        writer.terminate()
        writer.wait(10)


async def test_a_coordinator_log_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    store = SqliteTransferStore(path)
    try:
        await store.create(make_record(1))
        backup(COORDINATOR, path, tmp_path / "c.bak")
        await store.create(make_record(2))
    finally:
        store.close()
    result = restore(COORDINATOR, tmp_path / "c.bak", path)
    assert result.previous is not None
    assert result.previous.exists(), "the replaced log is kept"
    again = SqliteTransferStore(path)
    try:
        assert await again.get(make_record(1).transfer_id) is not None
        assert await again.get(make_record(2).transfer_id) is None  # after the backup
    finally:
        again.close()


def test_restore_refuses_a_running_daemon_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "member.sqlite"
    votes = VoteLog(path)
    try:
        backup(VERIFIER, path, tmp_path / "m.bak")
        before = vote_numbers(path)
        with pytest.raises(StoreInUse):
            restore(VERIFIER, tmp_path / "m.bak", path, "test")
        assert vote_numbers(path) == before
        assert not (tmp_path / "member.sqlite.restoring").exists()
    finally:
        votes.close()
    coordinator = open_sqlite(tmp_path / "coordinator.sqlite")
    coordinator.claim_exclusive()  # what the coordinator daemon does at start
    try:
        backup(COORDINATOR, tmp_path / "coordinator.sqlite", tmp_path / "c.bak")
        with pytest.raises(StoreInUse):
            restore(COORDINATOR, tmp_path / "c.bak", tmp_path / "coordinator.sqlite")
    finally:
        coordinator.close()


def test_restore_refuses_bad_backups_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "member.sqlite"
    votes = VoteLog(path)
    for n in range(1, 50):
        votes.record(n.to_bytes(32, "big"), ClaimKind.ABORT, bytes([n]) * 32)
    votes.close()
    relayer = tmp_path / "relayer.sqlite"
    CheckpointStore(relayer, "a").close()
    backup(RELAYER, relayer, tmp_path / "r.bak")
    backup(VERIFIER, path, tmp_path / "m.bak")
    before = digest(path)

    with pytest.raises(WrongStore):
        restore(VERIFIER, tmp_path / "r.bak", path, "ack")  # a relayer's backup
    with pytest.raises(NotABackup, match="not written by"):
        restore(VERIFIER, relayer, path, "ack")  # a store, not a backup
    with pytest.raises(AcknowledgementRequired):
        restore(VERIFIER, tmp_path / "m.bak", path, "  ")
    damaged = tmp_path / "damaged.bak"
    raw = bytearray((tmp_path / "m.bak").read_bytes())
    at = raw.index(bytes([7]) * 32)  # one vote's terms hash: a bit flips on the disk
    raw[at] ^= 0x01
    damaged.write_bytes(bytes(raw))
    with pytest.raises(NotABackup):
        restore(VERIFIER, damaged, path, "ack")
    newer = tmp_path / "newer.bak"
    newer.write_bytes((tmp_path / "m.bak").read_bytes())
    db = sqlite3.connect(newer, isolation_level=None)
    db.execute("UPDATE backup_info SET schema_version = schema_version + 1")
    db.close()
    with pytest.raises(StoreTooNew):
        restore(VERIFIER, newer, path, "ack")
    assert digest(path) == before
    assert not list(tmp_path.glob("member.sqlite.pre-restore-*"))
    assert cli_main(["store", "restore", "--store", "verifier", "--path", str(path),
                     "--from", str(tmp_path / "r.bak"), "--acknowledge", "x"]) == 1  # fmt: skip
    with pytest.raises(StoreError, match="refusing to overwrite"):
        backup(VERIFIER, path, tmp_path / "m.bak")


# ---- the stale vote log (SECURITY)


def restored_member(tmp_path: Path) -> tuple[Member, Path]:
    """A member whose store is backed up, that then signs more, and is restored."""
    m = Member(tmp_path, frozenset({BROKER.address}))
    backup(VERIFIER, tmp_path / "votes.sqlite", tmp_path / "votes.bak")
    return m, tmp_path / "votes.bak"


def reopen(m: Member, tmp_path: Path) -> None:
    m.votes.close()
    m.votes = VoteLog(tmp_path / "votes.sqlite")
    m.servicer._votes = m.votes


def test_a_restored_vote_log_never_signs_the_other_decision(tmp_path: Path) -> None:
    """The member signs COMMIT for t after its backup; its store is restored from that
    backup (the COMMIT is forgotten). Its target node then reports the target EXPIRED (a
    lagging or forked node): unquarantined, the ledger rule alone would let it sign ABORT,
    a double-sign. Quarantined it refuses (StaleVoteLog) and records nothing; COMMIT too,
    since nothing proves which decision it signed."""
    m, bak = restored_member(tmp_path)
    t = m.terms()
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    m.sign(ClaimKind.COMMIT, t)  # after the backup
    m.votes.close()
    restore(VERIFIER, bak, tmp_path / "votes.sqlite", "test: disk replaced")
    reopen(m, tmp_path)
    assert m.votes.decision(t.transfer_id) is None, "the restore forgot the COMMIT"
    q = m.votes.quarantine()
    assert q is not None
    assert q.acknowledgement == "test: disk replaced"

    m.set_leg(m.b, t, Leg.INBOUND, LegState.EXPIRED)
    with pytest.raises(StaleVoteLog, match="quarantined"):
        m.sign(ClaimKind.ABORT, t)
    m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    with pytest.raises(StaleVoteLog):
        m.sign(ClaimKind.COMMIT, t)
    assert m.votes.decision(t.transfer_id) is None, "a refusal records nothing"

    # Once a ledger shows the outcome applied (the source burned by a COMMIT certificate),
    # signing it again can change nothing: signed, and recorded.
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.BURNED)
    assert m.sign(ClaimKind.COMMIT, t).signatures
    assert m.votes.decision(t.transfer_id) is ClaimKind.COMMIT


def test_a_quarantined_member_keeps_its_remembered_votes_and_lifting_is_recorded(
    tmp_path: Path,
) -> None:
    m = Member(tmp_path, frozenset({BROKER.address}))
    before = m.terms()
    m.set_leg(m.a, before, Leg.OUTBOUND, LegState.LOCKED)
    m.set_leg(m.b, before, Leg.INBOUND, LegState.REJECTED)
    m.sign(ClaimKind.ABORT, before)  # recorded before the backup
    backup(VERIFIER, tmp_path / "votes.sqlite", tmp_path / "votes.bak")
    m.votes.close()
    restore(VERIFIER, tmp_path / "votes.bak", tmp_path / "votes.sqlite", "ops ticket 7")
    reopen(m, tmp_path)
    assert m.sign(ClaimKind.ABORT, before).signatures, "a remembered vote signs again"
    fresh = m.terms()
    m.set_leg(m.a, fresh, Leg.OUTBOUND, LegState.LOCKED)
    m.set_leg(m.b, fresh, Leg.INBOUND, LegState.PREPARED)
    with pytest.raises(StaleVoteLog):
        m.sign(ClaimKind.COMMIT, fresh)
    path = tmp_path / "votes.sqlite"
    # Lifting works while the member runs (its lock is shared) and is recorded.
    assert cli_main(["store", "lift-quarantine", "--path", str(path),
                     "--acknowledge", "all pre-restore transfers terminal"]) == 0  # fmt: skip
    assert m.sign(ClaimKind.COMMIT, fresh).signatures
    db = open_member_store(tmp_path / "other-handle.sqlite")
    db.close()
    raw = sqlite3.connect(path)
    try:
        row = raw.execute("SELECT acknowledgement, lift_acknowledgement FROM restores").fetchone()
        assert row == ("ops ticket 7", "all pre-restore transfers terminal")
    finally:
        raw.close()


def test_a_restored_rotation_log_signs_no_epoch_it_does_not_remember(tmp_path: Path) -> None:
    path = tmp_path / "member.sqlite"
    members = (b"\x01" * 20, b"\x02" * 20, b"\x03" * 20)
    log = RotationLog(path)
    known = RotationProposal(2, 2, members, 1_700_000_100, 600)
    log.record(known)
    backup(VERIFIER, path, tmp_path / "m.bak")
    log.record(RotationProposal(3, 2, members, 1_700_000_200, 600))  # forgotten by the restore
    log.close()
    restore(VERIFIER, tmp_path / "m.bak", path, "ack")
    log = RotationLog(path)
    try:
        log.record(known)  # remembered: the same proposal again is fine
        other = RotationProposal(3, 2, members, 1_700_000_300, 600)
        with pytest.raises(StaleRotationLog):
            log.record(other)
        assert log.signed(3) is None
        db = open_member_store(path)
        try:
            assert quarantined(db) is not None
        finally:
            db.close()
    finally:
        log.close()


def test_relayer_checkpoints_restore_and_rewind(tmp_path: Path) -> None:
    path = tmp_path / "relayer.sqlite"
    cp = CheckpointStore(path, "a")
    cp.save(EventPosition(10, 1))
    backup(RELAYER, path, tmp_path / "r.bak")
    cp.save(EventPosition(20, 0))
    assert (
        cli_main(
            ["store", "rewind-checkpoint", "--path", str(path), "--ledger", "a", "--height", "5"]
        )
        == 1
    )  # fmt: skip  (refused: the relayer runs)
    cp.close()
    restore(RELAYER, tmp_path / "r.bak", path)
    cp = CheckpointStore(path, "a")
    try:
        assert cp.load() == EventPosition(10, 1)
    finally:
        cp.close()
    assert cli_main(["store", "rewind-checkpoint", "--path", str(path), "--ledger", "a",
                     "--height", "5"]) == 0  # fmt: skip
    cp = CheckpointStore(path, "a")
    try:
        assert cp.load() == EventPosition(4, 2**31 - 1)  # block 5 itself is re-delivered
    finally:
        cp.close()
