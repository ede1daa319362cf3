"""How many unfinished transfers each source ledger has, and the bound admission holds a
ledger's new transfers to (``max_unfinished_per_ledger``).

Every unfinished transfer costs the one coordinator all institutions share: a driver task,
its reads of both ledgers through the relayers at each step, its records, and (on a
flow-limited lane) a place in the lane's queue that each later transfer's gate counts. A
brokerage may submit any number of transfers its holders' balances cover, each checked
alone (a holder with a million units can send a million transfers of one), so without a
bound one brokerage's submissions could take the coordinator from every other one.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridge.domain.errors import ResourceExhausted

__all__ = ["UnfinishedCounts"]


class UnfinishedCounts:
    """Unfinished transfers per source ledger, counted in memory between the store's counts.

    Guarantees: the supervisor's sweep replaces every figure with the store's count
    (``recount``, at start and every ``sweep_every``), so a drift (a transfer adopted from a
    ledger event, a FAILED one resumed, a write whose outcome was not seen) lasts one sweep
    at most; between sweeps, each transfer admission records adds one and each move of a
    transfer to a terminal state by this coordinator takes one away. ``check`` is a soft
    bound: submissions checked at the same moment (one batch's items, checked concurrently)
    are recorded after all their checks, so a ledger can end up that many above it."""

    __slots__ = ("_counts", "most")

    def __init__(self, most: int | None = None) -> None:
        if most is not None and most <= 0:
            raise ValueError("max_unfinished_per_ledger must be positive")
        self.most = most
        self._counts: dict[str, int] = {}

    def recount(self, counts: Mapping[str, int]) -> None:
        """Take the store's count of unfinished transfers per source ledger (a ledger it
        does not name has none)."""
        self._counts = {ledger: n for ledger, n in counts.items() if n > 0}

    def created(self, ledger: str) -> None:
        """One more unfinished transfer from ``ledger`` was recorded."""
        self._counts[ledger] = self._counts.get(ledger, 0) + 1

    def ended(self, ledger: str) -> None:
        """One unfinished transfer from ``ledger`` reached a terminal state."""
        n = self._counts.get(ledger, 0) - 1
        if n > 0:
            self._counts[ledger] = n
        else:
            self._counts.pop(ledger, None)

    def of(self, ledger: str) -> int:
        """The unfinished transfers from ``ledger`` as counted now."""
        return self._counts.get(ledger, 0)

    def check(self, ledger: str) -> None:
        """Raise ResourceExhausted (retryable) when ``ledger`` already has the most
        unfinished transfers allowed; a new transfer from it may be submitted again once
        some have finished."""
        most = self.most
        if most is not None and self._counts.get(ledger, 0) >= most:
            raise ResourceExhausted(
                f"{most} transfers from ledger {ledger} are unfinished"
                f" (max_unfinished_per_ledger {most}); submit again once some have finished"
            )
