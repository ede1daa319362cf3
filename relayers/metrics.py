"""The relayer's Prometheus metrics and readiness probes (ADR 0016).

The ledger probe reads the node's finalized height (and, on EVM, the sending account's
balance and pool), so one round of probes also refreshes the height, lag, gas and
pending-transaction gauges. Labels: the ledger name only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from prometheus_client import Gauge

from bridge.ledgers.adapter import LedgerReader
from bridge.obs.metrics import CommonMetrics
from bridge.obs.readiness import Probe
from relayers.checkpoint import CheckpointStore
from relayers.watcher import EventWatcher


@runtime_checkable
class GasReporter(Protocol):
    """An adapter that pays for its transactions (EVM)."""

    async def gas_balance(self) -> int:
        """The sending account's balance (wei)."""
        ...

    async def pending_transactions(self) -> int:
        """The sending account's transactions not yet mined."""
        ...


class RelayerMetrics:
    """Every relayer metric, registered on ``common.registry``."""

    def __init__(
        self,
        common: CommonMetrics,
        ledger: str,
        adapter: LedgerReader,
        checkpoints: CheckpointStore,
        watcher: EventWatcher,
    ) -> None:
        reg = common.registry
        self._ledger = ledger
        self._adapter = adapter
        self._checkpoints = checkpoints
        self._watcher = watcher
        labels = ["ledger"]
        self.scanned = Gauge(
            "kstb_relayer_scanned_height", "Last block fully scanned and delivered.", labels,
            registry=reg,
        ).labels(ledger)  # fmt: skip
        self.finalized = Gauge(
            "kstb_relayer_finalized_height", "The ledger's finalized height as last read.",
            labels, registry=reg,
        ).labels(ledger)  # fmt: skip
        self.lag = Gauge(
            "kstb_relayer_lag_blocks", "Finalized height minus scanned height.", labels,
            registry=reg,
        ).labels(ledger)  # fmt: skip
        self.delivered = Gauge(
            "kstb_relayer_events_delivered", "Events delivered to the coordinator since start.",
            labels, registry=reg,
        ).labels(ledger)  # fmt: skip
        self.pending = Gauge(
            "kstb_relayer_pending_transactions",
            "The relayer account's transactions in the node's pool, not yet mined (EVM).",
            labels, registry=reg,
        ).labels(ledger)  # fmt: skip
        self.gas = Gauge(
            "kstb_relayer_gas_balance_wei", "The relayer account's balance (EVM).", labels,
            registry=reg,
        ).labels(ledger)  # fmt: skip

    async def probe_store(self) -> None:
        """Read the checkpoint (raises when the state file is gone or unreadable)."""
        position = self._checkpoints.load()
        if position is not None:
            self.scanned.set(position.height)
        self.delivered.set(self._watcher.delivered)

    async def probe_ledger(self) -> None:
        """Read the node (raises when it cannot be reached) and refresh the ledger gauges."""
        final = await self._adapter.finalized_height()
        self.finalized.set(final)
        position = self._checkpoints.load()
        if position is not None:
            self.lag.set(max(0, final - position.height))
        if isinstance(self._adapter, GasReporter):
            self.gas.set(await self._adapter.gas_balance())
            self.pending.set(await self._adapter.pending_transactions())

    def probes(self) -> list[Probe]:
        """Readiness: the relayer serves only with its store and its ledger."""
        return [Probe("store", self.probe_store), Probe("ledger", self.probe_ledger)]
