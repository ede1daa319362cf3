"""``bridge store info|backup|restore|lift-quarantine|rewind-checkpoint``: the stores.

Local commands on a daemon's SQLite file (no coordinator needed). ``backup`` runs while the
daemon runs; ``restore`` and ``rewind-checkpoint`` refuse while a daemon has the store open.
A PostgreSQL coordinator database is backed up with PostgreSQL's tools (pg_dump,
pg_basebackup; ``docs/operators/backup-and-restore.md``). Exit codes: 0 done, 1 refused
(the reason is printed), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.coordinator import schema as coordinator_schema
from bridge.coordinator.db import is_postgres_url, open_sqlite
from bridge.logfields import get_logger
from bridge.storage.backup import (
    BackupInfo,
    StoreKind,
    backup,
    check_kind,
    has_table,
    restore,
    schema_version_of,
)
from bridge.storage.migrations import Migration, StoreError
from bridge.storage.schema import Schema, canonical_sqlite, inspect
from bridge.storage.sqlite import immediate, migrate_sqlite, open_durable
from relayers import checkpoint as relayer_store
from verifiers import store as member_store


def _prepare_coordinator(path: Path, info: BackupInfo, acknowledgement: str) -> int:
    db = open_sqlite(path)
    try:
        return db.run_sync(coordinator_schema.current_version)
    finally:
        db.close()


def _prepare_member(path: Path, info: BackupInfo, acknowledgement: str) -> int:
    db = open_durable(path, lock=False)
    try:
        version = migrate_sqlite(db, member_store.KIND, member_store.MIGRATIONS)
        with immediate(db):
            member_store.enter_quarantine(db, info.taken_at, acknowledgement)
        # SECURITY (review s17 finding 1): the restore is published only if the store
        # reads back as quarantined (whatever the file holds, nothing may undo it).
        if member_store.quarantined(db) is None:
            raise member_store.QuarantineNotEntered(
                "the restored member store does not read back as quarantined: refused"
            )
        return version
    finally:
        db.close()


def _prepare_relayer(path: Path, info: BackupInfo, acknowledgement: str) -> int:
    db = open_durable(path, lock=False)
    try:
        return migrate_sqlite(db, relayer_store.KIND, relayer_store.MIGRATIONS)
    finally:
        db.close()


def _schema(kind: str, migrations: tuple[Migration[Any], ...]) -> Callable[[int], Schema]:
    return lambda version: canonical_sqlite(kind, migrations, version)


KINDS: dict[str, StoreKind] = {
    "coordinator": StoreKind(
        "coordinator",
        "transfers",
        coordinator_schema.LATEST,
        _prepare_coordinator,
        coordinator_schema.canonical_sqlite,
    ),
    "verifier": StoreKind(
        "verifier",
        "votes",
        member_store.MIGRATIONS[-1].version,
        _prepare_member,
        _schema(member_store.KIND, member_store.MIGRATIONS),
        acknowledge=True,
        owner=member_store.bound_member,
    ),
    "relayer": StoreKind(
        "relayer",
        "checkpoint",
        relayer_store.MIGRATIONS[-1].version,
        _prepare_relayer,
        _schema(relayer_store.KIND, relayer_store.MIGRATIONS),
    ),
}
"""Every kind of store these commands handle."""


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``store`` command group."""
    st = top.add_parser("store", help="inspect, back up and restore a daemon's store")
    sp = st.add_subparsers(dest="cmd", required=True)

    def kind_and_path(p: argparse.ArgumentParser, kinds: list[str]) -> None:
        p.add_argument("--store", choices=kinds, required=len(kinds) > 1, default=kinds[0])
        p.add_argument("--path", type=Path, required=True, help="the daemon's store file")

    every = sorted(KINDS)
    kind_and_path(sp.add_parser("info", help="kind, schema version, quarantine"), every)
    b = sp.add_parser("backup", help="consistent copy while the daemon runs (online API)")
    kind_and_path(b, every)
    b.add_argument("--to", type=Path, required=True, help="the backup file (must not exist)")
    r = sp.add_parser("restore", help="replace a stopped daemon's store by a backup")
    kind_and_path(r, every)
    r.add_argument("--from", dest="source", type=Path, required=True, help="the backup file")
    r.add_argument(
        "--acknowledge",
        default="",
        help="verifier: who restores and why (recorded; the member is quarantined)",
    )
    q = sp.add_parser("lift-quarantine", help="end a restored member's quarantine (recorded)")
    kind_and_path(q, ["verifier"])
    q.add_argument("--acknowledge", required=True, help="who lifts it and on what evidence")
    w = sp.add_parser("rewind-checkpoint", help="move a stopped relayer's checkpoint back")
    kind_and_path(w, ["relayer"])
    w.add_argument("--ledger", required=True)
    w.add_argument(
        "--height",
        type=int,
        required=True,
        help="the restored coordinator's scanned height: block HEIGHT itself is re-delivered",
    )
    w.add_argument(
        "--force",
        action="store_true",
        help="also move forward, add a ledger or create a missing store (skips events)",
    )


def _info(path: Path, kind: StoreKind) -> dict[str, object]:
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    db = inspect(path)  # reads only; leaves no -wal/-shm behind
    try:
        check_kind(db, kind)
        out: dict[str, object] = {
            "store": kind.name,
            "schema_version": schema_version_of(db),
            "latest": kind.latest,
        }
        if kind.name == "verifier" and has_table(db, "restores"):
            rows = db.execute(
                "SELECT restored_at, backup_taken_at, acknowledgement FROM restores"
                " WHERE lifted_at IS NULL ORDER BY id"
            ).fetchall()
            out["quarantined"] = [
                {"restored_at": r[0], "backup_taken_at": r[1], "acknowledgement": r[2]}
                for r in rows
            ]
        if kind.name == "coordinator" and has_table(db, "ledger_progress"):
            out["scanned"] = dict(db.execute("SELECT ledger, scanned FROM ledger_progress"))
        if kind.name == "relayer" and has_table(db, "checkpoint"):
            out["checkpoints"] = {
                r[0]: [r[1], r[2]] for r in db.execute("SELECT ledger, height, idx FROM checkpoint")
            }
        return out
    finally:
        db.close()


def _lift(path: Path, acknowledgement: str) -> int:
    if not acknowledgement.strip():  # before the store is even opened (review s17 finding 8)
        raise member_store.AcknowledgementMissing(
            "lifting a quarantine needs a non-empty --acknowledge"
        )
    db = member_store.open_member_store(path, create=False)
    try:
        lifted = member_store.lift_quarantine(db, acknowledgement)
    finally:
        db.close()
    get_logger(store="verifier").warning(
        "quarantine lifted", store_path=str(path), lifted=lifted, acknowledgement=acknowledgement
    )
    return lifted


def run(a: argparse.Namespace) -> int:
    """Run one ``store`` command; returns the exit code."""
    if is_postgres_url(str(a.path)):
        print(
            "error: a PostgreSQL coordinator database is backed up and restored with"
            " pg_dump/pg_restore or pg_basebackup (docs/operators/backup-and-restore.md)",
            file=sys.stderr,
        )
        return 2
    kind = KINDS[a.store]
    out: dict[str, object]
    try:
        if a.cmd == "info":
            out = _info(a.path, kind)
        elif a.cmd == "backup":
            info = backup(kind, a.path, a.to)
            out = {"backup": str(a.to), "store": info.kind, "schema_version": info.schema_version,
                   "taken_at": info.taken_at}  # fmt: skip
        elif a.cmd == "restore":
            result = restore(kind, a.source, a.path, a.acknowledge)
            out = {
                "restored": str(a.path),
                "store": kind.name,
                "backup_taken_at": result.info.taken_at,
                "schema_version": result.schema_version,
                "previous": str(result.previous) if result.previous else None,
                "quarantined": kind.acknowledge,
            }
            if kind.name == "coordinator":
                out["scanned"] = _info(a.path, kind).get("scanned", {})
                out["next"] = (
                    "rewind every relayer's checkpoint to at most these heights"
                    " (bridge store rewind-checkpoint) before starting the relayers"
                )
        elif a.cmd == "lift-quarantine":
            out = {"lifted": _lift(a.path, a.acknowledge)}
        else:  # rewind-checkpoint
            to = relayer_store.rewind_position(a.height)
            before = relayer_store.rewind(a.path, a.ledger, to, force=a.force)
            out = {
                "ledger": a.ledger,
                "height": a.height,
                "checkpoint": [to.height, to.index],
                "was": [before.height, before.index] if before else None,
            }
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, sort_keys=True) if a.json else _text(out))
    return 0


def _text(out: dict[str, object]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in out.items())
