"""The Hyperledger Fabric ledger kind: its ``[[ledgers]]`` keys, words, identities and opener.

Light by contract (ADR 0014): importing this module does not import the Gateway client, the
Fabric protos or grpc; they are imported in :meth:`FabricKind.open` and
:meth:`FabricKind.check_reached`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from bridge.config import Credentials, LedgerAuth, LedgerConfig, LedgerEndpoint
from bridge.core.words import fabric_bridge_word
from bridge.domain.errors import InvalidInput, LedgerRejected
from bridge.domain.ids import LedgerId
from bridge.keys.reference import PlainKeyFile, parse_key_ref
from bridge.ledgers.addresses import AddressCodec
from bridge.ledgers.fabric.addresses import FabricAddressCodec
from bridge.ledgers.kinds import LedgerTable, resolve

if TYPE_CHECKING:
    from bridge.ledgers.adapter import LedgerAdapter, LedgerReader
    from bridge.ledgers.startup import ReachedLedger

_GENESIS_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")


class FabricTable(LedgerTable):
    """A Fabric ledger: ``rpc_url`` is a peer's Gateway ``host:port``, ``bridge`` the
    chaincode name on ``channel``; TLS is verified against ``tls_ca`` (``tls_server_name``
    overrides the name checked in the peer's certificate)."""

    channel: str = Field(min_length=1)
    """The channel the bridge chaincode runs on."""
    tls_ca: str = Field(min_length=1)
    """The peer's TLS CA (PEM)."""
    tls_server_name: str = ""
    """The name checked in the peer's certificate ('' = the host of ``rpc_url``)."""
    genesis_hash: str = Field(pattern=_GENESIS_RE.pattern)
    """The channel's genesis block hash (0x + 64 hex: SHA-256 of block 0's header DER)."""


_IDENTITY_KEYS = frozenset({"key_file", "key", "cert_file", "msp_id"})


class FabricKind:
    """The Fabric kind: every query is signed, so members hold a read identity."""

    name = "fabric"
    table: ClassVar[type[LedgerTable]] = FabricTable
    reads_with_identity = True
    holder_direct_locks = False
    """A Fabric holder never signs its own lock: every lock needs an instruction key."""

    def ledger_config(self, table: LedgerTable, base: Path) -> LedgerConfig:
        """The entry as a LedgerConfig (channel, TLS CA and genesis hash required)."""
        assert isinstance(table, FabricTable)
        return LedgerConfig(
            id=LedgerId(table.id),
            kind=self.name,
            rpc_url=table.rpc_url,
            bridge=table.bridge,
            chain_id=0,
            finality_depth=table.finality_depth,
            block_interval=table.block_interval,
            channel=table.channel,
            tls_ca=resolve(base, table.tls_ca),
            tls_server_name=table.tls_server_name,
            genesis_hash=bytes.fromhex(table.genesis_hash[2:]),
            settings=table,
        )

    def network_word(self, config: LedgerConfig) -> bytes:
        """The channel's genesis block hash."""
        if len(config.genesis_hash) != 32:
            raise InvalidInput(f"ledger {config.id}: no genesis_hash configured")
        return config.genesis_hash

    def bridge_word(self, config: LedgerConfig) -> bytes:
        """keccak256("fabric:" + channel + ":" + chaincode) (the protocol core's rule)."""
        return fabric_bridge_word(config.channel, config.bridge)

    def address_codec(self) -> AddressCodec:
        """``0x`` + 40 hex, case-insensitive."""
        return FabricAddressCodec()

    def check_endpoint(self, config: LedgerConfig, endpoint: LedgerEndpoint) -> None:
        """Any peer address; its own TLS CA and server name are allowed."""

    def check_auth(self, config: LedgerConfig, auth: LedgerAuth, where: str) -> None:
        """TLS client certificates only (a peer takes no bearer token)."""
        if auth.token_file:
            raise InvalidInput(f"{where}: token_file applies to EVM ledgers only")

    def parse_identity(
        self, table: Mapping[str, Any], base: Path, where: str, path: str
    ) -> Credentials:
        """``msp_id``, ``cert_file`` and a key (``key_file`` or ``[key]``); nothing else."""
        if not isinstance(table, Mapping):
            raise InvalidInput(f"{where}: {path} must be a table")
        unknown = sorted(set(table) - _IDENTITY_KEYS)
        if unknown:
            raise InvalidInput(f"{where}: {path}: unknown keys {unknown}")
        key = parse_key_ref(table, base, where, f"{path}.")
        if "cert_file" not in table or "msp_id" not in table:
            raise InvalidInput(f"{where}: {path}: msp_id and cert_file are required")
        return Credentials(
            key_file=key.path if isinstance(key, PlainKeyFile) else None,
            cert_file=resolve(base, str(table["cert_file"])),
            msp_id=str(table["msp_id"]),
            key=None if isinstance(key, PlainKeyFile) else key,
        )

    def open(
        self,
        config: LedgerConfig,
        credentials: Credentials | None,
        auth: LedgerAuth | None,
        writable: bool,
    ) -> LedgerAdapter:
        """A :class:`FabricAdapter` over a Gateway client signing with ``credentials``
        (required even to read)."""
        from bridge.ledgers.fabric.adapter import FabricAdapter
        from bridge.ledgers.fabric.gateway import GatewayClient
        from bridge.ledgers.fabric.identity import SigningIdentity

        if credentials is None or credentials.cert_file is None or not credentials.msp_id:
            raise InvalidInput(f"ledger {config.id}: Fabric needs an MSP id, certificate and key")
        if config.tls_ca is None:
            raise InvalidInput(f"ledger {config.id}: Fabric needs tls_ca")
        identity = SigningIdentity.from_key_ref(
            credentials.msp_id, credentials.cert_file, credentials.key_ref
        )
        client = GatewayClient(
            config.rpc_url,
            config.tls_ca,
            config.tls_server_name or None,
            identity,
            config.channel,
            tls_client_cert=auth.tls_cert_file if auth else None,
            tls_client_key=auth.tls_key_file if auth else None,
        )
        operator = identity.chaincode_identity() if writable else ""
        return FabricAdapter(config.id, client, config.bridge, operator)

    async def check_reached(self, config: LedgerConfig, reader: LedgerReader) -> ReachedLedger:
        """The chaincode's ``Info`` names this ledger, channel, chaincode and bridge word."""
        from bridge.ledgers.fabric.adapter import FabricAdapter
        from bridge.ledgers.startup import LedgerMismatch, ReachedLedger

        name = config.id.name
        if not isinstance(reader, FabricAdapter):
            raise LedgerMismatch(name, "adapter kind", self.name, type(reader).__name__)
        # A malformed TLS client certificate or key is a configuration fault: InvalidInput now
        # (not retried), instead of a connection retried for ever.
        reader.client.check_client_tls()
        try:
            info = await reader.endpoint_info()
        except LedgerRejected as exc:
            raise LedgerMismatch(
                name,
                f"chaincode {config.bridge} on channel {config.channel}",
                "initialised bridge endpoint",
                f"{exc.reason}: {exc.detail}",
            ) from exc
        checks = (
            ("chaincode ledger name", name, info.get("ledger_name", "")),
            ("channel", config.channel, info.get("channel_id", "")),
            ("chaincode name", config.bridge, info.get("chaincode_name", "")),
            ("bridge word", "0x" + self.bridge_word(config).hex(), info.get("bridge_word", "")),
            ("endpoint ledger id", "0x" + config.id.word.hex(), info.get("ledger_word", "")),
        )
        for what, expected, found in checks:
            if expected.lower() != found.lower():
                raise LedgerMismatch(name, what, expected, found or "(none)")
        return ReachedLedger(
            name, self.name, f"channel {config.channel}, chaincode {config.bridge}"
        )


KIND = FabricKind()
"""The registered instance (``bridge.ledgers.kinds.REGISTRY['fabric']``)."""
