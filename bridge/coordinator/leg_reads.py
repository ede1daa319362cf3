"""Coalesced leg reads (issue 14 item 4): the drivers' per-transfer leg reads become one
``GetLegs`` per ledger and side.

Every unfinished transfer's driver reads its source and target legs at finality on every
step (:mod:`bridge.coordinator.stepper`). With many transfers in flight those reads were
one ``GetLeg`` each, through the relayer, to the ledger: most of the relayers' CPU and of
the ledgers' requests. :class:`LegReads` coalesces them per (ledger, leg) with the step
batcher's :class:`~bridge.coordinator.coalesce.Coalescer`: a read arriving with none of its
key in flight goes out at once (a lone transfer reads as fast as before); reads arriving
while one is in flight go out together next, as one ``get_legs`` (one relayer call; on EVM
one lens call, on Fabric a few evaluates), after waiting ``linger_ms`` (``[batching]
read_linger_ms``) for more: drivers woken by one batched step reach their reads a few
event-loop turns apart, and without the wait they split into many small reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.context import EngineContext
from bridge.domain.errors import Unavailable
from bridge.domain.legs import Leg, LegStatus

__all__ = ["MAX_READS_PER_CALL", "LegReads"]

MAX_READS_PER_CALL = 500
"""Most legs one coalesced read asks for (the relayer answers up to 1,000 per GetLegs)."""


class LegReads:
    """Reads legs at finality for many drivers at once.

    Guarantees: each call answers the leg of exactly its transfer id and side, read by a
    ``GetLegs`` that started after the call was made (never an answer from a read already
    in flight, so a driver that has just applied a step sees it once the ledger does);
    a failed read fails every call it carried with the same error (the drivers retry as
    after a single read); the same transfer asked twice in one read is asked once.
    """

    def __init__(
        self,
        ctx: EngineContext,
        max_in_flight: int,
        max_items: int = MAX_READS_PER_CALL,
        linger_ms: float = 0.0,
    ) -> None:
        self._ctx = ctx  # its ``relayers`` as they are at each read
        self._reads: Coalescer[tuple[str, Leg], bytes, LegStatus] = Coalescer(
            self._flush, max_items, max_in_flight, linger_ms
        )

    async def get_leg(self, ledger: str, transfer_id: bytes, leg: Leg) -> LegStatus:
        """The leg of ``transfer_id`` on ``ledger`` at its finalized height."""
        return await self._reads.call((ledger, leg), transfer_id)

    async def get_both(
        self, transfer_id: bytes, source: str, target: str
    ) -> tuple[LegStatus, LegStatus]:
        """The outbound leg of ``transfer_id`` on ``source`` and its inbound leg on
        ``target``, each as :meth:`get_leg` reads it, queued together (no task each)."""
        outbound, inbound = await asyncio.gather(
            self._reads.enqueue((source, Leg.OUTBOUND), transfer_id),
            self._reads.enqueue((target, Leg.INBOUND), transfer_id),
        )
        return outbound, inbound

    async def _flush(
        self, key: tuple[str, Leg], transfer_ids: Sequence[bytes]
    ) -> Sequence[LegStatus | BaseException]:
        ledger, leg = key
        unique = list(dict.fromkeys(transfer_ids))
        legs = await self._ctx.relayers[ledger].get_legs(unique, leg)
        if len(legs) != len(unique):  # get_legs checks this too; never answer for another
            raise Unavailable(f"relayer of {ledger} answered {len(legs)} legs for {len(unique)}")
        by_id = dict(zip(unique, legs, strict=True))
        return [by_id[t] for t in transfer_ids]

    async def close(self) -> None:
        """Cancel every read in flight (their drivers are stopping too)."""
        await self._reads.close()
