"""Typed errors of the Fabric Gateway client (fabric-gateway's ``errors`` layer).

Error contract (what callers may rely on):

- a chaincode that refuses a call (a response status >= 400, which Fabric's shim produces
  for ``error(message)``) raises :class:`~bridge.domain.errors.LedgerRejected` decoded from
  the bridge chaincode's machine-readable message ``Name: {"reason", "detail", "figures"}``
  (ADR 0015): ``reason`` an :class:`~bridge.core.reasons.ErrorReason`, ``figures`` typed
  integers; anything else (another chaincode, a garbled or forged payload) is
  ``UnknownRefusal``; the reasons in :data:`TRANSIENT_CHAINCODE_ERRORS` (``Internal``: the
  chaincode crashed; ``TransactionTimeSkewed``) raise
  :class:`~bridge.domain.errors.Unavailable` instead;
- a transaction that was ordered but not validated raises :class:`TransactionInvalid`
  (an :class:`~bridge.domain.errors.Unavailable`) for read conflicts, whose retry re-reads
  the state, and ``LedgerRejected(TransactionInvalid)`` with the validation code as the
  figure ``validationCode`` otherwise;
- anything else (connection refused, TLS failure, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
  peers of an endorsing org down, orderer not reachable, access denied) raises
  :class:`~bridge.domain.errors.Unavailable` with the gateway's full message: a transport or
  configuration fault is never reported as a decision of the ledger.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import status_pb2

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import BridgeError, Figure, LedgerRejected, Unavailable
from bridge.ledgers.fabric._protos import gateway_pb2

logger = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT", "DUPLICATE_TXID"})
_TRANSPORT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
    }
)
TRANSIENT_CHAINCODE_ERRORS = frozenset(
    {ErrorReason.CHAINCODE_INTERNAL, ErrorReason.TRANSACTION_TIME_SKEWED}
)
"""Chaincode error names that mean "the chaincode failed", not "the chaincode refused"
(the bridge chaincode answers ``Internal: <exception>`` for unexpected exceptions, and
``TransactionTimeSkewed`` when an endorser's clock disagrees with the proposal's timestamp:
a fault of a clock, retried with a fresh timestamp, ADR 0008)."""
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_DETAIL_TYPE = "gateway.ErrorDetail"
# How the PEER wraps a chaincode's error response ("chaincode response 500, <message>"):
# Fabric's own text, the one thing read from a message; names and figures come only from
# the chaincode's JSON payload inside it (ADR 0015).
_PEER_WRAPPER_RE = re.compile(r"chaincode response (\d{3}), (.*)", re.DOTALL)


class TransactionInvalid(Unavailable):
    """An ordered transaction failed validation in a way a retry can resolve.

    Raised for read conflicts (``MVCC_READ_CONFLICT``, ``PHANTOM_READ_CONFLICT``) and duplicate
    ids: another transaction changed what this one read. The ledger state is unchanged by this
    transaction; re-reading the state and retrying is safe.
    """

    def __init__(self, tx_id: str, code: int, code_name: str, block_number: int) -> None:
        super().__init__(f"transaction {tx_id} invalid in block {block_number}: {code_name}")
        self.tx_id = tx_id
        self.code = code
        self.code_name = code_name
        self.block_number = block_number


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One peer's or orderer's part of a Gateway error (``gateway.ErrorDetail``)."""

    address: str
    msp_id: str
    message: str


def error_details(exc: grpc.aio.AioRpcError) -> list[ErrorDetail]:
    """The ``gateway.ErrorDetail`` entries of a rich gRPC status, in the order sent."""
    out: list[ErrorDetail] = []
    # grpc.aio yields (key, value) tuples; grpc-stubs types the items as _Metadatum.
    metadata = cast(Iterable[tuple[str, str | bytes]], exc.trailing_metadata() or ())
    for key, value in metadata:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer only loses detail, never the error itself
            logger.debug("undecodable grpc-status-details-bin trailer", exc_info=True)
            continue
        for item in status.details:
            if str(item.type_url).rsplit("/", 1)[-1] != _ERROR_DETAIL_TYPE:
                continue
            detail = gateway_pb2.ErrorDetail.FromString(item.value)
            out.append(ErrorDetail(str(detail.address), str(detail.msp_id), str(detail.message)))
    return out


def decode_chaincode_message(text: str) -> LedgerRejected:
    """The typed refusal for a bridge chaincode's error message ``Name: {JSON}``.

    SECURITY: only the JSON object counts (its ``reason`` must be in the closed set and equal
    the name before the colon; ``figures`` must be integers); anything else, including a
    message from another chaincode or a garbled payload, is ``UnknownRefusal`` with the text
    kept as detail. Never raises.
    """
    name, sep, body = text.partition(": ")
    try:
        payload = json.loads(body) if sep else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or payload.get("reason") != name.strip():
        return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, text)
    reason = ErrorReason.parse(str(payload["reason"]))
    detail, raw = payload.get("detail", ""), payload.get("figures", {})
    if reason is None or not isinstance(detail, str) or not isinstance(raw, dict):
        return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, text)
    figures: dict[str, Figure] = {
        str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)
    }
    return LedgerRejected(reason, detail, figures)


def chaincode_refusal(message: str) -> LedgerRejected | None:
    """The LedgerRejected for a peer message wrapping a chaincode error response, if it is one.

    Only responses with status >= 400 count. The peer wraps the chaincode's message as
    ``chaincode response <status>, <message>`` (Fabric's own text, the one thing read from
    it); the message itself is decoded by :func:`decode_chaincode_message`.
    """
    match = _PEER_WRAPPER_RE.search(message)
    if match is None or int(match.group(1)) < 400:
        return None
    return decode_chaincode_message(match.group(2).strip())


def chaincode_failure(message: str) -> BridgeError | None:
    """What a peer message wrapping a chaincode error response means for the caller, if one.

    A refusal (:func:`chaincode_refusal`) except the names in ``TRANSIENT_CHAINCODE_ERRORS``:
    those report a fault inside the chaincode process (an unexpected exception), not a
    decision about the ledger state, and become Unavailable so that callers retry.
    """
    refusal = chaincode_refusal(message)
    if refusal is not None and refusal.reason in TRANSIENT_CHAINCODE_ERRORS:
        return Unavailable(f"chaincode fault: {refusal}")
    return refusal


_NOT_INITIALIZED_BY_PEER = "has not been initialized for this version, must call as init first"


def map_rpc_error(exc: grpc.aio.AioRpcError, what: str, endpoint: str) -> BridgeError:
    """Translate a failed Gateway call per the module's error contract."""
    details = error_details(exc)
    code = exc.code()
    texts = [d.message for d in details] + [exc.details() or ""]
    if any(_NOT_INITIALIZED_BY_PEER in t for t in texts):
        # A definition committed with --init-required (protocol v2) before its one Init:
        # the peer refuses every other invocation, as the chaincode would (NotInitialized).
        return LedgerRejected(ErrorReason.NOT_INITIALIZED, f"{what}: the chaincode awaits its Init")
    if code not in _TRANSPORT_CODES or details:
        for text in [d.message for d in details] + [exc.details() or ""]:
            failure = chaincode_failure(text)
            if failure is not None:
                return failure
    parts = "; ".join(f"{d.msp_id or '?'}@{d.address or '?'}: {d.message}" for d in details)
    message = f"fabric gateway {endpoint} {what} failed: {code.name} {exc.details()}"
    return Unavailable(message + (f" [{parts}]" if parts else ""))
