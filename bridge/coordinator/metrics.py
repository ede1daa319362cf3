"""The coordinator's Prometheus metrics (ADR 0016).

Gauges are recomputed from the stores every refresh (they survive restarts and never
drift from what the store says); latency histograms are observed by the engine at each
state change (:func:`observe_transition`, a no-op until :func:`install`). Labels: state
and reason enums, ledger names and securities of the network file only.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from prometheus_client import Gauge, Histogram

from bridge.aio import wait_event
from bridge.coordinator.halts import HaltBook
from bridge.coordinator.records import StateWrite, TransferRecord
from bridge.coordinator.store import (
    TransferStore,
    UnfinishedSummary,
    UnreadableReporter,
    summarise,
)
from bridge.coordinator.supply_store import SupplyStore
from bridge.coordinator.unfinished_counts import UnfinishedCounts
from bridge.domain.flow import WaitReason
from bridge.domain.transfer import TransferState
from bridge.logfields import ERROR, get_logger
from bridge.obs.metrics import PHASE_BUCKETS, CommonMetrics
from bridge.obs.readiness import Probe

HALT_SCAN_LIMIT = 1000
"""At most this many unfinished transfers are checked against the halt book per refresh."""
REFRESH_FLOOR_S = 5.0
"""The store-derived gauges are recomputed at most this often (a scrape every 15-60 s
needs no more), however short the readiness ``probe_interval``."""


@runtime_checkable
class StateCounter(Protocol):
    """A store that can count transfers per state in one query."""

    async def count_by_state(self) -> dict[TransferState, int]:
        """Transfers per state."""
        ...


@runtime_checkable
class UnfinishedCounter(Protocol):
    """A store that summarises its unfinished transfers in the database."""

    async def unfinished_summary(self, created_before: float) -> UnfinishedSummary:
        """Stuck count, oldest creation time and waits of the unfinished transfers."""
        ...


@runtime_checkable
class UnfinishedView(Protocol):
    """What the metrics read from the engine about each ledger's unfinished submissions."""

    @property
    def unfinished(self) -> UnfinishedCounts:
        """The engine's count per source ledger and its bound."""
        ...


class HaltView(Protocol):
    """What the metrics read from the engine about halts."""

    async def halted_on(self, record: TransferRecord) -> list[str]:
        """Ledgers where the record's security is halted now."""
        ...


class CoordinatorMetrics:
    """Every coordinator metric, registered on ``common.registry``."""

    def __init__(self, common: CommonMetrics, transfer_ttl: float) -> None:
        reg = common.registry
        self.common = common
        self._ttl = transfer_ttl
        self.transfers = Gauge(
            "kstb_transfers", "Transfers the coordinator holds, per state.", ["state"],
            registry=reg,
        )  # fmt: skip
        self.stuck = Gauge(
            "kstb_transfers_stuck",
            "Unfinished transfers older than the transfer TTL (operator attention).",
            registry=reg,
        )
        self.waiting = Gauge(
            "kstb_transfers_flow_waiting",
            "Unfinished transfers waiting on a flow limit, per wait reason.",
            ["reason"],
            registry=reg,
        )
        self.halted = Gauge(
            "kstb_transfers_halted",
            "Unfinished transfers whose security is halted on one of their ledgers.",
            registry=reg,
        )
        self.oldest = Gauge(
            "kstb_transfers_oldest_unfinished_age_seconds",
            "Age of the oldest unfinished transfer (0 when none).",
            registry=reg,
        )
        self.phase = Histogram(
            "kstb_transfer_phase_seconds",
            "Time spent in a state before the next one (submit->locked->prepared->committed).",
            ["from_state", "to_state"],
            buckets=PHASE_BUCKETS,
            registry=reg,
        )
        self.scanned = Gauge(
            "kstb_coordinator_scanned_height",
            "Highest block each relayer reported scanned to the coordinator.",
            ["ledger"],
            registry=reg,
        )
        self.supply_sequence = Gauge(
            "kstb_supply_records_published",
            "Sequence of the last supply record published per security (records so far).",
            ["security"],
            registry=reg,
        )
        self.feed_age = Gauge(
            "kstb_supply_feed_age_seconds",
            "Seconds since the last supply record of each security was published.",
            ["security"],
            registry=reg,
        )
        self.holds = Gauge(
            "kstb_supply_hold",
            "1 while new transfers of the security are held by a supply alert.",
            ["security"],
            registry=reg,
        )
        self.unreadable = Gauge(
            "kstb_transfer_rows_unreadable",
            "Transfer rows this coordinator found it cannot parse and has not read again"
            " since (left out of its sweeps; operator attention).",
            registry=reg,
        )
        self.halt_orders = Gauge(
            "kstb_halt_orders", "Depository orders per delivery state.", ["state"], registry=reg
        )
        self.unfinished_submitted = Gauge(
            "kstb_transfers_unfinished_submitted",
            "Unfinished transfers submitted from each source ledger, as admission counts them"
            " against max_unfinished_per_ledger (writes in flight included).",
            ["ledger"],
            registry=reg,
        )
        self.unfinished_bound = Gauge(
            "kstb_unfinished_per_ledger_bound",
            "max_unfinished_per_ledger: past it a ledger's new transfers are refused"
            " RESOURCE_EXHAUSTED (0: no bound).",
            registry=reg,
        )
        self._log = get_logger()

    # -- observed by the engine --------------------------------------------------------------
    def transition(self, write: StateWrite, now: float) -> None:
        """Observe the time a transfer spent in the state ``write`` moved it from (the
        store's, since its ``previous_at``) before the state it recorded."""
        before, after = write.previous, write.record.state
        if before is after:
            return
        self.phase.labels(before.name, after.name).observe(max(0.0, now - write.previous_at))

    # -- recomputed from the stores ----------------------------------------------------------
    async def refresh(
        self,
        store: TransferStore,
        engine: HaltView,
        supply: SupplyStore | None,
        halts: HaltBook | None,
        ledgers: Iterable[str],
        securities: Iterable[str],
    ) -> None:
        """Recompute every gauge from the stores: counted by the database where the store
        can (no unfinished record parsed but the first :data:`HALT_SCAN_LIMIT`, for the
        halted gauge), else one pass over the unfinished transfers."""
        now = time.time()
        unfinished: list[TransferRecord] | None = None
        if isinstance(store, UnfinishedCounter):
            summary = await store.unfinished_summary(now - self._ttl)
            scanned = await store.unfinished(limit=HALT_SCAN_LIMIT)
        else:
            unfinished = await store.unfinished()
            summary = summarise(unfinished, now - self._ttl)
            scanned = unfinished[:HALT_SCAN_LIMIT]
        counts: Mapping[TransferState, int]
        if isinstance(store, StateCounter):
            counts = await store.count_by_state()
        else:  # a store without the count: unfinished states only
            if unfinished is None:
                unfinished = await store.unfinished()
            counts = Counter(r.state for r in unfinished)
        for state in TransferState:
            self.transfers.labels(state.name).set(counts.get(state, 0))
        self.stuck.set(summary.stuck)
        if isinstance(store, UnreadableReporter):
            self.unreadable.set(store.unreadable.count)
        oldest = summary.oldest_created_at
        self.oldest.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        for reason in WaitReason:
            if reason is not WaitReason.NONE:
                self.waiting.labels(reason.name).set(summary.waits.get(reason, 0))
        halted = 0
        for r in scanned:
            if await engine.halted_on(r):
                halted += 1
        self.halted.set(halted)
        per_ledger = engine.unfinished if isinstance(engine, UnfinishedView) else None
        for ledger in ledgers:
            height = await store.scanned_height(ledger)
            if height is not None:
                self.scanned.labels(ledger).set(height)
            if per_ledger is not None:
                self.unfinished_submitted.labels(ledger).set(per_ledger.of(ledger))
        if per_ledger is not None:
            self.unfinished_bound.set(per_ledger.most or 0)
        if supply is not None:
            for security in securities:
                latest = await supply.latest(security)
                if latest is not None:
                    self.supply_sequence.labels(security).set(latest.signed.record.sequence)
                    self.feed_age.labels(security).set(max(0.0, now - latest.published_at))
                self.holds.labels(security).set(1 if await supply.hold(security) else 0)
        if halts is not None:
            by_state = Counter(r.state.name for r in await halts.orders())
            for name in ("PENDING", "APPLIED", "REFUSED", "EXPIRED"):
                self.halt_orders.labels(name).set(by_state.get(name, 0))

    async def run(
        self,
        stop: asyncio.Event,
        interval: float,
        store: TransferStore,
        engine: HaltView,
        supply: SupplyStore | None,
        halts: HaltBook | None,
        ledgers: Iterable[str],
        securities: Iterable[str],
    ) -> None:
        """Refresh every ``interval`` seconds until ``stop``; a failed refresh is logged and
        retried (readiness reports a lost store)."""
        ledgers, securities = list(ledgers), list(securities)
        interval = max(interval, REFRESH_FLOOR_S)
        while not stop.is_set():
            try:
                await self.refresh(store, engine, supply, halts, ledgers, securities)
            except Exception as exc:
                self._log.warning("metrics refresh failed", **{ERROR: repr(exc)[:300]})
            await wait_event(stop, interval)


_installed: CoordinatorMetrics | None = None


def install(metrics: CoordinatorMetrics | None) -> None:
    """Make :func:`observe_transition` record into ``metrics`` (None: stop recording)."""
    global _installed  # noqa: PLW0603 - one coordinator per process
    _installed = metrics


def observe_transition(write: StateWrite) -> None:
    """The engine's one-line hook at each state change (no-op when metrics are off)."""
    if _installed is not None:
        _installed.transition(write, time.time())


def coordinator_probes(store: TransferStore) -> list[Probe]:
    """Readiness: the coordinator serves while its store answers (it can then accept and
    record transfers; each driver waits for the ledgers it needs). Relayers are *not*
    probed from here: one ledger down must not take submissions for every other pair of
    ledgers offline, and a probe call to a relayer still starting would put the shared
    channel into reconnect back-off. Each relayer's progress shows in
    ``kstb_coordinator_scanned_height{ledger}`` and its own health."""

    async def store_probe() -> None:
        if isinstance(store, StateCounter):
            await store.count_by_state()
        else:
            await store.scanned_height("")

    return [Probe("store", store_probe)]
