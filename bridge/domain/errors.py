"""Domain errors; the gRPC boundary maps each to one status code and one reason.

Every error carries a reason from a closed set: a ledger's refusal carries the endpoint's
:class:`~bridge.core.reasons.ErrorReason` and the refusal's arguments as typed figures; any
other error carries a :class:`BridgeReason`. Nothing downstream reads a name or a figure out
of a message (ADR 0015).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, TypeVar

from bridge.core.reasons import ErrorReason

Figure = int | str
"""A refusal argument: an integer (amount, time, epoch, index) or a 0x-hex word/address."""


class BridgeReason(enum.StrEnum):
    """Reasons the bridge itself reports, beside the ledgers' :class:`ErrorReason`.

    Values are UPPER_SNAKE_CASE as ``google.rpc.ErrorInfo.reason`` requires; no value equals
    an :class:`ErrorReason` member name (a unit test enforces it).
    """

    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    CERTIFICATE_REFUSED = "CERTIFICATE_REFUSED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    HALTED = "HALTED"
    FLOW_LIMIT_QUEUED = "FLOW_LIMIT_QUEUED"
    CLAIM_REFUSED = "CLAIM_REFUSED"
    STALE_VERSION = "STALE_VERSION"
    INTERNAL = "INTERNAL"
    NOT_LEADER = "NOT_LEADER"
    """A standby coordinator (or a deposed leader): call the leader (ErrorInfo ``leader``)."""
    UNKNOWN = "UNKNOWN"
    """A peer reported a reason outside both closed sets, or garbled details."""
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    """The coordinator's own database cannot serve the call right now (unreachable, the
    session ended, SQLite busy, a statement timeout, a deadlock or serialization failure);
    nothing was done, or a write's outcome is unknown. Unlike a ledger's UNAVAILABLE, the
    fault is this coordinator's: failing-over clients try the next one (a standby answers
    NOT_LEADER naming the leader, which is then tried again after the backoff)."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    """---- batchfix: a per-caller bound is reached (e.g. concurrent WatchBatch streams)."""


class BridgeError(Exception):
    """Base class of every error the bridge reports to a caller.

    ``kind`` is the bridge-level reason the class reports when it carries no ledger reason.
    ``public``: when set, the text another organisation may read instead of the message
    (the message then carries a peer's own words for this process's log: a relayer's node
    errors and addresses); :func:`public_text`.
    """

    kind: ClassVar[BridgeReason] = BridgeReason.INTERNAL
    public: str | None = None
    on_input: bool = False
    """Set (by :func:`refused_on_input`, only where this coordinator raises it) when the
    refusal is of the caller's own request, decided by this coordinator alone from what the
    request says and the transfers it already recorded: a malformed field, an instruction
    that does not authenticate, a deadline, a key or transfer id already used. Never set
    for what a ledger, a peer or an outage answered. The batch quota counts these."""


E = TypeVar("E", bound=BridgeError)


def refused_on_input(exc: E) -> E:
    """``exc``, marked a refusal of the caller's own input (:attr:`BridgeError.on_input`)."""
    exc.on_input = True
    return exc


def reason_name(reason: ErrorReason | BridgeReason) -> str:
    """``reason``'s name on the wire (``ErrorInfo.reason``, ADR 0015): an endpoint's
    UPPER_SNAKE_CASE member name, or the bridge reason's value."""
    return reason.name if isinstance(reason, ErrorReason) else reason.value


def with_public(exc: E, public: str) -> E:
    """``exc`` with ``public`` as the text another organisation reads of it (its message,
    a peer's own words included, stays for this process's log)."""
    exc.public = public
    return exc


def public_text(exc: BaseException) -> str:
    """``exc``'s text as another organisation may read it: its ``public`` text when it has
    one, else its message."""
    public = getattr(exc, "public", None)
    return public if isinstance(public, str) else str(exc)


class InvalidInput(BridgeError):
    """The request is malformed (maps to INVALID_ARGUMENT)."""

    kind = BridgeReason.INVALID_REQUEST


class NotFound(BridgeError):
    """A named security, ledger or transfer does not exist (maps to NOT_FOUND)."""

    kind = BridgeReason.NOT_FOUND


class PreconditionFailed(BridgeError):
    """The request is well-formed but the system's state forbids it (FAILED_PRECONDITION).

    ``reason``, when set, is the ledger refusal the state predicts (e.g. the coordinator's
    pre-check seeing the sender frozen reports ``HolderFrozen``); clients receive it as the
    ErrorInfo reason. ``ledger`` names the ledger concerned, when known.
    """

    kind = BridgeReason.PRECONDITION_FAILED

    def __init__(self, message: str, reason: ErrorReason | None = None, ledger: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.ledger = ledger


class StaleVersion(PreconditionFailed):
    """A versioned write named a version other than the next one (read again and retry)."""

    kind = BridgeReason.STALE_VERSION


class Conflict(BridgeError):
    """The request conflicts with an earlier one, e.g. a reused idempotency key (ALREADY_EXISTS)."""

    kind = BridgeReason.CONFLICT


class PermissionDenied(BridgeError):
    """The caller may not do this (PERMISSION_DENIED); e.g. a batch item naming another
    brokerage's source ledger (ADR 0023). The authorisation interceptor refuses whole calls
    itself; this is for refusals decided inside a handler."""

    kind = BridgeReason.PERMISSION_DENIED


class Unavailable(BridgeError):
    """A dependency (ledger, relayer, verifier) cannot be reached right now (UNAVAILABLE)."""

    kind = BridgeReason.UNAVAILABLE


class ResourceExhausted(BridgeError):
    """---- batchfix: the caller holds as much of a bounded resource as it may (e.g. its
    concurrent WatchBatch streams); retry when one is released (RESOURCE_EXHAUSTED)."""

    kind = BridgeReason.RESOURCE_EXHAUSTED


class NotLeader(Unavailable):
    """This coordinator is a standby, or was the leader and lost its lease (ADR 0017);
    nothing was done. ``leader_address`` names the current leader when known ('' unknown):
    the client should call it, or another coordinator."""

    kind = BridgeReason.NOT_LEADER

    def __init__(self, message: str, leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_address = leader_address


class InvalidCertificate(BridgeError):
    """A committee certificate (or a signature) does not verify.

    ``reason`` is the endpoint error (``bridge.core.reasons.ErrorReason``) a ledger would
    refuse it with, when known.
    """

    kind = BridgeReason.CERTIFICATE_REFUSED

    def __init__(self, message: str, reason: ErrorReason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class LedgerRejected(BridgeError):
    """The ledger's contract refused a step; ``reason`` is the contract's error.

    Always a decision of the ledger given its current state, never a transport fault
    (those raise Unavailable). ``said``: a peer's own words about it (a relayer's status
    message), kept in the message for this process's log, never in ``detail`` or the
    public text. ``figures`` holds the refusal's arguments by their ABI / chaincode
    names (e.g. ``notBefore``, ``available``, ``requested``) as typed values, read from the
    revert data or the chaincode's JSON payload, never from a message. It is read-only.
    ``ledger`` names the refusing ledger when the raiser knows it.
    """

    def __init__(
        self,
        reason: ErrorReason,
        detail: str = "",
        figures: Mapping[str, Figure] | None = None,
        ledger: str = "",
        said: str = "",
    ) -> None:
        shown = f"{reason.value}{': ' + detail if detail else ''}"
        super().__init__(f"{shown} ({said})" if said else shown)
        if said:
            # SECURITY: a peer's own words (``said``) are for this process's log only.
            self.public = shown
        self.reason = reason
        self.detail = detail
        self.ledger = ledger
        self.figures: Mapping[str, Figure] = MappingProxyType(dict(figures or {}))

    def figure(self, name: str) -> int | None:
        """The integer argument ``name`` of the refusal, or None if absent or not an integer."""
        value = self.figures.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def not_before(self) -> int | None:
        """``TooEarly``'s ``notBefore`` (unix seconds), when the ledger reported it."""
        return self.figure("notBefore")

    @property
    def available(self) -> int | None:
        """``FlowLimitExceeded``'s ``available`` units, when the ledger reported it."""
        return self.figure("available")

    @property
    def requested(self) -> int | None:
        """``FlowLimitExceeded``'s ``requested`` units, when the ledger reported it."""
        return self.figure("requested")
