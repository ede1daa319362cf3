"""How long the coordinator keeps a batch's record (ADR 0023): the batch id's idempotency
window. Transfers are never deleted; only the batch request's fingerprint and per-item
results are, once older than ``batch_retention_days``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from bridge.aio import wait_event
from bridge.domain.errors import BridgeError
from bridge.logfields import COUNT, get_logger

__all__ = ["PRUNE_EVERY_S", "BatchPruner", "prune_batches"]

PRUNE_EVERY_S = 3600.0
"""How often the active coordinator deletes expired batch records."""

DAY_S = 86_400


class BatchPruner(Protocol):
    """A store that deletes finished batch records (``SqlBatchStore.prune``)."""

    async def prune(self, created_before: float, limit: int = 1000) -> int:
        """Delete at most ``limit`` finished records created before ``created_before``."""
        ...


async def prune_batches(
    store: BatchPruner,
    retention_days: int,
    stop: asyncio.Event,
    every: float = PRUNE_EVERY_S,
    batch_rows: int = 1000,
) -> None:
    """Until ``stop``: every ``every`` seconds (and once at start), delete the finished
    batch records older than ``retention_days``, ``batch_rows`` per statement so no
    transaction holds the table long. A store failure is logged and tried again next
    round; it never stops the coordinator."""
    log = get_logger()
    while not stop.is_set():
        cutoff = time.time() - retention_days * DAY_S
        deleted = 0
        try:
            while not stop.is_set():
                n = await store.prune(cutoff, batch_rows)
                deleted += n
                if n < batch_rows:
                    break
        except BridgeError as exc:
            log.warning("batch records not pruned; next round", error=str(exc))
        if deleted:
            log.info("expired batch records deleted", **{COUNT: deleted}, days=retention_days)
        await wait_event(stop, every)
