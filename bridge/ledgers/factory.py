"""Pick a ledger adapter implementation from configuration (the only place that knows kinds)."""

from __future__ import annotations

from bridge.config import Credentials, LedgerAuth, LedgerConfig, LedgerEndpoint
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import evm_address_word
from bridge.keys.loader import open_signer
from bridge.ledgers.adapter import LedgerAdapter, LedgerReader


def bridge_word_of(config: LedgerConfig) -> bytes:
    """The bridge endpoint's 32-byte identity on ``config``'s ledger (what claim digests bind)."""
    if config.kind == "evm":
        return evm_address_word(config.bridge)
    if config.kind == "fabric":
        from bridge.ledgers.fabric.adapter import fabric_bridge_word

        return fabric_bridge_word(config.channel, config.bridge)
    raise InvalidInput(f"no bridge endpoint format for ledger kind {config.kind!r}")


def open_reader(
    config: LedgerConfig,
    credentials: Credentials | None = None,
    endpoint: LedgerEndpoint | None = None,
    auth: LedgerAuth | None = None,
) -> LedgerReader:
    """A read-only adapter (verifiers), through ``endpoint`` when given. Fabric needs
    ``credentials``: it signs every query. ``auth`` authenticates the connection to the node
    (EVM token, Fabric TLS client certificate)."""
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
    if cfg.kind == "evm":
        from bridge.ledgers.evm.adapter import EvmAdapter
        from bridge.ledgers.evm.transport import EvmTransport

        # SECURITY: the relayer account signs through the Signer seam (file, keystore, token).
        signer = open_signer(credentials.key_ref) if writable and credentials else None
        return EvmAdapter(cfg, signer=signer, transport=EvmTransport.for_ledger(cfg, auth))
    if cfg.kind == "fabric":
        from bridge.ledgers.fabric.adapter import FabricAdapter
        from bridge.ledgers.fabric.gateway import GatewayClient
        from bridge.ledgers.fabric.identity import SigningIdentity

        if credentials is None or credentials.cert_file is None or not credentials.msp_id:
            raise InvalidInput(f"ledger {cfg.id}: Fabric needs an MSP id, certificate and key")
        if cfg.tls_ca is None:
            raise InvalidInput(f"ledger {cfg.id}: Fabric needs tls_ca")
        identity = SigningIdentity.from_key_ref(
            credentials.msp_id, credentials.cert_file, credentials.key_ref
        )
        client = GatewayClient(
            cfg.rpc_url,
            cfg.tls_ca,
            cfg.tls_server_name or None,
            identity,
            cfg.channel,
            tls_client_cert=auth.tls_cert_file if auth else None,
            tls_client_key=auth.tls_key_file if auth else None,
        )
        operator = identity.chaincode_identity() if writable else ""
        return FabricAdapter(cfg.id, client, cfg.bridge, operator)
    raise InvalidInput(f"no adapter for ledger kind {cfg.kind!r}")
