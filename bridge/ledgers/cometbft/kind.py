"""The CometBFT ledger kind: its ``[[ledgers]]`` keys, words, identities and opener.

Light by contract (ADR 0014): importing this module imports neither aiohttp nor the
adapter; they are imported in :meth:`CometKind.open` and :meth:`CometKind.check_reached`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from bridge.config import Credentials, LedgerAuth, LedgerConfig, LedgerEndpoint
from bridge.core.words import fabric_bridge_word
from bridge.domain.errors import InvalidInput, LedgerRejected
from bridge.domain.ids import LedgerId
from bridge.ledgers.addresses import AddressCodec
from bridge.ledgers.kinds import LedgerTable, require_extra

if TYPE_CHECKING:
    from bridge.ledgers.adapter import LedgerAdapter, LedgerReader
    from bridge.ledgers.startup import ReachedLedger

EXTRA = "cometbft"
"""The optional dependency set (``pip install kstb[cometbft]``) this kind's client needs."""
CLIENT_MODULES = ("aiohttp",)

_WORD = r"^0x[0-9a-fA-F]{64}$"
_CHAIN = r"^[a-zA-Z0-9]+(?:[-_][a-zA-Z0-9]+)*$"


class CometTable(LedgerTable):
    """A CometBFT chain: ``rpc_url`` is a node's JSON-RPC (``http(s)://host:port``),
    ``bridge`` the application's name (its endpoint ``Init`` name), ``chain`` the chain id
    transactions are signed for, ``network_word`` the 32-byte word the chain's genesis
    pinned (claims and instructions bind it)."""

    chain: str = Field(pattern=_CHAIN, examples=["kstb-issuer-1"])
    network_word: str = Field(pattern=_WORD)


class CometAddressCodec:
    """Holder ids on the chain: ``0x`` + 20 bytes of hex (any case in, lowercase out); the
    word is 12 zero bytes then the 20 bytes (the endpoint protocol's holder shape)."""

    def parse(self, text: str) -> bytes:
        """``0x`` + 40 hex digits to its word; InvalidInput otherwise."""
        if not isinstance(text, str) or len(text) != 42 or not text.startswith("0x"):
            raise InvalidInput(f"cometbft address {text!r} must be 0x followed by 40 hex digits")
        try:
            return bytes(12) + bytes.fromhex(text[2:])
        except ValueError:
            raise InvalidInput(f"cometbft address {text!r} is not hexadecimal") from None

    def format(self, word: bytes) -> str:
        """A word with 12 leading zero bytes to lowercase ``0x`` + 40 hex."""
        if not isinstance(word, bytes | bytearray) or len(word) != 32 or any(word[:12]):
            raise InvalidInput("word does not hold a 20-byte cometbft address")
        return "0x" + bytes(word[12:]).hex()


class CometKind:
    """The CometBFT kind: reads need no identity; steps are signed by a secp256k1 key."""

    name = "cometbft"
    table: ClassVar[type[LedgerTable]] = CometTable
    reads_with_identity = False

    def ledger_config(self, table: LedgerTable, base: Path) -> LedgerConfig:
        """The entry as a LedgerConfig (``channel`` = chain id, ``genesis_hash`` = the
        network word)."""
        assert isinstance(table, CometTable)
        return LedgerConfig(
            id=LedgerId(table.id),
            kind=self.name,
            rpc_url=table.rpc_url,
            bridge=table.bridge,
            chain_id=0,
            finality_depth=table.finality_depth,
            block_interval=table.block_interval,
            channel=table.chain,
            genesis_hash=bytes.fromhex(table.network_word[2:]),
            settings=table,
        )

    def network_word(self, config: LedgerConfig) -> bytes:
        """The network word the genesis pinned."""
        if len(config.genesis_hash) != 32:
            raise InvalidInput(f"ledger {config.id}: no network_word configured")
        return config.genesis_hash

    def bridge_word(self, config: LedgerConfig) -> bytes:
        """The endpoint program's word: keccak256("fabric:" + chain id + ":" + app name),
        the core's rule for a (chain, program) pair that the endpoint protocol computes at
        ``Init`` (ADR 0018)."""
        return fabric_bridge_word(config.channel, config.bridge)

    def address_codec(self) -> AddressCodec:
        """``0x`` + 40 hex, case-insensitive."""
        return CometAddressCodec()

    def check_endpoint(self, config: LedgerConfig, endpoint: LedgerEndpoint) -> None:
        """Any node URL."""

    def check_auth(self, config: LedgerConfig, auth: LedgerAuth, where: str) -> None:
        """No node authentication is supported yet (a node's RPC is read-only for writes
        without a signature; put it behind the operator's proxy)."""
        if auth.token_file or auth.tls_cert_file:
            raise InvalidInput(f"{where}: cometbft ledgers take no [ledger_auth] settings")

    def parse_identity(
        self, table: Mapping[str, Any], base: Path, where: str, path: str
    ) -> Credentials:
        """Refused: reads need no identity."""
        raise InvalidInput(f"{where}: {path}: cometbft reads need no identity")

    def open(
        self,
        config: LedgerConfig,
        credentials: Credentials | None,
        auth: LedgerAuth | None,
        writable: bool,
    ) -> LedgerAdapter:
        """A :class:`CometAdapter`; a writable one signs through the Signer seam.
        MissingExtra (naming ``cometbft``) when its HTTP client is not installed."""
        require_extra(self.name, EXTRA, CLIENT_MODULES)
        from bridge.keys.loader import open_signer
        from bridge.ledgers.cometbft.adapter import CometAdapter
        from bridge.ledgers.cometbft.rpc import CometClient

        # SECURITY: the relayer key signs through the Signer seam (file, keystore, token).
        signer = open_signer(credentials.key_ref) if writable and credentials else None
        client = CometClient(config.rpc_url, config.channel, signer, ledger=config.id.name)
        return CometAdapter(config, client)

    async def check_reached(self, config: LedgerConfig, reader: LedgerReader) -> ReachedLedger:
        """The application's ``Info`` names this ledger, chain, app and words."""
        require_extra(self.name, EXTRA, CLIENT_MODULES)
        from bridge.ledgers.cometbft.adapter import CometAdapter
        from bridge.ledgers.startup import LedgerMismatch, ReachedLedger

        name = config.id.name
        if not isinstance(reader, CometAdapter):
            raise LedgerMismatch(name, "adapter kind", self.name, type(reader).__name__)
        try:
            info = await reader.endpoint_info()
        except LedgerRejected as exc:
            raise LedgerMismatch(
                name, f"app {config.bridge}", "initialised endpoint", str(exc.reason)
            ) from exc
        checks = (
            ("ledger name", name, str(info.get("ledger_name", ""))),
            ("chain id", config.channel, str(info.get("channel_id", ""))),
            ("app name", config.bridge, str(info.get("chaincode_name", ""))),
            ("bridge word", "0x" + self.bridge_word(config).hex(), str(info.get("bridge_word"))),
            ("ledger word", "0x" + config.id.word.hex(), str(info.get("ledger_word", ""))),
            ("network word", "0x" + config.genesis_hash.hex(), str(info.get("network_word"))),
        )
        for what, expected, found in checks:
            if expected.lower() != found.lower():
                raise LedgerMismatch(name, what, expected, found or "(none)")
        return ReachedLedger(name, self.name, f"chain {config.channel}, app {config.bridge}")


KIND = CometKind()
"""The registered instance (``bridge.ledgers.kinds.REGISTRY['cometbft']``)."""
