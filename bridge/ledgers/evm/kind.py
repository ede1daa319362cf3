"""The EVM ledger kind: its ``[[ledgers]]`` keys, words, address codec and how it opens.

Light by contract (ADR 0014): importing this module does not import ``web3``; the adapter
and its transport are imported in :meth:`EvmKind.open` and :meth:`EvmKind.check_reached`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from bridge.config import Credentials, LedgerAuth, LedgerConfig, LedgerEndpoint
from bridge.core.words import evm_network_word
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, evm_address_word
from bridge.ledgers.addresses import AddressCodec, EvmAddressCodec
from bridge.ledgers.evm.profiles import check_ledger, get_profile
from bridge.ledgers.kinds import LedgerTable, require_extra, resolve

if TYPE_CHECKING:
    from bridge.ledgers.adapter import LedgerAdapter, LedgerReader
    from bridge.ledgers.startup import ReachedLedger

EXTRA = "evm"
"""The package extra that installs this kind's client (``pip install 'kstb[evm]'``)."""
CLIENT_MODULES = ("web3", "eth_account")
"""Top-level modules of the client, checked before it is imported (MissingExtra otherwise)."""


class EvmTable(LedgerTable):
    """An EVM ledger: ``rpc_url`` is the JSON-RPC URL, ``bridge`` the endpoint contract."""

    finality_depth_required: ClassVar[bool] = True
    address_keys: ClassVar[tuple[str, ...]] = ("bridge",)

    chain_id: int = Field(gt=0)
    """The EIP-155 chain id (checked against the node at start)."""
    tls_ca: str | None = None
    """The CA of an ``https`` node (optional; default: the system's trust store)."""
    max_gas_price_gwei: float = Field(default=1000.0, ge=0, le=1_000_000)
    """The most a relayer pays per unit of gas; above it a step waits."""
    profile: Literal["ethereum", "kaia"] = "ethereum"
    """The chain family's node behaviour (:mod:`bridge.ledgers.evm.profiles`): ``kaia``
    admits chain ids 8217/1001 only, needs ``finality_depth = 0`` and prices as Kaia does."""
    lens: str | None = None
    """The ``BridgeLens`` read contract on this chain (issue 14 item 4; optional): legs and
    supplies of many transfers are read in one ``eth_call`` through it. Its code is checked
    against the committed artifact before it is trusted; without it reads go leg by leg."""
    ws_url: str | None = None
    """The same node's WebSocket endpoint (issue 14 item 4; optional): new blocks are learnt
    by ``eth_subscribe("newHeads")`` instead of polling, with polling as the fallback. It
    needs ``wss://`` when ``rpc_url`` is ``https://`` (and ``ws://`` only with ``http://``):
    it gets the same CA and ``Authorization`` header, and its chain id is checked. A pushed
    head is only a hint; finality is still read over ``rpc_url``. Unused when a member's
    ``rpc_overrides`` replaces ``rpc_url`` (it would name another party's node)."""


class EvmKind:
    """The EVM kind (anvil, geth, Besu and Kaia share it; a ``profile`` key selects the
    node behaviour, ADR 0019)."""

    name = "evm"
    table: ClassVar[type[LedgerTable]] = EvmTable
    reads_with_identity = False
    holder_direct_locks = True
    """The endpoint's ``lock`` from the holder's own account needs no instruction key."""

    def ledger_config(self, table: LedgerTable, base: Path) -> LedgerConfig:
        """The entry as a LedgerConfig; ``tls_ca`` needs an ``https://`` URL and the entry
        must fit its profile (chain id, finality depth)."""
        assert isinstance(table, EvmTable)
        lid = LedgerId(table.id)
        if table.tls_ca and not table.rpc_url.startswith("https://"):
            raise InvalidInput(f"ledger {lid}: tls_ca needs an https:// rpc_url")
        check_ledger(get_profile(table.profile), str(lid), table.chain_id, table.finality_depth)
        if table.lens is not None:  # ---- read lens (issue 14 item 4)
            try:
                EvmAddressCodec().parse(table.lens)
            except InvalidInput as exc:
                raise InvalidInput(f"ledger {lid}: lens: not a valid evm address: {exc}") from None
        if table.ws_url is not None:  # ---- pushed heads (issue 14 item 4)
            want = "wss://" if table.rpc_url.startswith("https://") else "ws://"
            if not table.ws_url.startswith(want):
                raise InvalidInput(
                    f"ledger {lid}: ws_url must start with {want} to match rpc_url"
                    f" {table.rpc_url} (same TLS and auth as the HTTP connection)"
                )
        return LedgerConfig(
            id=lid,
            kind=self.name,
            rpc_url=table.rpc_url,
            bridge=table.bridge,
            chain_id=table.chain_id,
            finality_depth=table.finality_depth,
            block_interval=table.block_interval,
            tls_ca=resolve(base, table.tls_ca),
            max_gas_price_gwei=table.max_gas_price_gwei,
            settings=table,
        )

    def network_word(self, config: LedgerConfig) -> bytes:
        """``bytes32(chain id)``."""
        return evm_network_word(config.chain_id)

    def bridge_word(self, config: LedgerConfig) -> bytes:
        """The endpoint contract address as a word."""
        return evm_address_word(config.bridge)

    def address_codec(self) -> AddressCodec:
        """EIP-55 addresses."""
        return EvmAddressCodec()

    def check_endpoint(self, config: LedgerConfig, endpoint: LedgerEndpoint) -> None:
        """A TLS CA needs an ``https://`` URL; the URL's host is the name checked."""
        if endpoint.tls_ca is not None and endpoint.tls_server_name:
            raise InvalidInput(f"ledger {config.id}: tls_server_name applies to Fabric only")
        if endpoint.tls_ca is not None and not endpoint.url.startswith("https://"):
            raise InvalidInput(f"ledger {config.id}: tls_ca needs an https:// url")

    def check_auth(self, config: LedgerConfig, auth: LedgerAuth, where: str) -> None:
        """A bearer token only, and only over ``https``."""
        if auth.tls_cert_file or auth.tls_key_file:
            raise InvalidInput(f"{where}: tls_cert_file/tls_key_file apply to Fabric ledgers only")
        # SECURITY: a bearer token sent over plain http is readable by anyone on the path.
        if auth.token_file is not None and not config.rpc_url.startswith("https://"):
            raise InvalidInput(
                f"{where}: token_file needs an https:// rpc_url for ledger {config.id} "
                f"(the token would be sent in clear to {config.rpc_url})"
            )

    def parse_identity(
        self, table: Mapping[str, Any], base: Path, where: str, path: str
    ) -> Credentials:
        """EVM reads need no identity."""
        raise InvalidInput(f"{where}: {path}: an EVM ledger takes no read identity")

    def open(
        self,
        config: LedgerConfig,
        credentials: Credentials | None,
        auth: LedgerAuth | None,
        writable: bool,
    ) -> LedgerAdapter:
        """An :class:`EvmAdapter`; writable ones sign through the Signer seam.

        MissingExtra (naming ``evm``) when web3 is not installed."""
        require_extra(self.name, EXTRA, CLIENT_MODULES)
        from bridge.keys.loader import open_signer
        from bridge.ledgers.evm.adapter import EvmAdapter
        from bridge.ledgers.evm.transport import EvmTransport

        # SECURITY: the relayer account signs through the Signer seam (file, keystore, token).
        signer = open_signer(credentials.key_ref) if writable and credentials else None
        return EvmAdapter(config, signer=signer, transport=EvmTransport.for_ledger(config, auth))

    async def check_reached(self, config: LedgerConfig, reader: LedgerReader) -> ReachedLedger:
        """The chain id, code at the endpoint and the endpoint's ledger id match."""
        require_extra(self.name, EXTRA, CLIENT_MODULES)
        from bridge.ledgers.evm.adapter import EvmAdapter
        from bridge.ledgers.startup import LedgerMismatch, ReachedLedger

        name = config.id.name
        if not isinstance(reader, EvmAdapter):
            raise LedgerMismatch(name, "adapter kind", self.name, type(reader).__name__)
        chain_id, code, word = await reader.node_identity()
        # SECURITY: the chain id is what EIP-155 signatures bind; another chain is another ledger.
        if chain_id != config.chain_id:
            raise LedgerMismatch(name, "chain id", str(config.chain_id), str(chain_id))
        if not code:
            raise LedgerMismatch(
                name, f"endpoint contract code at {config.bridge}", "non-empty", "no code"
            )
        if word != config.id.word:
            raise LedgerMismatch(
                name, "endpoint ledger id", "0x" + config.id.word.hex(), "0x" + word.hex()
            )
        return ReachedLedger(name, self.name, f"chain id {chain_id}, endpoint {config.bridge}")


KIND = EvmKind()
"""The registered instance (``bridge.ledgers.kinds.REGISTRY['evm']``)."""
