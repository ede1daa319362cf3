"""Each domain error maps to exactly one gRPC status code."""

from __future__ import annotations

import grpc
import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeError,
    Conflict,
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from bridge.rpc.errors import grpc_errors, status_for
from verifiers.policy import ClaimRefused
from verifiers.votes import ConflictingVote

pytestmark = pytest.mark.unit

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad"), Code.INVALID_ARGUMENT),
        (NotFound("missing"), Code.NOT_FOUND),
        (Conflict("key reused"), Code.ALREADY_EXISTS),
        (PreconditionFailed("not yet"), Code.FAILED_PRECONDITION),
        (LedgerRejected(ErrorReason.BAD_STATE, "0x01"), Code.FAILED_PRECONDITION),
        (InvalidCertificate("bad sig"), Code.PERMISSION_DENIED),
        (Unavailable("down"), Code.UNAVAILABLE),
        (BridgeError("unclassified"), Code.INTERNAL),
        # Subclasses used by the verifier keep their parent's code.
        (ClaimRefused("source leg is NONE"), Code.FAILED_PRECONDITION),
        (ConflictingVote("already signed COMMIT"), Code.FAILED_PRECONDITION),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BridgeError) else v.name,
)
def test_status_for(error: BridgeError, code: grpc.StatusCode) -> None:
    assert status_for(error) is code


def test_unknown_subclass_of_a_mapped_error_inherits_its_code() -> None:
    class MyNotFound(NotFound):
        pass

    assert status_for(MyNotFound("x")) is Code.NOT_FOUND


def test_ledger_rejected_message_and_fields() -> None:
    e = LedgerRejected(ErrorReason.TERMS_MISMATCH, "0xabc")
    assert str(e) == "TermsMismatch: 0xabc"
    assert (e.reason, e.detail) == ("TermsMismatch", "0xabc")
    assert str(LedgerRejected(ErrorReason.ZERO_AMOUNT)) == "ZeroAmount"


class FakeContext:
    """Records the first abort, like grpc.aio (which raises AbortError from abort)."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.trailing: tuple[tuple[str, bytes], ...] = ()

    def set_trailing_metadata(self, md: tuple[tuple[str, bytes], ...]) -> None:
        self.trailing = md

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)


class Servicer:
    def __init__(self, exc: Exception | None) -> None:
        self.exc = exc

    @grpc_errors
    async def Method(self, request: object, context: FakeContext) -> str:
        if self.exc is not None:
            raise self.exc
        return f"ok:{request}"


async def test_grpc_errors_passes_results_through() -> None:
    ctx = FakeContext()
    assert await Servicer(None).Method("r", ctx) == "ok:r"
    assert ctx.aborted is None


async def test_grpc_errors_maps_domain_errors_with_message() -> None:
    ctx = FakeContext()
    await Servicer(NotFound("transfer 0x01 not found")).Method("r", ctx)
    assert ctx.aborted == (Code.NOT_FOUND, "transfer 0x01 not found")


async def test_grpc_errors_hides_unexpected_exception_details() -> None:
    ctx = FakeContext()
    await Servicer(ValueError("secret internals")).Method("r", ctx)
    assert ctx.aborted == (Code.INTERNAL, "internal error: ValueError")
