"""Start-up checks: a component refuses to run against a ledger other than the one it expects.

A relayer or verifier pointed at the wrong node (a staging chain with the same contract
address, another channel, a chaincode initialised for another ledger) would sign or submit
for the wrong ledger. Before serving, each one asks the node what it is and compares every
answer with ``network.toml``:

each ledger kind's :meth:`~bridge.ledgers.kinds.LedgerKind.check_reached` (EVM: the chain
id, code at the endpoint and its ``ledgerId()``; Fabric: the chaincode's ``Info`` names the
ledger, channel, chaincode and bridge word). Given the network file, the committee epochs the
ledger accepts must agree with it too (:func:`bridge.doctor.checks.committee_mismatch`, the
rule ``bridge doctor`` applies): the file's genesis epoch, while live, with exactly its
members and threshold; no live epoch older than it; every later epoch's members listed in
the file.

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

from bridge.config import LedgerConfig, NetworkConfig
from bridge.domain.errors import BridgeError, InvalidInput, Unavailable
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
    config: LedgerConfig,
    reader: LedgerReader,
    reach_within: float = STARTUP_REACH_TIMEOUT,
    *,
    network: NetworkConfig | None = None,
) -> ReachedLedger:
    """Confirm ``reader`` talks to ``config``'s ledger; raise :class:`LedgerMismatch` if not.

    With ``network``, also confirm the ledger's live committee epochs agree with the network
    file (a :class:`LedgerMismatch` whose ``what`` names the epoch otherwise).
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
            return await _check_once(config, reader, network)
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises


async def _check_once(
    config: LedgerConfig, reader: LedgerReader, network: NetworkConfig | None
) -> ReachedLedger:
    from bridge.ledgers.kinds import get_kind

    reached = await get_kind(config.kind).check_reached(config, reader)
    if network is None:
        return reached
    # ---- doctor (issue 12): the committee the ledger accepts is the file's.
    from bridge.doctor.checks import committee_mismatch, describe_committee

    # SECURITY: a member or relayer serving a ledger whose committee is not the network
    # file's would sign or relay under a trust anchor nobody agreed on; refuse to start.
    try:
        windows = await reader.committees()
    except InvalidInput as exc:
        # An epoch the ledger reports that is no valid committee (t > n, 2t <= n, repeated
        # members): a typed refusal to start, never a traceback (review finding 8).
        raise LedgerMismatch(
            config.id.name, "committee", "valid epochs (t <= n, 2t > n, distinct)", str(exc)
        ) from exc
    m = committee_mismatch(network, windows)
    if m is not None:
        raise LedgerMismatch(config.id.name, m.what, m.expected, m.found)
    epochs = "; ".join(describe_committee(w.committee) for w in windows)
    return ReachedLedger(reached.ledger, reached.kind, f"{reached.detail}; committee {epochs}")
