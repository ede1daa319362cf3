"""Driver supervision: one supervised task per unfinished transfer, level-triggered.

Each driver loops over the step engine until its transfer is terminal, backing off on
failures (with the reason a brokerage reads) and waking early when told to. A periodic
sweep restarts any missing driver and runs the caller's extra check (event intake's
re-reading of recently FAILED transfers). A crash anywhere is recovered by running the
same loops again on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from bridge.aio import stop_tasks, wait_event
from bridge.coordinator.context import EngineContext
from bridge.coordinator.flow_limits import FlowQueued
from bridge.coordinator.flow_queue import recheck_in
from bridge.coordinator.halts import Halted
from bridge.coordinator.records import TransferOrigin, TransferRecord
from bridge.coordinator.store import UnreadableRecord
from bridge.coordinator.wording import bounded, generic, iso
from bridge.domain.errors import (
    BridgeError,
    LedgerRejected,
    PreconditionFailed,
    Unavailable,
    public_text,
)
from bridge.logfields import ERROR, REASON, TRANSFER
from bridge.obs.tracing import step_span

Advance = Callable[[TransferRecord], Awaitable[bool]]
"""One step of a transfer; True when it is terminal (``Stepper.advance``)."""

ReadRecord = Callable[[bytes], Awaitable[TransferRecord | None]]
"""The record a transfer's next step takes (``Stepper.record_for_step``: the one its last
step left, else read from the store)."""

NoteWait = Callable[[bytes, BaseException], Awaitable[None]]
"""Records what a failed step says about the transfer's wait (``FlowLimits.note_flow_wait``)."""

Sweep = Callable[[], Awaitable[None]]
"""An extra check each supervisor sweep runs after restarting missing drivers."""


def waiting_reason(exc: BaseException, since: float) -> str:
    """Why a transfer waits, as a brokerage may read it: bounded, never a ledger's text."""
    if isinstance(exc, Halted):  # ---- depository halt
        return f"{bounded(str(exc))} (since {iso(since)})"
    if isinstance(exc, LedgerRejected):
        return f"waiting since {iso(since)}: {generic(exc)}"
    return f"waiting since {iso(since)}: {bounded(public_text(exc))}"


class Supervisor:
    """The per-transfer driver tasks and the sweep that keeps one alive for each.

    Guarantees: at most one live driver per transfer; every unfinished transfer in the log
    gets one on start and again after each sweep; a driver stops only when its transfer is
    terminal (or it is cancelled by ``stop``); a failure never ends a driver, it waits
    (bounded exponential backoff, ``max_backoff`` at most) and tries again.
    """

    def __init__(
        self,
        ctx: EngineContext,
        advance: Advance,
        note_wait: NoteWait,
        sweep: Sweep,
        read: ReadRecord,
    ) -> None:
        self._ctx = ctx
        self._advance = advance
        self._read = read
        self._note_wait = note_wait
        self._sweep = sweep
        self._tasks: dict[bytes, asyncio.Task[None]] = {}
        self._wakeups: dict[bytes, asyncio.Event] = {}
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Spawn a driver for every unfinished transfer, then the sweep; returns how many."""
        resumed = await self.respawn_unfinished()
        self._ctx.log.info("coordinator resumed unfinished transfers", count=resumed)
        self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")
        return resumed

    async def respawn_unfinished(self) -> int:
        """Spawn a driver for every unfinished transfer without a live one; returns how many
        transfers are unfinished."""
        # Ids only (issue 14): with tens of thousands in flight, parsing every record at
        # each sweep cost more than the drivers' own reads of them. The same read counts
        # each source ledger's unfinished submissions (max_unfinished_per_ledger).
        unfinished = await self._ctx.store.unfinished_sources()
        submitted = TransferOrigin.SUBMITTED
        self._ctx.unfinished.recount(
            Counter(ledger for _, ledger, origin in unfinished if origin is submitted)
        )
        for tid, _, _ in unfinished:
            self.spawn(tid)
        return len(unfinished)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self._ctx.sweep_every)
            try:
                await self.respawn_unfinished()
                await self._sweep()
            except Exception:
                self._ctx.log.exception("supervisor sweep failed")

    async def stop(self) -> None:
        """Cancel the sweep and the drivers (their work is durable and resumes on start)."""
        sweep, self._supervisor = self._supervisor, None
        await stop_tasks([*([sweep] if sweep is not None else []), *self._tasks.values()])

    def spawn(self, tid: bytes) -> bool:
        """Start a driver for ``tid`` unless one is running; True when this call started
        it (its first step runs at the caller's next await at the earliest)."""
        task = self._tasks.get(tid)
        if task is None or task.done():
            self._wakeups[tid] = asyncio.Event()
            self._tasks[tid] = asyncio.create_task(
                self._drive(tid), name=f"transfer-{tid.hex()[:12]}"
            )
            return True
        return False

    def wake(self, tid: bytes) -> bool:
        """Make the transfer's driver re-read the ledgers now; False when it has none."""
        ev = self._wakeups.get(tid)
        if ev is None:
            return False
        ev.set()
        return True

    def wake_all(self) -> None:
        """Make every driver re-read the ledgers now."""
        for ev in self._wakeups.values():
            ev.set()

    async def _drive(self, tid: bytes) -> None:
        ctx = self._ctx
        failures = 0
        since: float | None = None
        wakeup = self._wakeups[tid]
        log = ctx.log.bind(**{TRANSFER: "0x" + tid.hex()})
        while True:
            try:
                record = await self._read(tid)
                if record is None or record.state.terminal:
                    break
                if await step_span(self._advance, record):  # ---- observability: a span
                    break
                failures, since = 0, None
                continue
            except asyncio.CancelledError:
                raise
            except UnreadableRecord:
                # Its record cannot be parsed (the store logged it once and counts it): no
                # step can be taken and retrying would only log again. The sweep starts a
                # driver again (unfinished_sources), which goes on once the row is repaired.
                break
            except FlowQueued as queued:  # ---- flow limits: waiting is not a failure
                failures, since = 0, None
                # Issue 14: a deep queue sleeps toward its estimate, not max_backoff each.
                delay = recheck_in(
                    queued.retry_in,
                    ctx.max_backoff,
                    ctx.queue_recheck_max,
                    None if queued.deadline is None else queued.deadline - time.time(),
                )
                wakeup.clear()
                await wait_event(wakeup, delay)
                continue
            except (Unavailable, LedgerRejected, PreconditionFailed, BridgeError) as exc:
                failures += 1
                since = since or time.time()
                reason = waiting_reason(exc, since)
                log.warning(
                    "transfer waiting",
                    **{REASON: reason, ERROR: f"{type(exc).__name__}: {str(exc)[:2000]}"},
                )
                with contextlib.suppress(Exception):
                    await ctx.store.set_reason(tid, reason)
                    await self._note_wait(tid, exc)
            except Exception as exc:
                failures += 1
                since = since or time.time()
                log.exception("driver error")
                with contextlib.suppress(Exception):
                    await ctx.store.set_reason(
                        tid, f"internal error, retrying: {type(exc).__name__}"
                    )
            delay = min(ctx.max_backoff, 0.25 * 2 ** min(failures, 8))
            wakeup.clear()
            await wait_event(wakeup, delay)
        self._tasks.pop(tid, None)
        self._wakeups.pop(tid, None)
