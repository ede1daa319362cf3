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

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.claims import ClaimKind
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import eligible_everywhere
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.ops]

A, B = "brokerage-a", "brokerage-b"
TERMINAL = (S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED)


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(tmp_path_factory.mktemp("restore"), block_time=0.5, transfer_ttl=60) as sys_:
        yield sys_


def store_cli(*args: str) -> dict[str, Any]:
    """``bridge --json store ...`` as an operator runs it; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli.main", "--json", "store", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
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
                       "--acknowledge", "e2e: member disk replaced")  # fmt: skip
    assert member["quarantined"] is True
    assert vote(state / "verifier-0.sqlite", forgotten) is None, "the restore forgot the vote"
    for name in relayers:
        ledger = name.removeprefix("relayer-")
        store_cli("restore", "--store", "relayer", "--path", str(state / f"{name}.sqlite"),
                  "--from", str(backups / f"{name}.bak"))  # fmt: skip
        scanned = restored["scanned"].get(ledger)
        if scanned is not None:  # no further than what the restored coordinator has
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
