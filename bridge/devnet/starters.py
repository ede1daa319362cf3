"""Per-kind devnet starters: a kind (or EVM profile/client) adds its dev ledger here, in one
line, instead of in :class:`~bridge.devnet.system.LocalSystem` (ADR 0019).

A starter is ``start(ctx, name) -> DevLedger``: it starts the ledger's processes, deploys the
bridge endpoint with ``ctx``'s committee and securities and returns the running ledger.
``LocalSystem(extra_ledgers=[("brokerage-g", "geth")])`` starts one next to the built-in
anvil and Fabric ledgers; bench, soak, chaos and the demo then drive it through the
:class:`~bridge.devnet.ledger.DevLedger` protocol like any other.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from bridge.devnet.anvil import DevAccount
from bridge.devnet.ledger import DevLedger
from bridge.devnet.ledger_tls import DevCA
from bridge.domain.committee import Committee
from bridge.ledgers.kinds import REGISTRY

STARTERS: Mapping[str, str] = {
    "geth": "bridge.devnet.geth_ledger:start_geth_ledger",
    "kaia": "bridge.devnet.kaia:start_kaia_ledger",
}
"""Starter name -> ``"module:function"``. One line per kind, profile or client."""


class StartContext(Protocol):
    """What a starter may use from the devnet (``LocalSystem`` provides it)."""

    workdir: Path
    committee: Committee | None
    isins: Sequence[str]
    block_time: float
    block_gas_limit: int
    """An EVM ledger's block gas limit; 0: the starter's own default."""
    evm_node_auth: bool

    def instruction_key(self, ledger: str) -> DevAccount:
        """The brokerage instruction key to register on ``ledger``'s endpoint."""
        ...

    def _relayer_address(self, ledger: str, account: DevAccount) -> str: ...

    def _key_entry(
        self, key_file: str, label: str, account: DevAccount | None
    ) -> dict[str, Any]: ...

    def _evm_node_ca(self) -> DevCA: ...

    def _rpc_token_file(self, ledger: str) -> Path: ...


Starter = Callable[[StartContext, str], DevLedger]


def get_starter(name: str) -> Starter:
    """The starter ``name`` (imported on first use): a line of :data:`STARTERS`, else the
    convention ``bridge.devnet.<kind>:start`` of a registered ledger kind (so a new kind's
    package needs no line here, ADR 0018); KeyError naming the known ones."""
    target = STARTERS.get(name)
    if target is None and name in REGISTRY and _has_module(f"bridge.devnet.{name}"):
        target = f"bridge.devnet.{name}:start"
    if target is None:
        raise KeyError(f"no devnet starter {name!r} (known: {sorted(STARTERS)})")
    module, _, attr = target.partition(":")
    starter: Starter = getattr(importlib.import_module(module), attr)
    return starter


def starter_names() -> list[str]:
    """Every name :func:`get_starter` knows: the lines of :data:`STARTERS` and each
    registered kind whose ``bridge.devnet.<kind>`` module has a ``start`` (e.g.
    ``cometbft``), sorted."""
    by_convention = [
        k
        for k in REGISTRY
        if k not in STARTERS
        and _has_module(f"bridge.devnet.{k}")
        and callable(getattr(importlib.import_module(f"bridge.devnet.{k}"), "start", None))
    ]
    return sorted([*STARTERS, *by_convention])


def _has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
