"""Domain errors; the gRPC boundary maps each to one status code."""

from __future__ import annotations

from bridge.core.reasons import ErrorReason


class BridgeError(Exception):
    """Base class of every error the bridge reports to a caller."""


class InvalidInput(BridgeError):
    """The request is malformed (maps to INVALID_ARGUMENT)."""


class NotFound(BridgeError):
    """A named security, ledger or transfer does not exist (maps to NOT_FOUND)."""


class PreconditionFailed(BridgeError):
    """The request is well-formed but the system's state forbids it (FAILED_PRECONDITION)."""


class Conflict(BridgeError):
    """The request conflicts with an earlier one, e.g. a reused idempotency key (ALREADY_EXISTS)."""


class Unavailable(BridgeError):
    """A dependency (ledger, relayer, verifier) cannot be reached right now (UNAVAILABLE)."""


class InvalidCertificate(BridgeError):
    """A committee certificate (or a signature) does not verify.

    ``reason`` is the endpoint error (``bridge.core.reasons.ErrorReason``) a ledger would
    refuse it with, when known.
    """

    def __init__(self, message: str, reason: ErrorReason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class LedgerRejected(BridgeError):
    """The ledger's contract refused a step; ``reason`` names the contract's error.

    Always a decision of the ledger given its current state, never a transport fault
    (those raise Unavailable).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason
        self.detail = detail
