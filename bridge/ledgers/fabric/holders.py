"""Many holders of one security in one chaincode read (issue 14 item 4): ``HolderStatuses``.

Shared by the Fabric and CometBFT adapters, which run the same endpoint protocol: each
passes its own way of evaluating a read-only function (:data:`View`). The relayer's
``GetHolders`` reaches it through :func:`bridge.ledgers.many_holders.read_holders`, so the
coordinator's coalesced holder reads (admission checks both ends of every transfer) cost
one chaincode evaluation per :data:`codec.MAX_HOLDER_READS` holders instead of one each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import SecurityId
from bridge.domain.legs import HolderStatus
from bridge.ledgers.bounded import gather_bounded
from bridge.ledgers.fabric import codec
from bridge.logfields import ERROR, SECURITY, get_logger

__all__ = ["View", "holder_statuses"]

LOG = get_logger()

View = Callable[[str, list[str]], Awaitable[bytes]]
"""Evaluate one read-only endpoint function with its string arguments; the answer's bytes.
A refusal is ``LedgerRejected`` with the endpoint's reason."""


async def holder_statuses(
    view: View, security: SecurityId, accounts: Sequence[str]
) -> list[HolderStatus]:
    """Each of ``accounts`` (this kind's address text) on ``security``, in order, exactly as
    ``HolderStatus`` answers it: one ``HolderStatuses`` read per ``MAX_HOLDER_READS``
    accounts, each chunk one snapshot of the endpoint's state.

    An endpoint that predates ``HolderStatuses`` (``UnknownFunction``: a relayer upgraded
    before its chaincode) is read with single ``HolderStatus`` calls instead, a bounded
    number at a time. A malformed answer (wrong count, a record for another account, a
    missing field) is ``LedgerRejected(MalformedAnswer)``: an answer is never matched to a
    request by guesswork. Other refusals propagate (no partial answer)."""
    out: list[HolderStatus] = []
    for lo in range(0, len(accounts), codec.MAX_HOLDER_READS):
        chunk = list(accounts[lo : lo + codec.MAX_HOLDER_READS])
        try:
            raw = await view("HolderStatuses", [security.isin, codec.holders_to_json(chunk)])
        except LedgerRejected as exc:
            if exc.reason is not ErrorReason.UNKNOWN_FUNCTION or out:
                raise
            LOG.warning("holder_statuses_unsupported", **{SECURITY: security.isin, ERROR: str(exc)})
            return await gather_bounded(lambda a: _single(view, security, a), list(accounts))
        try:
            out.extend(codec.holders_from_json(raw, chunk))
        except ValueError as exc:
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"HolderStatuses: {exc}") from exc
    return out


async def _single(view: View, security: SecurityId, account: str) -> HolderStatus:
    raw = await view("HolderStatus", [security.isin, account])
    try:
        return codec.holder_from_json(raw)
    except ValueError as exc:
        raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"HolderStatus: {exc}") from exc
