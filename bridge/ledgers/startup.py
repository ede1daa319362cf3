"""Start-up checks: a component refuses to run against a ledger other than the one it expects.

A relayer or verifier pointed at the wrong node (a staging chain with the same contract
address, another channel, a chaincode initialised for another ledger) would sign or submit
for the wrong ledger. Before serving, each one asks the node what it is and compares every
answer with ``network.toml``:

- EVM: ``eth_chainId`` equals ``chain_id``; the ``bridge`` address holds code; the
  endpoint's ``ledgerId()`` equals keccak256(ledger id).
- Fabric: the chaincode's ``Info`` on the configured channel names the ledger id, the channel
  and the chaincode, and its bridge word is the one the adapter computes.

A mismatch raises :class:`LedgerMismatch` naming the ledger, what differs and both values.
A node that cannot be reached is retried for a bounded time, then reported as ``Unavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from bridge.config import LedgerConfig
from bridge.domain.errors import BridgeError, LedgerRejected, Unavailable
from bridge.ledgers.adapter import LedgerReader

log = structlog.get_logger(__name__)

STARTUP_REACH_TIMEOUT = 60.0
"""Seconds a component keeps trying to reach its ledger node at start before giving up."""


class LedgerMismatch(BridgeError):
    """The node reached is not the ledger the configuration names.

    ``what`` is the property compared (``chain id``, ``endpoint ledger id``, ...),
    ``expected`` the configured value and ``found`` the node's answer.
    """

    def __init__(self, ledger: str, what: str, expected: str, found: str) -> None:
        super().__init__(
            f"ledger {ledger}: {what} mismatch: configured {expected}, node reports {found}"
        )
        self.ledger = ledger
        self.what = what
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class ReachedLedger:
    """What the start-up check confirmed about one ledger (logged at start)."""

    ledger: str
    kind: str
    detail: str


async def check_reached(
    config: LedgerConfig, reader: LedgerReader, reach_within: float = STARTUP_REACH_TIMEOUT
) -> ReachedLedger:
    """Confirm ``reader`` talks to ``config``'s ledger; raise :class:`LedgerMismatch` if not.

    Transport faults (``Unavailable``) are retried with backoff for up to ``reach_within`` seconds
    and then re-raised; a mismatch is raised at once.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        stop=stop_after_delay(reach_within),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        reraise=True,
    ):
        with attempt:
            return await _check_once(config, reader)
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises


async def _check_once(config: LedgerConfig, reader: LedgerReader) -> ReachedLedger:
    from bridge.ledgers.evm.adapter import EvmAdapter

    if isinstance(reader, EvmAdapter):
        return await _check_evm(config, reader)
    if config.kind == "fabric":
        from bridge.ledgers.fabric.adapter import FabricAdapter

        if isinstance(reader, FabricAdapter):
            return await _check_fabric(config, reader)
    raise LedgerMismatch(config.id.name, "adapter kind", config.kind, type(reader).__name__)


async def _check_evm(config: LedgerConfig, adapter: object) -> ReachedLedger:
    from bridge.ledgers.evm.adapter import EvmAdapter

    assert isinstance(adapter, EvmAdapter)
    name = config.id.name
    chain_id, code, word = await adapter.node_identity()
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
    return ReachedLedger(name, "evm", f"chain id {chain_id}, endpoint {config.bridge}")


async def _check_fabric(config: LedgerConfig, adapter: object) -> ReachedLedger:
    from bridge.ledgers.fabric.adapter import FabricAdapter, fabric_bridge_word

    assert isinstance(adapter, FabricAdapter)
    name = config.id.name
    # A malformed TLS client certificate or key is a configuration fault: InvalidInput now
    # (not retried), instead of a connection retried for ever.
    adapter.client.check_client_tls()
    try:
        info = await adapter.endpoint_info()
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
        (
            "bridge word",
            "0x" + fabric_bridge_word(config.channel, config.bridge).hex(),
            info.get("bridge_word", ""),
        ),
        ("endpoint ledger id", "0x" + config.id.word.hex(), info.get("ledger_word", "")),
    )
    for what, expected, found in checks:
        if expected.lower() != found.lower():
            raise LedgerMismatch(name, what, expected, found or "(none)")
    return ReachedLedger(name, "fabric", f"channel {config.channel}, chaincode {config.bridge}")
