"""How many unfinished transfers each source ledger's brokerage has submitted, and the bound
admission holds a ledger's new transfers to (``max_unfinished_per_ledger``).

Every unfinished transfer costs the one coordinator all institutions share: a driver task,
its reads of both ledgers through the relayers at each step, its records, and (on a
flow-limited lane) a place in the lane's queue that each later transfer's gate counts. A
brokerage may submit any number of transfers its holders' balances cover, each checked
alone (a holder with a million units can send a million transfers of one), so without a
bound one brokerage's submissions could hold an unbounded share of the coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bridge.domain.errors import ResourceExhausted

__all__ = ["UnfinishedCounts"]


class UnfinishedCounts:
    """Unfinished submitted transfers per source ledger, counted in memory between the
    store's counts, and the writes of new ones in flight.

    Guarantees: a new transfer is written only after :meth:`begin_writes` found room for it,
    with no await between that and the count of its write in flight, so concurrent
    submissions (single calls, batches) never take a ledger past the bound together (review
    helper-120 H1: a check before the ledger reads alone let 60 concurrent calls through a
    bound of 3). The supervisor's sweep replaces the counts with the store's (``recount``,
    at start and every ``sweep_every``); a write whose outcome was not seen (cancelled,
    failed) counts as created until then, so the figure may be above the truth for one sweep,
    never below it because of this coordinator's own writes and state changes (a FAILED
    transfer resumed by event intake counts again: ``resumed``). This relies on the
    store's one worker thread: its answers, and so the counts' updates, come in commit
    order, so a recount never misses a write whose answer was applied before it.
    Transfers adopted from a ledger's events are not counted (``MAX_UNFINISHED_ADOPTED``
    bounds them; review helper-120 L1: another organisation's relayer could otherwise
    fill a ledger's room)."""

    __slots__ = ("_counts", "_writing", "most")

    def __init__(self, most: int | None = None) -> None:
        if most is not None and most <= 0:
            raise ValueError("max_unfinished_per_ledger must be positive")
        self.most = most
        self._counts: dict[str, int] = {}
        self._writing: dict[str, int] = {}

    def recount(self, counts: Mapping[str, int]) -> None:
        """Take the store's count of unfinished submitted transfers per source ledger (a
        ledger it does not name has none); writes in flight stay counted apart."""
        self._counts = {ledger: n for ledger, n in counts.items() if n > 0}

    def resumed(self, ledger: str) -> None:
        """A terminal (FAILED) submitted transfer from ``ledger`` is unfinished again."""
        self._counts[ledger] = self._counts.get(ledger, 0) + 1

    def ended(self, ledger: str) -> None:
        """One unfinished submitted transfer from ``ledger`` reached a terminal state."""
        _less(self._counts, ledger)

    def of(self, ledger: str) -> int:
        """The unfinished transfers from ``ledger`` as counted now, writes in flight too."""
        return self._counts.get(ledger, 0) + self._writing.get(ledger, 0)

    def check(self, ledger: str) -> None:
        """Raise ResourceExhausted (retryable) when ``ledger`` has no room for one more (the
        early check, before any ledger is read; :meth:`begin_writes` decides)."""
        if not self._room(ledger):
            raise self.refusal(ledger)

    def refusal(self, ledger: str) -> ResourceExhausted:
        """The refusal of a new transfer from ``ledger`` for want of room."""
        return ResourceExhausted(
            f"at least {self.most} transfers from ledger {ledger} are unfinished"
            f" (max_unfinished_per_ledger {self.most}); submit again once some have finished"
        )

    def begin_writes(self, ledgers: Sequence[str]) -> list[bool]:
        """For new transfers about to be written, one per entry of ``ledgers`` (their source
        ledgers, in order): whether each has room, counting those that have as in flight.
        Each one counted must be ended by exactly one :meth:`end_writes`."""
        fits: list[bool] = []
        for ledger in ledgers:
            fit = self._room(ledger)
            if fit:
                self._writing[ledger] = self._writing.get(ledger, 0) + 1
            fits.append(fit)
        return fits

    def end_writes(self, ledgers: Sequence[str], created: Sequence[bool] | None) -> None:
        """The write of the transfers counted in flight for ``ledgers`` ended: each that
        ``created`` says is new counts as unfinished; with ``created`` None (the write
        failed or was cancelled, perhaps after it committed) every one does, until the
        next recount. A ``created`` of another length than ``ledgers`` is taken as None:
        every entry in flight is ended whatever it holds (review helper-121: an index error
        part-way left writes in flight for good, which no recount clears)."""
        if created is not None and len(created) != len(ledgers):
            created = None
        for i, ledger in enumerate(ledgers):
            _less(self._writing, ledger)
            if created is None or created[i]:
                self._counts[ledger] = self._counts.get(ledger, 0) + 1

    def _room(self, ledger: str) -> bool:
        return self.most is None or self.of(ledger) < self.most


def _less(counts: dict[str, int], ledger: str) -> None:
    """One less for ``ledger`` in ``counts``, never below 0 (a ledger at 0 is dropped)."""
    n = counts.get(ledger, 0) - 1
    if n > 0:
        counts[ledger] = n
    else:
        counts.pop(ledger, None)
