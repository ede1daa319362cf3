"""Many holders of one security in one chaincode read (issue 14 item 4): ``HolderStatuses``.

Shared by the Fabric and CometBFT adapters, which run the same endpoint protocol: each
passes its own way of evaluating a read-only function (:data:`View`). The relayer's
``GetHolders`` reaches it through :func:`bridge.ledgers.many_holders.read_holders`, so the
coordinator's coalesced holder reads (admission checks both ends of every transfer) cost
one chaincode evaluation per :data:`codec.MAX_HOLDER_READS` holders instead of one each.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import SecurityId
from bridge.domain.legs import HolderStatus
from bridge.ledgers.bounded import gather_bounded
from bridge.ledgers.fabric import codec
from bridge.logfields import ERROR, SECURITY, get_logger

__all__ = ["REPROBE_S", "HolderReads", "View", "read_holder_status"]

LOG = get_logger()

View = Callable[[str, list[str]], Awaitable[bytes]]
"""Evaluate one read-only endpoint function with its string arguments; the answer's bytes.
A refusal is ``LedgerRejected`` with the endpoint's reason."""

REPROBE_S = 600.0
"""Seconds an endpoint that answered ``UnknownFunction`` to ``HolderStatuses`` is read holder
by holder before ``HolderStatuses`` is tried again (its chaincode may have been upgraded)."""


async def read_holder_status(view: View, security: SecurityId, account: str) -> HolderStatus:
    """One holder's ``HolderStatus``; a malformed answer is ``LedgerRejected(MalformedAnswer)``."""
    raw = await view("HolderStatus", [security.isin, account])
    try:
        return codec.holder_from_json(raw)
    except ValueError as exc:
        raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"HolderStatus: {exc}") from exc


class HolderReads:
    """Many-holder reads of one endpoint.

    GUARANTEES: each of the accounts asked for, in order, exactly as ``HolderStatus``
    answers it; one ``HolderStatuses`` read per ``MAX_HOLDER_READS`` accounts, each chunk one
    snapshot of the endpoint's state. A malformed answer (wrong count, a record for another
    account, a missing or mistyped field) is ``LedgerRejected(MalformedAnswer)``: an answer
    is never matched to a request by guesswork. Other refusals propagate (no partial answer).

    An endpoint that predates ``HolderStatuses`` (``UnknownFunction`` on the first chunk: a
    relayer upgraded before its chaincode) is read with single ``HolderStatus`` calls, a
    bounded number at a time, and is not asked ``HolderStatuses`` again for
    :data:`REPROBE_S` seconds. ``UnknownFunction`` after a chunk was answered is a refusal
    like any other (an endpoint cannot both have and lack the function)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._unsupported_until = float("-inf")

    async def read(
        self, view: View, security: SecurityId, accounts: Sequence[str]
    ) -> list[HolderStatus]:
        """The statuses of ``accounts`` (this kind's address text) on ``security``."""
        if self._clock() < self._unsupported_until:
            return await self._singles(view, security, accounts)
        out: list[HolderStatus] = []
        for lo in range(0, len(accounts), codec.MAX_HOLDER_READS):
            chunk = list(accounts[lo : lo + codec.MAX_HOLDER_READS])
            try:
                raw = await view("HolderStatuses", [security.isin, codec.holders_to_json(chunk)])
            except LedgerRejected as exc:
                if exc.reason is not ErrorReason.UNKNOWN_FUNCTION or out:
                    raise
                self._unsupported_until = self._clock() + REPROBE_S
                LOG.warning(
                    "holder_statuses_unsupported", **{SECURITY: security.isin, ERROR: str(exc)}
                )
                return await self._singles(view, security, accounts)
            try:
                out.extend(codec.holders_from_json(raw, chunk))
            except ValueError as exc:
                raise LedgerRejected(
                    ErrorReason.MALFORMED_ANSWER, f"HolderStatuses: {exc}"
                ) from exc
        return out

    @staticmethod
    async def _singles(
        view: View, security: SecurityId, accounts: Sequence[str]
    ) -> list[HolderStatus]:
        return await gather_bounded(lambda a: read_holder_status(view, security, a), list(accounts))
