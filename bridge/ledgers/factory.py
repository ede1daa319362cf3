"""Pick a ledger adapter implementation from configuration (the only place that knows kinds)."""

from __future__ import annotations

from bridge.config import LedgerConfig
from bridge.domain.errors import InvalidInput
from bridge.ledgers.adapter import LedgerAdapter, LedgerReader


def open_reader(config: LedgerConfig, rpc_override: str | None = None) -> LedgerReader:
    """A read-only adapter for ``config`` (optionally through the caller's own endpoint)."""
    return open_adapter(config, None, rpc_override)


def open_adapter(
    config: LedgerConfig, private_key: bytes | None, rpc_override: str | None = None
) -> LedgerAdapter:
    """An adapter that signs with ``private_key`` (None: read-only)."""
    if config.kind == "evm":
        from dataclasses import replace

        from bridge.ledgers.evm.adapter import EvmAdapter

        cfg = replace(config, rpc_url=rpc_override) if rpc_override else config
        return EvmAdapter(cfg, private_key)
    raise InvalidInput(f"no adapter for ledger kind {config.kind!r}")
