"""The devnet's one view of a running ledger, whatever its kind (ADR 0014).

:class:`~bridge.devnet.system.LocalSystem`, the chaos scheduler, the demo, bench and soak
drive every ledger through :class:`DevLedger`; only the kind's own handle
(``LedgerHandle`` for anvil, ``FabricBridgeLedger`` for Fabric) knows how.

Optional members a handle may add (ADR 0019; callers fall back when absent):
``member_override(i)`` (member ``i``'s read node, instead of every other member reading
:meth:`DevLedger.reader_override`), and for the benchmarks ``fund_holders(isin, holders,
units)`` (bulk setup), ``commit_probe(isin, n)`` (the ledger's own commit time, instead of
timing :meth:`DevLedger.set_eligible`), ``interval()`` (its block or batch interval, instead
of the entry's ``block_interval``) and ``pids()`` (its processes, for CPU sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from bridge.devnet.anvil import DevAccount
from bridge.domain.flow import FlowLimit

Fault = tuple[Callable[[], object], Callable[[], object]]
"""How to take one part of a ledger down, and how to bring it back."""


@runtime_checkable
class DevLedger(Protocol):
    """A started devnet ledger with the bridge endpoint and the devnet's securities.

    Every setter acts as the ledger's admin (or issuer) and returns once the change is
    final; every read is of the latest committed state.
    """

    name: str
    before_issue: Callable[[str, int], None] | None
    """Called with (isin, units) before any issue: the devnet registers the issuance."""

    @property
    def kind(self) -> str:
        """The ledger kind (``bridge.ledgers.kinds`` name)."""
        ...

    def describe(self) -> list[str]:
        """What this ledger is, for people (first line: kind and network; then details)."""
        ...

    # -- configuration the devnet writes
    def ledger_entry(self) -> dict[str, Any]:
        """This ledger's ``[[ledgers]]`` entry for network.toml."""
        ...

    def relayer_entry(self) -> dict[str, Any]:
        """The relayer file's ledger identity keys (key, certificate...) and poll interval."""
        ...

    def read_identity(self) -> dict[str, Any] | None:
        """A member's ``[identities.<ledger>]`` table, or None when reads need none."""
        ...

    def node_auth(self, role: str) -> dict[str, str]:
        """The ``[ledger_auth]`` table of a ``relayer`` or ``verifier`` (empty: none)."""
        ...

    def reader_override(self) -> dict[str, Any] | None:
        """A second node for every other member to read through (``rpc_overrides``), or None."""
        ...

    def faults(self) -> Mapping[str, Fault]:
        """The outages the chaos scheduler may inject, by name (``ledger``, ``peer``...)."""
        ...

    # -- admin
    def set_instructor(self, key: str, enabled: bool = True) -> None:
        """Register (or remove) a brokerage instruction key on the endpoint."""
        ...

    def set_depository(self, key: str) -> None:
        """Install the depository's order key on the endpoint (once)."""
        ...

    def set_flow_limit(self, isin: str, counterpart: str, limit: FlowLimit) -> None:
        """Set the lane's flow limit (``FlowLimit()`` removes it)."""
        ...

    # -- holders and supply
    def make_holder(self, isin: str, units: int = 0) -> DevAccount:
        """A new eligible holder, optionally issued ``units``."""
        ...

    def set_eligible(self, isin: str, holder: str, eligible: bool = True) -> None:
        """Add ``holder`` to (or remove it from) the eligible holders."""
        ...

    def issue(self, isin: str, holder: str, units: int, register: bool = True) -> None:
        """Issue ``units`` to an eligible holder (``register=False``: out of band)."""
        ...

    def balance(self, isin: str, holder: str) -> int:
        """A holder's balance."""
        ...

    def total_supply(self, isin: str) -> int:
        """Units in existence on this ledger."""
        ...

    def escrowed(self, isin: str) -> int:
        """Units held in the bridge's escrow."""
        ...

    def parked(self, transfer_id: bytes) -> int:
        """Units parked for ``transfer_id`` and not released."""
        ...

    def release_parked(self, transfer_id: bytes, to: str) -> None:
        """The issuer delivers the parked units to eligible holder ``to``."""
        ...

    def stop(self) -> None:
        """Stop the ledger's processes."""
        ...
