"""The verifier's durable vote log: at most one decision per transfer, ever."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed
from bridge.storage.sqlite import immediate, open_durable
from verifiers.policy import ClaimRefused
from verifiers.store import Quarantine, open_member_store, quarantined

__all__ = ["ConflictingVote", "StaleVoteLog", "VoteLog", "immediate", "open_durable"]


class ConflictingVote(PreconditionFailed):
    """Signing would contradict a decision this member already signed."""


class StaleVoteLog(ClaimRefused):
    """The vote log was restored from a backup (quarantined, ADR 0022) and has no decision
    for this transfer, whose outcome no ledger shows applied yet: this member may have
    signed the other decision after the backup was taken, so it signs neither."""


class VoteLog:
    """Records COMMIT/ABORT decisions before any signature leaves the process.

    ``record`` is atomic (one SQLite transaction, fsync'd): after a crash the member
    remembers every decision it may have signed.
    """

    def __init__(self, path: Path, member: bytes | None = None) -> None:
        """Open the member's store at ``path``; with ``member`` (its signing address) the
        store is bound to that member, and refused (WrongOwner) if bound to another."""
        self._db = open_member_store(path, member)

    def record(
        self,
        transfer_id: bytes,
        decision: ClaimKind,
        terms_hash: bytes,
        *,
        confirmed: bool = False,
    ) -> None:
        """Record ``decision``; idempotent for the same decision and terms, else refuses.

        ``confirmed``: a ledger already shows ``decision`` applied for this transfer
        (:func:`verifiers.policy.outcome_applied`). SECURITY: while the log is quarantined
        after a restore, a transfer absent from it is signed only when ``confirmed``
        (StaleVoteLog otherwise, nothing recorded)."""
        if decision not in (ClaimKind.COMMIT, ClaimKind.ABORT):
            raise ValueError("only COMMIT and ABORT are decisions")
        with immediate(self._db):
            row = self._db.execute(
                "SELECT decision, terms_hash FROM votes WHERE transfer_id = ?", (transfer_id,)
            ).fetchone()
            if row is None and not confirmed and quarantined(self._db) is not None:
                raise StaleVoteLog(
                    f"vote log restored from a backup and quarantined: no decision recorded"
                    f" for transfer 0x{transfer_id.hex()} and no ledger shows"
                    f" {decision.name} applied; refusing to sign"
                )
            if row is None:
                self._db.execute(
                    "INSERT INTO votes (transfer_id, decision, terms_hash, at) VALUES (?, ?, ?, ?)",
                    (transfer_id, int(decision), terms_hash, time.time()),
                )
            elif int(row[0]) != int(decision):
                earlier = ClaimKind(int(row[0])).name
                raise ConflictingVote(
                    f"already signed {earlier} for transfer 0x{transfer_id.hex()}"
                )
            elif bytes(row[1]) != terms_hash:
                raise ConflictingVote(
                    f"already signed other terms for transfer 0x{transfer_id.hex()}"
                )

    def quarantine(self) -> Quarantine | None:
        """The unlifted restore that quarantines this log (ADR 0022), or None."""
        return quarantined(self._db)

    def decision(self, transfer_id: bytes) -> ClaimKind | None:
        """The decision recorded for ``transfer_id``, if any."""
        row = self._db.execute(
            "SELECT decision FROM votes WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        return ClaimKind(int(row[0])) if row else None

    def close(self) -> None:
        """Close the database."""
        self._db.close()
