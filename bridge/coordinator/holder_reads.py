"""Coalesced holder reads (issue 14 item 4): admission's per-transfer holder reads become
one ``GetHolders`` per ledger and security.

Admission reads the sender's standing on the source ledger and the recipient's on the
target ledger for every submitted transfer (:mod:`bridge.coordinator.admission`): with a
netted batch of thousands of items, two ``GetHolder`` calls each, most of the
coordinator's unary calls. :class:`HolderReads` coalesces them per (ledger, security) with
the step batcher's :class:`~bridge.coordinator.coalesce.Coalescer`: a read arriving with
none of its key in flight goes out at once (a lone transfer is admitted as fast as
before); reads arriving while one is in flight go out together next, as one
``GetHolders`` (on EVM one lens call), after waiting ``linger_ms`` (``[batching]
read_linger_ms``) for more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from bridge.coordinator.clients import PeerFailed
from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.context import EngineContext
from bridge.domain.errors import Unavailable
from bridge.domain.legs import HolderStatus
from bridge.ledgers.bounded import READ_CONCURRENCY

__all__ = ["ALONE_BUDGET_S", "MAX_READS_PER_CALL", "HolderReads"]

ALONE_BUDGET_S = 30.0
"""Longest the holders of a failed shared read are read alone, all of them together, unless
the coordinator's configured ``rpc_timeout`` (one call's timeout) says otherwise."""

MAX_READS_PER_CALL = 500
"""Most holders one coalesced read asks for (the relayer answers up to 1,000 per call)."""


class HolderReads:
    """Reads holders' standing for many admissions at once.

    Guarantees: each call answers the standing of exactly its holder on its ledger and
    security, read by a ``GetHolders`` that started after the call was made (never an
    answer from a read already in flight, so a balance moved before the call is seen as a
    single read would see it); a read the ledger could not serve (Unavailable) fails every
    call it carried with that error (admission answers each as after a single read: retry);
    any other refusal or failure of a read of several holders (the relayer failing on the
    call, :class:`PeerFailed`, included) is never shared: each holder is read again alone
    and gets its own answer; the same holder asked twice in one read is asked once.
    """

    def __init__(
        self,
        ctx: EngineContext,
        max_in_flight: int,
        max_items: int = MAX_READS_PER_CALL,
        linger_ms: float = 0.0,
        alone_budget_s: float = ALONE_BUDGET_S,
    ) -> None:
        self._ctx = ctx  # its ``relayers`` as they are at each read
        self._alone_budget_s = alone_budget_s
        self._reads: Coalescer[tuple[str, str], str, HolderStatus] = Coalescer(
            self._flush, max_items, max_in_flight, linger_ms
        )

    async def holder(self, ledger: str, security: str, holder: str) -> HolderStatus:
        """``holder``'s standing for ``security`` on ``ledger`` at its finalized height."""
        return await self._reads.call((ledger, security), holder)

    def holder_later(self, ledger: str, security: str, holder: str) -> asyncio.Future[HolderStatus]:
        """:meth:`holder` as a future, queued now (a caller reading two holders awaits
        both futures together, without a task each)."""
        return self._reads.enqueue((ledger, security), holder)

    async def _flush(
        self, key: tuple[str, str], holders: Sequence[str]
    ) -> Sequence[HolderStatus | BaseException]:
        ledger, security = key
        relayer = self._ctx.relayers[ledger]
        unique = list(dict.fromkeys(holders))
        try:
            statuses: Sequence[HolderStatus | BaseException] = await relayer.holders(
                security, unique
            )
        except Exception as exc:
            # SECURITY: a read carries the holders of every brokerage admitting at once; a
            # refusal that is not the ledger being unreachable may be one holder's own (the
            # relayer refuses the whole call for it), and must not refuse the others' final.
            # Each holder is then read alone, so every caller gets its own answer. So is a
            # relayer failing on the call (INTERNAL: PeerFailed): one holder may be what
            # made it fail; only the ledger or relayer being unreachable is shared.
            if _unreachable(exc) or len(unique) == 1:
                raise
            statuses = await self._alone(ledger, relayer, security, unique)
        if len(statuses) != len(unique):  # holders() checks this too; never answer for another
            raise Unavailable(
                f"relayer of {ledger} answered {len(statuses)} holders for {len(unique)}"
            )
        by_holder = dict(zip(unique, statuses, strict=True))
        return [by_holder[h] for h in holders]

    async def _alone(
        self, ledger: str, relayer: Any, security: str, unique: Sequence[str]
    ) -> list[HolderStatus | BaseException]:
        """Each of ``unique`` answered on its own, all within one budget: the failed read's
        holders read again in halves (each a shared read), down to the one holder a
        failure is about, READ_CONCURRENCY reads at a time (review helper-109: not hundreds
        at once on a relayer that has just failed).

        Review helper-118 #6: one holder that makes the shared read fail costs about
        2 x log2(n) shared reads (18 for 500), not n single ones, so the others are answered
        within the budget even over a slow link. SECURITY (review helper-117 #4): a relayer
        that fails every shared read and lets each single read hang would hold the
        (ledger, security) key for ceil(500 / 8) call timeouts; the holders not answered
        within the budget (one call timeout) get Unavailable (retry)."""
        answers: dict[str, HolderStatus | BaseException] = {}
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(holders: Sequence[str]) -> None:
            try:
                async with gate:
                    if len(holders) == 1:
                        answers[holders[0]] = await relayer.holder(security, holders[0])
                        return
                    statuses = await relayer.holders(security, holders)
                if len(statuses) != len(holders):
                    raise Unavailable(f"relayer of {ledger} answered another number of holders")
                answers.update(zip(holders, statuses, strict=True))
            except Exception as exc:
                if len(holders) == 1 or _unreachable(exc):
                    # That holder's own answer; or the relayer or ledger is not answering:
                    # shared by these holders, not split further onto it.
                    answers.update((h, exc) for h in holders)
                    return
                await halves(holders)

        async def halves(holders: Sequence[str]) -> None:
            half = len(holders) // 2
            await asyncio.gather(read(holders[:half]), read(holders[half:]))

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._alone_budget_s):
                await halves(unique)  # the read of them all has just failed
        late = Unavailable(f"relayer of {ledger} did not answer the holders' reads in time")
        return [answers.get(h, late) for h in unique]

    async def close(self) -> None:
        """Cancel every read in flight (the admissions waiting on them are stopping too)."""
        await self._reads.close()


def _unreachable(exc: BaseException) -> bool:
    """The relayer or its ledger did not answer (shared by every holder of the read), as
    opposed to a refusal or failure that may be one holder's own (:class:`PeerFailed`)."""
    return isinstance(exc, Unavailable) and not isinstance(exc, PeerFailed)
