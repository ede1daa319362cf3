"""The verifier's durable vote log: at most one decision per transfer, ever."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed
from bridge.storage.sqlite import immediate, open_durable
from verifiers.policy import ClaimRefused
from verifiers.store import Quarantine, open_member_store, quarantined

__all__ = [
    "ConflictingVote",
    "StaleVoteLog",
    "Vote",
    "VoteLog",
    "VotesRefused",
    "immediate",
    "open_durable",
]


class ConflictingVote(PreconditionFailed):
    """Signing would contradict a decision this member already signed."""


class StaleVoteLog(ClaimRefused):
    """The vote log was restored from a backup (quarantined, ADR 0022) and has no decision
    for this transfer, whose outcome no ledger shows applied yet: this member may have
    signed the other decision after the backup was taken, so it signs neither."""


@dataclass(frozen=True, slots=True)
class Vote:
    """One COMMIT/ABORT decision to record; ``confirmed``: a ledger already shows it
    applied (:func:`verifiers.policy.outcome_applied`)."""

    transfer_id: bytes
    decision: ClaimKind
    terms_hash: bytes
    confirmed: bool = False


class VotesRefused(PreconditionFailed):
    """Some votes of a batch were refused (by index); none of the batch was recorded."""

    def __init__(self, refused: Mapping[int, PreconditionFailed]) -> None:
        super().__init__(f"{len(refused)} votes refused; nothing recorded")
        self.refused = dict(refused)


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
        with immediate(self._db):
            self._record(Vote(transfer_id, decision, terms_hash, confirmed))

    def record_many(self, votes: Sequence[Vote]) -> None:
        """Record every vote of one signed batch in ONE transaction, or none of them.

        Each vote follows :meth:`record`'s rule (idempotent for the same decision and
        terms; ConflictingVote for the other decision or other terms; StaleVoteLog while
        quarantined). SECURITY: if any vote is refused the transaction rolls back and
        VotesRefused lists every refused vote by its index, so a batch is signed only after
        all of its decisions are durable, and a refused batch leaves no decision behind.
        """
        with immediate(self._db):
            refused: dict[int, PreconditionFailed] = {}
            for i, vote in enumerate(votes):
                try:
                    self._record(vote)
                except PreconditionFailed as exc:
                    refused[i] = exc
            if refused:
                raise VotesRefused(refused)

    def _record(self, vote: Vote) -> None:
        """Check and insert one vote inside the caller's transaction."""
        transfer_id, decision, terms_hash = vote.transfer_id, vote.decision, vote.terms_hash
        if decision not in (ClaimKind.COMMIT, ClaimKind.ABORT):
            raise ValueError("only COMMIT and ABORT are decisions")
        row = self._db.execute(
            "SELECT decision, terms_hash FROM votes WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        if row is None and not vote.confirmed and quarantined(self._db) is not None:
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
            raise ConflictingVote(f"already signed {earlier} for transfer 0x{transfer_id.hex()}")
        elif bytes(row[1]) != terms_hash:
            raise ConflictingVote(f"already signed other terms for transfer 0x{transfer_id.hex()}")

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
