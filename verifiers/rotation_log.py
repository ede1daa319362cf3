"""The member's durable rotation vote log: at most one committee per next epoch, ever."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.domain.errors import PreconditionFailed
from bridge.domain.rotation import RotationProposal
from bridge.storage.sqlite import immediate
from verifiers.store import open_member_store, quarantined


class ConflictingRotation(PreconditionFailed):
    """Signing would certify a second, different committee for an epoch already signed."""


class StaleRotationLog(ConflictingRotation):
    """The log was restored from a backup (quarantined, ADR 0022) and has no proposal for
    this epoch: this member may have signed another committee for it after the backup."""


class RotationLog:
    """Records the proposal a member certifies for each next epoch before any signature
    leaves the process.

    SECURITY: ``record`` is one SQLite transaction with ``synchronous=FULL``: after a crash
    (kill -9, power loss) the member remembers every rotation it may have signed, so no two
    different committees for one epoch can both gather its signature, on any ledger. The
    same proposal again (another ledger, a retry) is allowed.
    """

    def __init__(self, path: Path) -> None:
        self._db = open_member_store(path)

    def record(self, proposal: RotationProposal) -> None:
        """Record ``proposal`` for its next epoch; idempotent for the same proposal, else
        ConflictingRotation (nothing recorded).

        SECURITY: while the log is quarantined after a restore, an epoch absent from it is
        refused (StaleRotationLog): no ledger state proves this member signed no other
        committee for it after the backup was taken."""
        with immediate(self._db):
            row = self._db.execute(
                "SELECT fingerprint FROM rotation_votes WHERE next_epoch = ?",
                (proposal.next_epoch,),
            ).fetchone()
            if row is None and quarantined(self._db) is not None:
                raise StaleRotationLog(
                    f"rotation log restored from a backup and quarantined: nothing recorded"
                    f" for epoch {proposal.next_epoch}; refusing to sign"
                )
            if row is None:
                self._db.execute(
                    "INSERT INTO rotation_votes (next_epoch, fingerprint, at) VALUES (?, ?, ?)",
                    (proposal.next_epoch, proposal.fingerprint, time.time()),
                )
            elif bytes(row[0]) != proposal.fingerprint:
                raise ConflictingRotation(
                    f"already signed another committee for epoch {proposal.next_epoch}"
                )

    def signed(self, next_epoch: int) -> bytes | None:
        """The fingerprint of the proposal signed for ``next_epoch``, if any."""
        row = self._db.execute(
            "SELECT fingerprint FROM rotation_votes WHERE next_epoch = ?", (next_epoch,)
        ).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        """Close the database."""
        self._db.close()
