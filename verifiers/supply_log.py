"""The verifier's durable memory of the supply records it signed, per security.

It never signs a lower sequence than it signed before, lower heights on any ledger, or an
older registration version: a coordinator cannot make the committee rewrite history, and
a replayed registration cannot roll the registered totals back.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from bridge.domain.errors import PreconditionFailed
from bridge.domain.supply import SupplyRecord


class SupplyRefused(PreconditionFailed):
    """Signing this record would contradict what this member signed before."""


class SupplyLog:
    """Per security: the last sequence, heights and registration version signed.

    ``check_and_record`` is one fsync'd SQLite transaction that completes before the
    signature leaves the process.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS supply_signed ("
            " security TEXT PRIMARY KEY, sequence INTEGER NOT NULL, digest BLOB NOT NULL,"
            " heights TEXT NOT NULL, registration_version INTEGER NOT NULL, at REAL NOT NULL)"
        )

    def check_and_record(self, record: SupplyRecord) -> None:
        """Record ``record`` as signed, or raise SupplyRefused saying what it would undo.

        The same sequence as the last one signed is allowed (the coordinator re-proposes
        its tip after a crash), as long as no height or version goes back.
        """
        heights = {r.ledger: r.height for r in record.readings}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT sequence, digest, heights, registration_version FROM supply_signed"
                " WHERE security = ?",
                (record.security,),
            ).fetchone()
            if row is not None:
                last_seq, last_digest, last_heights, last_version = row
                before = json.loads(last_heights)
                if bytes(last_digest) != record.digest:
                    self._refuse_regression(record, int(last_seq), before, int(last_version))
                # Remember every ledger ever attested, even one a later record leaves out.
                heights = {**before, **heights}
            self._db.execute(
                "INSERT INTO supply_signed VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(security)"
                " DO UPDATE SET sequence = excluded.sequence, digest = excluded.digest,"
                " heights = excluded.heights,"
                " registration_version = excluded.registration_version, at = excluded.at",
                (
                    record.security,
                    record.sequence,
                    record.digest,
                    json.dumps(heights, sort_keys=True),
                    record.registration_version,
                    time.time(),
                ),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @staticmethod
    def _refuse_regression(
        record: SupplyRecord, last_seq: int, last_heights: dict[str, int], last_version: int
    ) -> None:
        where = f"{record.security}#{record.sequence}"
        if record.sequence < last_seq:
            raise SupplyRefused(f"{where}: already signed sequence {last_seq} of this security")
        if record.registration_version < last_version:
            raise SupplyRefused(
                f"{where}: registration version {record.registration_version} is older than"
                f" version {last_version} already attested"
            )
        for r in record.readings:
            before = last_heights.get(r.ledger)
            if before is not None and r.height < before:
                raise SupplyRefused(
                    f"{where}: {r.ledger} height {r.height} is below height {before}"
                    " already attested"
                )

    def registration_version(self, security: str) -> int:
        """The highest registration version this member attested for ``security`` (0: none)."""
        row = self._db.execute(
            "SELECT registration_version FROM supply_signed WHERE security = ?", (security,)
        ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the database."""
        self._db.close()
