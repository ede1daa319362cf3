"""Restore on the live devnet: the coordinator, a member and the relayers are restored from
backups taken while they ran, and the system continues correctly (ADR 0022).

Backups are taken online; a transfer then commits that the restored stores forget. After
the documented procedure (stop, restore, rewind the relayers' checkpoints to the
coordinator's scanned heights, start), the forgotten transfer is found again from the
ledgers' events (the rescan is idempotent), the restored member is quarantined and abstains
from a new transfer's decision (the other three certify it), and signs again once an
operator lifts the quarantine.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.main import main as cli_main
from bridge.coordinator.store import _terms_of
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.claims import ClaimKind
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import eligible_everywhere
from tests.support import eventually_sync
from tests.unit.test_store import legacy_terms_json

pytestmark = [pytest.mark.e2e, pytest.mark.ops]

A, B = "brokerage-a", "brokerage-b"
TERMINAL = (S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED)


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(tmp_path_factory.mktemp("restore"), block_time=0.5, transfer_ttl=60) as sys_:
        yield sys_


def store_cli(*args: str, process: bool = False) -> dict[str, Any]:
    """``bridge --json store ...`` as an operator runs it (in a process of its own with
    ``process``, else in this one: the same code, without the import time); its answer."""
    argv = ["--json", "store", *args]
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "bridge.cli.main", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        code, out = done.returncode, done.stdout + done.stderr
    else:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = cli_main(argv)
        out = buffer.getvalue()
    assert code == 0, out
    answer: dict[str, Any] = json.loads(
        next(line for line in reversed(out.splitlines()) if line.startswith("{"))
    )
    return answer


def submit(s: LocalSystem, sender: DevAccount, recipient: DevAccount) -> str:
    return s.submit(
        S.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()),
            security_id=DEMO_ISIN,
            source_ledger=A,
            target_ledger=B,
            sender=sender.address,
            recipient=recipient.address,
            amount="10",
        )
    )


def get(s: LocalSystem, tid: str) -> S.Transfer | None:
    with s.channel("depository") as ch:
        try:
            return transfer_pb2_grpc.TransferServiceStub(ch).GetTransfer(
                S.GetTransferRequest(transfer_id=tid), timeout=10
            )
        except Exception:  # not (yet) known to the coordinator
            return None


def committed(s: LocalSystem, tid: str, limit: float = 120) -> None:
    def probe() -> S.Transfer | None:
        t = get(s, tid)
        return t if t is not None and t.state in TERMINAL else None

    t = eventually_sync(probe, limit, f"transfer {tid} terminal", interval=0.5)
    assert t.state == S.TRANSFER_STATE_COMMITTED, t


def vote(path: Path, tid: str) -> ClaimKind | None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT decision FROM votes WHERE transfer_id = ?", (bytes.fromhex(tid[2:]),)
        ).fetchone()
        return None if row is None else ClaimKind(int(row[0]))
    finally:
        db.close()


def test_a_restored_system_continues_correctly(s: LocalSystem) -> None:
    state, backups = s.workdir / "state", s.workdir / "backups"
    backups.mkdir()
    relayers = [f"relayer-{name}" for name in s.all_ledgers]
    holder = s.ledgers[A].make_holder(DEMO_ISIN, 100)
    bob = DevAccount.generate()
    eligible_everywhere(s, holder.address)
    eligible_everywhere(s, bob.address)
    first = submit(s, holder, bob)
    committed(s, first)

    # Online backups while every daemon runs.
    store_cli("backup", "--store", "coordinator", "--path", str(state / "coordinator.sqlite"),
              "--to", str(backups / "coordinator.bak"))  # fmt: skip
    store_cli("backup", "--store", "verifier", "--path", str(state / "verifier-0.sqlite"),
              "--to", str(backups / "verifier-0.bak"))  # fmt: skip
    for name in relayers:
        store_cli("backup", "--store", "relayer", "--path", str(state / f"{name}.sqlite"),
                  "--to", str(backups / f"{name}.bak"))  # fmt: skip

    forgotten = submit(s, holder, bob)  # after the backups: the restores forget it
    committed(s, forgotten)
    assert vote(state / "verifier-0.sqlite", forgotten) is ClaimKind.COMMIT

    for name in ["coordinator", "verifier-0", *relayers]:
        s.processes[name].stop()
    restored = store_cli("restore", "--store", "coordinator", "--path",
                         str(state / "coordinator.sqlite"), "--from",
                         str(backups / "coordinator.bak"))  # fmt: skip
    member = store_cli("restore", "--store", "verifier", "--path", str(state / "verifier-0.sqlite"),
                       "--from", str(backups / "verifier-0.bak"),
                       "--acknowledge", "e2e: member disk replaced", process=True)  # fmt: skip
    assert member["quarantined"] is True
    assert vote(state / "verifier-0.sqlite", forgotten) is None, "the restore forgot the vote"
    for name in relayers:
        ledger = name.removeprefix("relayer-")
        store_cli("restore", "--store", "relayer", "--path", str(state / f"{name}.sqlite"),
                  "--from", str(backups / f"{name}.bak"))  # fmt: skip
        scanned = restored["scanned"].get(ledger)
        have = store_cli("info", "--store", "relayer",
                         "--path", str(state / f"{name}.sqlite"))["checkpoints"].get(ledger)  # fmt: skip
        # No further than what the restored coordinator has (block ``scanned`` itself is
        # re-delivered); a checkpoint already behind it is left alone (rewind never skips).
        if scanned is not None and have is not None and have > [scanned - 1, 2**31 - 1]:
            store_cli("rewind-checkpoint", "--path", str(state / f"{name}.sqlite"),
                      "--ledger", ledger, "--height", str(scanned))  # fmt: skip
    for name in ["verifier-0", "coordinator", *relayers]:
        s.start_process(name)

    committed(s, first, limit=30)  # in the backup
    committed(s, forgotten)  # found again from the re-delivered events

    fresh = submit(s, holder, bob)
    committed(s, fresh)  # three members certify it
    assert vote(state / "verifier-1.sqlite", fresh) is ClaimKind.COMMIT
    assert vote(state / "verifier-0.sqlite", fresh) is None, "the quarantined member abstained"

    lifted = store_cli("lift-quarantine", "--path", str(state / "verifier-0.sqlite"),
                       "--acknowledge", "e2e: every pre-restore transfer is terminal")  # fmt: skip
    assert lifted == {"lifted": 1}
    after = submit(s, holder, bob)
    committed(s, after)
    eventually_sync(lambda: vote(state / "verifier-0.sqlite", after), 30, "member 0 signs again")
    s.wait_processes_alive()
    assert s.ledgers[B].balance(DEMO_ISIN, bob.address) == 40


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stores"


def columns(db: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    """Every table's columns (name, declared type), SQLite's own tables excepted."""
    names = [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {n: [(c[1], c[2]) for c in db.execute(f'PRAGMA table_info("{n}")')] for n in names}


def to_previous_release(path: Path, kind: str) -> None:
    """Rewrite the live store ``path`` in the format release 287b48a wrote (checked
    against that release's fixture): drop what versioning added, keep every row."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DROP TABLE store_identity")
        if kind != "coordinator":  # the coordinator was versioned already (ADR 0013)
            db.execute("DROP TABLE schema_version")
        else:  # release 287b48a's coordinator stopped at schema version 3
            db.execute("DROP TABLE coordinator_members")  # version 4 (ADR 0017)
            db.execute("DROP TABLE transfer_batches")  # version 5 (ADR 0023), 7 and 8
            # Version 9 (ADR 0025): batch certificates stored once. This system runs single
            # steps, so no decision names one and the table goes with nothing lost.
            shared = db.execute("SELECT COUNT(*) FROM batch_certificates").fetchone()[0]
            assert shared == 0, "a decision of a batched step has no previous-release form"
            db.execute("DROP TABLE batch_certificates")
            db.execute("ALTER TABLE coordinator_lease DROP COLUMN instance")  # version 6
            # Version 10: terms in the compact form; the previous release wrote JSON.
            for tid, text in db.execute("SELECT transfer_id, terms FROM transfers").fetchall():
                terms, instruction = _terms_of(text)
                db.execute(
                    "UPDATE transfers SET terms = ? WHERE transfer_id = ?",
                    (legacy_terms_json(terms, instruction), tid),
                )
            # Version 11: the target ledger in a column (filled again from the request), and
            # the partial index of adopted transfers.
            db.execute("DROP INDEX transfers_adopted")
            db.execute("ALTER TABLE transfers DROP COLUMN target_ledger")
            db.execute("DELETE FROM schema_version WHERE version > 3")
        if kind == "verifier":
            db.execute("DROP TABLE restores")
            db.execute("DROP TABLE member_identity")
            db.execute("ALTER TABLE votes DROP COLUMN written_by")
            db.execute("ALTER TABLE rotation_votes DROP COLUMN written_by")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        previous = sqlite3.connect(":memory:")
        previous.executescript((FIXTURES / f"{kind}-287b48a.sql").read_text())
        expected = columns(previous)
        previous.close()
        if kind == "coordinator":  # the dump's schema_version rows carry no schema diff
            assert "schema_version" in expected
        assert columns(db) == expected, f"{kind}: not the previous release's format"
    finally:
        db.close()


def test_daemons_upgrade_stores_of_the_previous_release_and_keep_working(
    s: LocalSystem,
) -> None:
    """The coordinator, a member and the relayers are stopped, their live stores rewritten
    in release 287b48a's format (rows kept), and started with this release: each store is
    upgraded at open and the system commits a transfer, the member voting for it."""
    state = s.workdir / "state"
    relayers = [f"relayer-{name}" for name in s.all_ledgers]
    for name in ["coordinator", "verifier-1", *relayers]:
        s.processes[name].stop()
    votes_before = sqlite3.connect(state / "verifier-1.sqlite")
    before = votes_before.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    votes_before.close()
    assert before > 0
    to_previous_release(state / "coordinator.sqlite", "coordinator")
    to_previous_release(state / "verifier-1.sqlite", "verifier")
    for name in relayers:
        to_previous_release(state / f"{name}.sqlite", "relayer")
    for name in ["verifier-1", "coordinator", *relayers]:
        s.start_process(name)

    holder = s.ledgers[A].make_holder(DEMO_ISIN, 20)
    bob = DevAccount.generate()
    eligible_everywhere(s, holder.address)
    eligible_everywhere(s, bob.address)
    tid = submit(s, holder, bob)
    committed(s, tid)
    eventually_sync(lambda: vote(state / "verifier-1.sqlite", tid), 30, "member 1 votes")
    for kind, file in [("coordinator", "coordinator"), ("verifier", "verifier-1"),
                       *[("relayer", name) for name in relayers]]:  # fmt: skip
        info = store_cli("info", "--store", kind, "--path", str(state / f"{file}.sqlite"))
        assert info["schema_version"] == info["latest"], info
    after = sqlite3.connect(f"file:{state / 'verifier-1.sqlite'}?mode=ro", uri=True)
    try:
        assert after.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == before + 1
    finally:
        after.close()
    s.wait_processes_alive()
