"""Open a ledger reader or adapter from configuration, through the ledger-kind registry."""

from __future__ import annotations

from bridge.config import Credentials, LedgerAuth, LedgerConfig, LedgerEndpoint
from bridge.ledgers.adapter import LedgerAdapter, LedgerReader
from bridge.ledgers.kinds import get_kind


def bridge_word_of(config: LedgerConfig) -> bytes:
    """The bridge endpoint's 32-byte identity on ``config``'s ledger (what claim digests bind).
    Imports no ledger client."""
    return get_kind(config.kind).bridge_word(config)


def open_reader(
    config: LedgerConfig,
    credentials: Credentials | None = None,
    endpoint: LedgerEndpoint | None = None,
    auth: LedgerAuth | None = None,
) -> LedgerReader:
    """A read-only adapter (verifiers), through ``endpoint`` when given. Kinds that sign
    every query (Fabric) need ``credentials``. ``auth`` authenticates the connection to the
    node (EVM token, Fabric TLS client certificate)."""
    return _open(config, credentials, endpoint, writable=False, auth=auth)


def open_adapter(
    config: LedgerConfig,
    credentials: Credentials,
    endpoint: LedgerEndpoint | None = None,
    auth: LedgerAuth | None = None,
) -> LedgerAdapter:
    """An adapter that applies steps with the operator identity in ``credentials``, over a
    connection authenticated with ``auth``."""
    return _open(config, credentials, endpoint, writable=True, auth=auth)


def _open(
    config: LedgerConfig,
    credentials: Credentials | None,
    endpoint: LedgerEndpoint | None,
    writable: bool,
    auth: LedgerAuth | None = None,
) -> LedgerAdapter:
    cfg = endpoint.apply(config) if endpoint is not None else config
    return get_kind(cfg.kind).open(cfg, credentials, auth, writable)
