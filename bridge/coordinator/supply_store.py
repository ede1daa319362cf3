"""The coordinator's durable supply feed: registrations, signed records, holds.

The coordinator's database (SQLite or PostgreSQL; ADR 0013) behind the
:class:`SupplyStore` interface.
Every method is one transaction; a method that returns has made its effect durable, so a
record is in the feed before any subscriber sees it and survives a kill -9.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bridge.coordinator.db import Conn, Database, as_database
from bridge.domain.errors import NotFound, PreconditionFailed, StaleVersion
from bridge.domain.issuance import HoldRelease, Registration
from bridge.domain.supply import (
    Assessment,
    Attestation,
    SignedRecord,
    record_from_canonical,
)


@dataclass(frozen=True, slots=True)
class Hold:
    """New transfers of a security are refused until an operator releases this."""

    security: str
    raised_by: int
    """The record sequence that raised it (what a HoldRelease must name)."""
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class StoredRegistration:
    """A registration in force and the operator signature that authorised it."""

    registration: Registration
    signature: bytes
    operator: bytes


@dataclass(frozen=True, slots=True)
class Gate:
    """What admission reads of a security's supply standing (SupplyStore.gate): its
    registration in force and its hold, read together in one snapshot."""

    registration: StoredRegistration | None
    hold: Hold | None


class SupplyStore(Protocol):
    """Durable supply state; see the module docstring."""

    async def registration(self, security: str) -> StoredRegistration | None:
        """The registration in force, or None."""
        ...

    async def register(self, stored: StoredRegistration) -> bool:
        """Apply a registration whose version is one more than the one in force.

        Returns False (changing nothing) when this exact registration is already in force;
        raises PreconditionFailed for any other version.
        """
        ...

    async def registered_securities(self) -> list[str]:
        """Every security with a registration."""
        ...

    async def confirmed(self, security: str) -> dict[str, int]:
        """Per ledger, the registered units the last records confirmed."""
        ...

    async def append(self, signed: SignedRecord, assessment: Assessment, now: float) -> Attestation:
        """Append the next record of its security (sequence = latest + 1, else
        PreconditionFailed); apply the assessment (confirmations, a new hold)."""
        ...

    async def latest(self, security: str) -> Attestation | None:
        """The security's latest record, or None."""
        ...

    async def feed(self, after: int, limit: int) -> list[Attestation]:
        """Records of every security with feed position greater than ``after``."""
        ...

    async def security_feed(self, security: str, after: int, limit: int) -> list[Attestation]:
        """The security's records with sequence greater than ``after``."""
        ...

    async def hold(self, security: str) -> Hold | None:
        """The security's hold, or None."""
        ...

    async def gate(self, security: str) -> Gate:
        """The registration in force and the hold of ``security`` in one read (one
        snapshot): what admission checks of every new transfer."""
        ...

    async def release(self, release: HoldRelease, operator: bytes) -> None:
        """Lift the hold named by ``release``: NotFound if there is none, PreconditionFailed
        if it names another record or the latest record still has a hold reason."""
        ...


_REG_COLS = "body, signature, operator"
_REC_COLS = "feed_seq, body, signatures, alerts, held, hold_reason, at"


def _reg_json(r: Registration) -> str:
    return json.dumps(
        {
            "security": r.security,
            "version": r.version,
            "totals": [[name, str(units)] for name, units in r.totals],
            "issued_at_ms": r.issued_at_ms,
            "note": r.note,
        }
    )


def _reg_from_row(row: tuple[Any, ...]) -> StoredRegistration:
    raw = json.loads(row[0])
    reg = Registration(
        raw["security"],
        int(raw["version"]),
        tuple((str(n), int(u)) for n, u in raw["totals"]),
        int(raw["issued_at_ms"]),
        str(raw["note"]),
    )
    return StoredRegistration(reg, bytes(row[1]), bytes(row[2]))


def _attestation(row: tuple[Any, ...]) -> Attestation:
    feed_seq, body, sigs, alerts, held, hold_reason, at = row
    return Attestation(
        feed_sequence=int(feed_seq),
        signed=SignedRecord(
            record_from_canonical(bytes(body)), tuple(bytes.fromhex(s) for s in json.loads(sigs))
        ),
        alerts=tuple(json.loads(alerts)),
        held=bool(held),
        hold_reason=str(hold_reason),
        published_at=float(at),
    )


def _in_force(db: Conn, security: str) -> StoredRegistration | None:
    row = db.execute(
        f"SELECT {_REG_COLS} FROM supply_registrations WHERE security = ?"  # noqa: S608
        " ORDER BY version DESC LIMIT 1",
        (security,),
    ).fetchone()
    return _reg_from_row(row) if row else None


def _hold(db: Conn, security: str) -> Hold | None:
    row = db.execute(
        "SELECT raised_by, reason, at FROM supply_holds WHERE security = ?", (security,)
    ).fetchone()
    return Hold(security, int(row[0]), str(row[1]), float(row[2])) if row else None


def next_feed_position(db: Conn) -> int:
    """Take the next supply-feed position inside the caller's write transaction.

    SECURITY (ADR 0013, the feed's resume rule): the position comes from the single
    ``supply_feed_head`` row, which this UPDATE locks until the transaction ends. A second
    writer blocks here until the first commits (and then reads its committed value) or
    rolls back (and then reuses the position), so positions are taken in commit order,
    none is skipped and none becomes visible before a smaller one: a subscriber resuming
    "after N" never misses a record. A database sequence (or SQLite AUTOINCREMENT with
    several writers) gives no such guarantee: N+1 can commit, and be read, before N.
    """
    row = db.execute("UPDATE supply_feed_head SET last = last + 1 WHERE id = 1 RETURNING last")
    got = row.fetchone()
    if got is None:
        raise RuntimeError("supply_feed_head is missing (schema below version 2)")
    return int(got[0])


class SqlSupplyStore:
    """SupplyStore on the coordinator's database (SQLite or PostgreSQL); every method is
    one transaction in the database's worker thread, never on the event loop."""

    def __init__(self, db: Database | Path) -> None:
        self._db = as_database(db)

    def close(self) -> None:
        """Release the database (closed with its last store)."""
        self._db.close()

    async def registration(self, security: str) -> StoredRegistration | None:
        """See SupplyStore.registration."""
        return await self._db.read(lambda db: _in_force(db, security))

    async def register(self, stored: StoredRegistration) -> bool:
        """See SupplyStore.register."""
        reg = stored.registration

        def run(db: Conn) -> bool:
            # Serialise registrations with every other feed write (one lock row).
            db.execute("SELECT last FROM supply_feed_head WHERE id = 1" + db.for_update)  # noqa: S608
            current = _in_force(db, reg.security)
            if current is not None and current.registration.digest == reg.digest:
                return False
            in_force = current.registration.version if current else 0
            if reg.version != in_force + 1:
                raise StaleVersion(
                    f"registration version {in_force} of {reg.security} is in force;"
                    f" the next must be version {in_force + 1}, not {reg.version}"
                )
            db.execute(
                "INSERT INTO supply_registrations VALUES (?, ?, ?, ?, ?, ?)",
                (reg.security, reg.version, _reg_json(reg), stored.signature, stored.operator,
                 time.time()),
            )  # fmt: skip
            known = {
                str(name)
                for (name,) in db.execute(
                    "SELECT ledger FROM supply_confirmed WHERE security = ?", (reg.security,)
                ).fetchall()
            }
            for name, units in reg.totals:
                if name in known:
                    continue
                # A first registration states what exists; a ledger added later starts at 0
                # (its units are an issuance still to come).
                start = units if current is None else 0
                db.execute(
                    "INSERT INTO supply_confirmed VALUES (?, ?, ?)",
                    (reg.security, name, str(start)),
                )
            return True

        return await self._db.write(run)

    async def registered_securities(self) -> list[str]:
        """See SupplyStore.registered_securities."""
        rows = await self._db.read(
            lambda db: db.execute("SELECT DISTINCT security FROM supply_registrations").fetchall()
        )
        return [str(r[0]) for r in rows]

    async def confirmed(self, security: str) -> dict[str, int]:
        """See SupplyStore.confirmed."""
        rows = await self._db.read(
            lambda db: db.execute(
                "SELECT ledger, units FROM supply_confirmed WHERE security = ?", (security,)
            ).fetchall()
        )
        return {str(name): int(units) for name, units in rows}

    async def append(self, signed: SignedRecord, assessment: Assessment, now: float) -> Attestation:
        """See SupplyStore.append."""
        record = signed.record

        def run(db: Conn) -> Attestation:
            # The feed position first: its row lock serialises every append (see
            # next_feed_position), so the checks below read a settled state.
            feed_seq = next_feed_position(db)
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(sequence), 0) FROM supply_records WHERE security = ?",
                (record.security,),
            ).fetchone()
            if record.sequence != int(latest) + 1:
                raise PreconditionFailed(
                    f"record {record.security}#{record.sequence} does not follow #{latest}"
                )
            for name, units in assessment.confirmed.items():
                db.execute(
                    "INSERT INTO supply_confirmed VALUES (?, ?, ?) ON CONFLICT(security, ledger)"
                    " DO UPDATE SET units = excluded.units",
                    (record.security, name, str(units)),
                )
            if assessment.hold_reasons:
                db.execute(
                    "INSERT INTO supply_holds VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (record.security, record.sequence, "; ".join(assessment.hold_reasons), now),
                )
            hold = _hold(db, record.security)
            hold_reason = f"held since record #{hold.raised_by}: {hold.reason}" if hold else ""
            db.execute(
                "INSERT INTO supply_records (feed_seq, security, sequence, digest, body,"
                " signatures, alerts, clean, held, hold_reason, at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    feed_seq,
                    record.security,
                    record.sequence,
                    record.digest,
                    record.canonical(),
                    json.dumps([s.hex() for s in signed.signatures]),
                    json.dumps(list(assessment.alerts)),
                    int(not assessment.hold_reasons),
                    int(hold is not None),
                    hold_reason,
                    now,
                ),
            )
            return Attestation(
                feed_seq, signed, assessment.alerts, hold is not None, hold_reason, now
            )

        return await self._db.write(run)

    async def latest(self, security: str) -> Attestation | None:
        """See SupplyStore.latest."""
        row = await self._db.read(
            lambda db: db.execute(
                f"SELECT {_REC_COLS} FROM supply_records WHERE security = ?"  # noqa: S608
                " ORDER BY sequence DESC LIMIT 1",
                (security,),
            ).fetchone()
        )
        return _attestation(row) if row else None

    async def feed(self, after: int, limit: int) -> list[Attestation]:
        """See SupplyStore.feed."""
        rows = await self._db.read(
            lambda db: db.execute(
                f"SELECT {_REC_COLS} FROM supply_records WHERE feed_seq > ?"  # noqa: S608
                " ORDER BY feed_seq LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [_attestation(r) for r in rows]

    async def security_feed(self, security: str, after: int, limit: int) -> list[Attestation]:
        """See SupplyStore.security_feed."""
        rows = await self._db.read(
            lambda db: db.execute(
                f"SELECT {_REC_COLS} FROM supply_records"  # noqa: S608
                " WHERE security = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (security, after, limit),
            ).fetchall()
        )
        return [_attestation(r) for r in rows]

    async def hold(self, security: str) -> Hold | None:
        """See SupplyStore.hold."""
        return await self._db.read(lambda db: _hold(db, security))

    async def gate(self, security: str) -> Gate:
        """See SupplyStore.gate."""
        return await self._db.read(lambda db: Gate(_in_force(db, security), _hold(db, security)))

    async def release(self, release: HoldRelease, operator: bytes) -> None:
        """See SupplyStore.release."""

        def run(db: Conn) -> None:
            db.execute("SELECT last FROM supply_feed_head WHERE id = 1" + db.for_update)  # noqa: S608
            hold = _hold(db, release.security)
            if hold is None:
                raise NotFound(f"{release.security} is not held")
            if hold.raised_by != release.hold_sequence:
                raise PreconditionFailed(
                    f"the hold on {release.security} was raised by record #{hold.raised_by},"
                    f" not #{release.hold_sequence}"
                )
            latest = db.execute(
                "SELECT sequence, clean, alerts FROM supply_records WHERE security = ?"
                " ORDER BY sequence DESC LIMIT 1",
                (release.security,),
            ).fetchone()
            if latest is None or not int(latest[1]):
                reasons = "; ".join(json.loads(latest[2])) if latest else "no record"
                raise PreconditionFailed(
                    f"the latest record of {release.security} (#{latest[0] if latest else 0})"
                    f" still shows a discrepancy: {reasons}. Register the issuance or reverse"
                    " it, wait for a record without it, then release"
                )
            db.execute("DELETE FROM supply_holds WHERE security = ?", (release.security,))
            db.execute(
                "INSERT INTO supply_releases VALUES (?, ?, ?, ?, ?)",
                (release.security, release.hold_sequence, operator, release.note, time.time()),
            )

        await self._db.write(run)


class SqliteSupplyStore(SqlSupplyStore):
    """The supply store on a SQLite file (the embedded default)."""
