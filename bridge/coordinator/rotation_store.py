"""The coordinator's durable record of committee rotations (ADR 0009), in its database
(SQLite or PostgreSQL; ADR 0013).

One proposal per next epoch; per ledger the valid member signatures received, the
assembled certificate and the installing transaction. Every method is one transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.coordinator.db import Conn, Database, as_database
from bridge.coordinator.records import Misbehaviour
from bridge.domain.errors import Conflict
from bridge.domain.legs import SignatureSet
from bridge.domain.rotation import RotationProposal


@dataclass(frozen=True, slots=True)
class LedgerRotation:
    """One ledger's progress on one rotation."""

    ledger: str
    signatures: int
    certificate: SignatureSet | None
    tx_id: str
    installed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class StoredRotation:
    """A proposal as recorded, with the evidence attached and each ledger's progress."""

    proposal: RotationProposal
    removed_member: bytes
    evidence: tuple[Misbehaviour, ...]
    created_at: float
    ledgers: tuple[LedgerRotation, ...]


def _proposal_json(p: RotationProposal) -> str:
    return json.dumps(
        {
            "next_epoch": p.next_epoch,
            "threshold": p.threshold,
            "members": [m.hex() for m in p.members],
            "activation": p.activation,
            "overlap": p.overlap,
        }
    )


def _proposal_from_json(text: str) -> RotationProposal:
    raw = json.loads(text)
    return RotationProposal(
        next_epoch=int(raw["next_epoch"]),
        threshold=int(raw["threshold"]),
        members=tuple(bytes.fromhex(m) for m in raw["members"]),
        activation=int(raw["activation"]),
        overlap=int(raw["overlap"]),
    )


def _evidence_json(items: tuple[Misbehaviour, ...]) -> str:
    return json.dumps(
        [
            {
                "member": m.member.hex(),
                "endpoint": m.endpoint,
                "kind": m.kind,
                "subject": m.subject,
                "detail": m.detail,
                "expected_digest": m.expected_digest.hex(),
                "signed_digest": m.signed_digest.hex(),
                "signature": m.signature.hex(),
                "at": m.at,
            }
            for m in items
        ]
    )


def _evidence_from_json(text: str) -> tuple[Misbehaviour, ...]:
    return tuple(
        Misbehaviour(
            bytes.fromhex(e["member"]),
            e["endpoint"],
            e["kind"],
            e["subject"],
            e["detail"],
            bytes.fromhex(e["expected_digest"]),
            bytes.fromhex(e["signed_digest"]),
            bytes.fromhex(e["signature"]),
            float(e["at"]),
        )
        for e in json.loads(text)
    )


def _get(db: Conn, next_epoch: int) -> StoredRotation | None:
    row = db.execute(
        "SELECT proposal, removed_member, evidence, created_at FROM rotations WHERE next_epoch = ?",
        (next_epoch,),
    ).fetchone()
    if row is None:
        return None
    ledgers = []
    for ledger, cert, tx_id, installed, detail in db.execute(
        "SELECT ledger, certificate, tx_id, installed, detail FROM rotation_ledgers"
        " WHERE next_epoch = ? ORDER BY ledger",
        (next_epoch,),
    ).fetchall():
        (count,) = db.execute(
            "SELECT COUNT(*) FROM rotation_signatures WHERE next_epoch = ? AND ledger = ?",
            (next_epoch, ledger),
        ).fetchone()
        certificate = None
        if cert is not None:
            c = json.loads(cert)
            certificate = SignatureSet(
                int(c["epoch"]), tuple(bytes.fromhex(x) for x in c["signatures"])
            )
        ledgers.append(
            LedgerRotation(
                str(ledger), int(count), certificate, str(tx_id), bool(installed), str(detail)
            )
        )
    return StoredRotation(
        proposal=_proposal_from_json(str(row[0])),
        removed_member=bytes(row[1]),
        evidence=_evidence_from_json(str(row[2])),
        created_at=float(row[3]),
        ledgers=tuple(ledgers),
    )


class SqlRotationStore:
    """Rotations in the coordinator's database (SQLite or PostgreSQL); every method is one
    transaction in the database's worker thread, never on the event loop."""

    def __init__(self, db: Database | Path) -> None:
        self._db = as_database(db)

    def close(self) -> None:
        """Release the database (closed with its last store)."""
        self._db.close()

    async def _write(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        def run(db: Conn) -> None:
            for sql, args in statements:
                db.execute(sql, args)

        await self._db.write(run)

    async def propose(
        self,
        proposal: RotationProposal,
        ledgers: list[str],
        removed_member: bytes,
        evidence: tuple[Misbehaviour, ...],
    ) -> bool:
        """Record ``proposal`` (True) or find the same one recorded (False).

        Raises Conflict when another proposal holds its next epoch: one committee per epoch,
        as the members' rotation vote logs enforce.
        """

        def run(db: Conn) -> bool:
            row = db.execute(
                "SELECT fingerprint FROM rotations WHERE next_epoch = ?",
                (proposal.next_epoch,),
            ).fetchone()
            if row is not None:
                if bytes(row[0]) != proposal.fingerprint:
                    raise Conflict(f"another rotation is proposed for epoch {proposal.next_epoch}")
                return False
            db.execute(
                "INSERT INTO rotations VALUES (?, ?, ?, ?, ?, ?)",
                (
                    proposal.next_epoch,
                    _proposal_json(proposal),
                    proposal.fingerprint,
                    removed_member,
                    _evidence_json(evidence),
                    time.time(),
                ),
            )
            for ledger in ledgers:
                db.execute(
                    "INSERT INTO rotation_ledgers (next_epoch, ledger) VALUES (?, ?)",
                    (proposal.next_epoch, ledger),
                )
            return True

        return await self._db.write(run)

    async def add_signatures(
        self, next_epoch: int, ledger: str, votes: list[tuple[bytes, bytes]]
    ) -> None:
        """Keep valid ``(signer, signature)`` pairs for one ledger (duplicates ignored)."""
        await self._write(
            [
                ("INSERT INTO rotation_signatures VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                 (next_epoch, ledger, signer, sig))
                for signer, sig in votes
            ]
        )  # fmt: skip

    async def signatures(self, next_epoch: int, ledger: str) -> list[bytes]:
        """Every kept signature for one ledger."""
        rows = await self._db.read(
            lambda db: db.execute(
                "SELECT signature FROM rotation_signatures WHERE next_epoch = ? AND ledger = ?"
                " ORDER BY signer",
                (next_epoch, ledger),
            ).fetchall()
        )
        return [bytes(r[0]) for r in rows]

    async def set_certificate(self, next_epoch: int, ledger: str, cert: SignatureSet) -> None:
        """Keep the assembled certificate for one ledger (first one wins)."""
        text = json.dumps({"epoch": cert.epoch, "signatures": [s.hex() for s in cert.signatures]})
        await self._write(
            [
                (
                    "UPDATE rotation_ledgers SET certificate = ? WHERE next_epoch = ?"
                    " AND ledger = ? AND certificate IS NULL",
                    (text, next_epoch, ledger),
                )
            ]
        )

    async def set_installed(self, next_epoch: int, ledger: str, tx_id: str) -> None:
        """Mark the rotation installed on ``ledger`` (as read back from the ledger)."""
        await self._write(
            [
                (
                    "UPDATE rotation_ledgers SET installed = 1, detail = '',"
                    " tx_id = CASE WHEN ? = '' THEN tx_id ELSE ? END"
                    " WHERE next_epoch = ? AND ledger = ?",
                    (tx_id, tx_id, next_epoch, ledger),
                )
            ]
        )

    async def set_detail(self, next_epoch: int, ledger: str, detail: str) -> None:
        """Why the rotation waits on ``ledger``."""
        await self._write(
            [
                (
                    "UPDATE rotation_ledgers SET detail = ? WHERE next_epoch = ? AND ledger = ?",
                    (detail[:500], next_epoch, ledger),
                )
            ]
        )

    async def get(self, next_epoch: int) -> StoredRotation | None:
        """The rotation for ``next_epoch``, or None."""
        return await self._db.read(lambda db: _get(db, next_epoch))

    async def epochs(self, limit: int = 1000) -> list[int]:
        """Recorded next epochs, newest first."""
        rows = await self._db.read(
            lambda db: db.execute(
                "SELECT next_epoch FROM rotations ORDER BY next_epoch DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [int(r[0]) for r in rows]

    async def pending(self) -> list[int]:
        """Next epochs with a ledger not yet installed."""
        rows = await self._db.read(
            lambda db: db.execute(
                "SELECT DISTINCT next_epoch FROM rotation_ledgers WHERE installed = 0"
                " ORDER BY next_epoch"
            ).fetchall()
        )
        return [int(r[0]) for r in rows]


class SqliteRotationStore(SqlRotationStore):
    """The rotation store on a SQLite file (the embedded default)."""
