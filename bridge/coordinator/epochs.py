"""The coordinator's view of which committee epochs each ledger accepts (ADR 0009).

The network file's committee is only the genesis epoch (trust anchor); the live committee
of each ledger is read from the ledger itself, through its relayer (``GetCommittees``), and
re-read after a short time or at once when a ledger refuses a certificate's epoch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from bridge.core.reasons import ErrorReason
from bridge.domain.committee import Committee, EpochWindow
from bridge.domain.errors import Unavailable
from bridge.domain.rotation import accepted_epochs, preferred_epoch

RECERTIFY_REASONS: frozenset[str] = frozenset(
    {
        ErrorReason.WRONG_EPOCH,
        ErrorReason.EPOCH_NOT_ACTIVE,
        ErrorReason.NOT_COMMITTEE_MEMBER,
        ErrorReason.TOO_FEW_SIGNATURES,
    }
)
"""Ledger refusals of a certificate that a rotation explains: the same claim is gathered
again under the epoch the ledger accepts now (the decision never changes)."""


class CommitteeSource(Protocol):
    """Reads one ledger's accepted epochs (a relayer gateway)."""

    ledger: str

    async def committees(self) -> tuple[EpochWindow, ...]:
        """The epochs the ledger accepts now or will, ascending."""
        ...


class EpochTracker:
    """Per ledger, the accepted epochs as last read (at most ``ttl`` seconds old).

    Guarantees: :meth:`committee` returns an epoch the ledger reported as accepted at its
    finalized height within ``ttl`` seconds (the newest one active, see
    :func:`bridge.domain.rotation.preferred_epoch`); before any read succeeds it returns the
    network file's genesis committee only when the ledger reports nothing else.
    """

    def __init__(
        self, genesis: Committee, sources: Mapping[str, CommitteeSource], ttl: float = 2.0
    ) -> None:
        self._genesis = genesis
        self._sources = dict(sources)
        self._ttl = ttl
        self._cache: dict[str, tuple[float, tuple[EpochWindow, ...]]] = {}

    @property
    def genesis(self) -> Committee:
        """The network file's committee: the trust anchor."""
        return self._genesis

    async def windows(self, ledger: str, fresh: bool = False) -> tuple[EpochWindow, ...]:
        """The ledger's accepted epochs (read again when older than ``ttl`` or ``fresh``)."""
        now = time.monotonic()
        cached = self._cache.get(ledger)
        if cached is not None and not fresh and now - cached[0] < self._ttl:
            return cached[1]
        windows = await self._sources[ledger].committees()
        if not windows:
            raise Unavailable(f"ledger {ledger} reports no committee epoch")
        self._cache[ledger] = (now, windows)
        return windows

    def invalidate(self, ledger: str) -> None:
        """Forget the ledger's epochs: the next use reads them again."""
        self._cache.pop(ledger, None)

    async def committee(self, ledger: str) -> Committee:
        """The epoch to gather ``ledger``'s certificates of (newest active one)."""
        return preferred_epoch(await self.windows(ledger), time.time())

    async def accepted(self, ledgers: list[str]) -> dict[str, tuple[Committee, ...]]:
        """For each ledger, the epochs it accepts now, the preferred one first (a
        certificate is taken of whichever reaches its threshold first in that order, so a
        member whose cache still shows only the old epoch delays nothing)."""
        now = time.time()
        return {name: accepted_epochs(await self.windows(name), now) for name in ledgers}

    async def common(self) -> Committee:
        """The newest epoch every ledger prefers or has passed: what supply records are
        signed under (a depository checks one epoch per record)."""
        prefs = [await self.committee(name) for name in self._sources]
        return min(prefs, key=lambda c: c.epoch) if prefs else self._genesis
