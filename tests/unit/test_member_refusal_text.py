"""What another organisation reads of a peer's refusal (``BridgeError.public``): only typed
reasons and codes, never the peer's own words, which stay in the coordinator's log.

A committee member, or a relayer run by another chain operator, may be compromised: its
refusal text would otherwise reach every brokerage whose transfer it refuses (a transfer's
waiting reason, a gRPC status message). The clients' own counting is exercised without a
network (the members' answers stand in for their servers, as in ``test_batch_certs``)."""

from __future__ import annotations

import grpc
import pytest

from bridge.coordinator.clients import (
    MAX_MEMBER_TEXT,
    CommitteeClient,
    RelayerGateway,
    agreed,
    member_refusal,
    translate,
)
from bridge.coordinator.supervision import waiting_reason
from bridge.core.reasons import ErrorReason
from bridge.domain.claim_batches import RefusedItem
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee
from bridge.domain.errors import (
    BridgeReason,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
    public_text,
)
from bridge.rpc.errors import DETAILS_KEY, status_details
from bridge.rpc.tls import INSECURE_ENV
from bridge.v1 import verifier_pb2
from tests.unit.test_batch_certs import B, answering, terms

pytestmark = [pytest.mark.unit, pytest.mark.security]

HOSTILE = "URGENT: your transfer is held, call +82-2-0000-0000 and quote holder 0x51"
"""A refusal text a compromised member or relayer would like every brokerage to read."""

COMMITTEE = Committee(1, 3, tuple(bytes([i]) * 20 for i in range(1, 5)))
ENDPOINTS = [f"m{i}:1" for i in range(4)]


def refusing(
    text: str,
    reason: ErrorReason | None = None,
    code: grpc.StatusCode | None = None,
    details: bool | None = None,
) -> grpc.aio.AioRpcError:
    """A peer's refusal with ``text`` and valid status details naming ``reason`` (a bridge
    reason without it) when ``reason`` or ``details`` is given, else none at all."""
    trailer = grpc.aio.Metadata()
    if reason is not None or details:
        raw = status_details(PreconditionFailed("x", reason)).SerializeToString()
        trailer = grpc.aio.Metadata((DETAILS_KEY, raw))
    return grpc.aio.AioRpcError(
        code or grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), trailer, details=text
    )


def unreachable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )


def client(monkeypatch: pytest.MonkeyPatch) -> CommitteeClient:
    monkeypatch.setenv(INSECURE_ENV, "1")  # channels to the (never dialled) endpoints
    return CommitteeClient(COMMITTEE, ENDPOINTS, 1.0, members=list(COMMITTEE.members))


def test_a_member_refusal_keeps_its_typed_reason_and_bounds_its_words() -> None:
    typed = member_refusal(refusing(HOSTILE, ErrorReason.TERMS_MISMATCH))
    assert typed.reason == "TERMS_MISMATCH" and typed.text == HOSTILE
    bare = member_refusal(refusing("y" * 10_000))
    assert bare.reason == "UNKNOWN", "no valid details: no reason taken from the text"
    assert len(bare.text) == MAX_MEMBER_TEXT


async def test_a_committee_refusal_shows_reasons_not_the_members_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two of four members refuse a claim (t = 3): refused. The log's message keeps both
    texts; the public text (a gRPC status, a transfer's waiting reason) names the two
    typed reasons only."""
    c = client(monkeypatch)
    answering(
        c,
        ENDPOINTS,
        [
            refusing(HOSTILE, ErrorReason.TERMS_MISMATCH),
            refusing("<b>member 2 is down</b>"),
            verifier_pb2.SignClaimResponse(),
            verifier_pb2.SignClaimResponse(),
        ],
    )
    with pytest.raises(PreconditionFailed) as info:
        await c.certify(ClaimKind.LOCKED, terms(1)[0], [B])
    assert HOSTILE in str(info.value) and "member 2 is down" in str(info.value)
    shown = public_text(info.value)
    assert shown == "committee refused LOCKED: 2 refused (TERMS_MISMATCH, UNKNOWN)"
    assert HOSTILE not in waiting_reason(info.value, 0.0)
    assert "TERMS_MISMATCH" in waiting_reason(info.value, 0.0)


async def test_a_batch_refused_whole_shows_reasons_not_the_members_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = client(monkeypatch)
    answering(
        c,
        ENDPOINTS,
        [
            refusing(HOSTILE, ErrorReason.TERMS_MISMATCH),
            refusing(HOSTILE, ErrorReason.TERMS_MISMATCH),
            verifier_pb2.SignClaimsResponse(),
            verifier_pb2.SignClaimsResponse(),
        ],
    )
    with pytest.raises(PreconditionFailed) as info:
        await c.certify_batch(ClaimKind.LOCKED, terms(3), [B])
    assert HOSTILE in str(info.value)
    assert public_text(info.value) == (
        "committee refused the LOCKED batch of 3 transfers: 2 refused (TERMS_MISMATCH)"
    )


async def test_refusals_beside_unreachable_members_show_reasons_not_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One member refuses, two are unreachable: Unavailable (retryable), whose public text
    counts them and names the reason, without the refusing member's words."""
    c = client(monkeypatch)
    answering(
        c,
        ENDPOINTS,
        [
            refusing(HOSTILE, ErrorReason.TOO_EARLY),
            unreachable(),
            unreachable(),
            verifier_pb2.SignClaimResponse(),
        ],
    )
    with pytest.raises(Unavailable) as info:
        await c.certify(ClaimKind.LOCKED, terms(1)[0], [B])
    assert HOSTILE in str(info.value)
    assert public_text(info.value) == (
        "committee: 2 of 4 members unreachable; need 3; 1 refused (TOO_EARLY)"
    )


@pytest.mark.parametrize(
    ("code", "kind", "shown"),
    [
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            PreconditionFailed,
            "relayer of b refused (PRECONDITION_FAILED)",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput, "relayer of b: invalid argument"),
        (grpc.StatusCode.NOT_FOUND, NotFound, "relayer of b: not found"),
    ],
)
def test_a_relayers_refusal_shows_its_code_not_its_words(
    code: grpc.StatusCode, kind: type[Exception], shown: str
) -> None:
    """A relayer's answer that is not a ledger's refusal (a bridge reason in its details):
    its words for this log, its code or typed reason for other organisations. (A ledger's
    refusal, an ErrorReason, keeps its detail by design: ADR 0015.)"""
    exc = translate(refusing(HOSTILE, code=code, details=True), "relayer of b", "b")
    assert isinstance(exc, kind)
    assert HOSTILE in str(exc)
    assert public_text(exc) == shown


def test_a_relayers_refusal_without_a_reason_keeps_its_words_out_of_the_wire() -> None:
    """A FAILED_PRECONDITION without valid details is UNKNOWN_REFUSAL from that relayer:
    the log's message keeps its words; the public text and the ErrorInfo ``detail`` a
    brokerage or the depository would receive do not (review helper-113 H2)."""
    exc = translate(refusing(HOSTILE), "relayer of b", "b")
    assert isinstance(exc, LedgerRejected) and exc.reason is ErrorReason.UNKNOWN_REFUSAL
    assert HOSTILE in str(exc)
    assert public_text(exc) == "UnknownRefusal: relayer of b"
    wire = status_details(exc)
    assert HOSTILE not in wire.message and HOSTILE not in wire.SerializeToString().decode("latin-1")


async def test_a_relayer_answering_for_another_ledger_is_named_without_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(INSECURE_ENV, "1")
    gateway = RelayerGateway("b", "127.0.0.1:1", 1.0)
    exc = gateway._wrong_ledger(HOSTILE * 10)
    assert isinstance(exc, Unavailable)
    assert public_text(exc) == "relayer of b answered for another ledger"
    assert len(str(exc)) < 160


def test_an_items_reason_is_kept_only_when_every_refuser_gave_it() -> None:
    """Review helper-113 L6: a lone member answering first cannot choose the typed reason
    a brokerage reads for an item (the others refused it for another reason)."""
    lie = RefusedItem(3, ErrorReason.HOLDER_FROZEN, False, HOSTILE)
    honest = RefusedItem(3, ErrorReason.TERMS_MISMATCH, False, "terms differ")
    mixed = agreed([lie, honest])
    assert (mixed.index, mixed.reason) == (3, BridgeReason.CLAIM_REFUSED)
    assert agreed([honest, honest]) == honest


def test_a_ledgers_refusal_shows_its_figures_not_the_relayers_text() -> None:
    """Review helper-114 M1: a typed refusal's ErrorInfo ``detail`` is the relayer's text
    (a node's revert message, its address). What another organisation reads is the reason
    and the detail rebuilt from the validated integer figures; the text is this log's."""
    sent = LedgerRejected(ErrorReason.TOO_EARLY, f"node 10.0.0.7:8545 {HOSTILE}", {"notBefore": 5})
    raw = status_details(sent).SerializeToString()
    call = grpc.aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, raw)),
        details=str(sent),
    )
    exc = translate(call, "relayer of b", "b")
    assert isinstance(exc, LedgerRejected) and exc.reason is ErrorReason.TOO_EARLY
    assert exc.detail == "notBefore=5" and exc.not_before == 5
    assert HOSTILE in str(exc) and "10.0.0.7" in str(exc)
    assert public_text(exc) == "TooEarly: notBefore=5"
    wire = status_details(exc).SerializeToString().decode("latin-1")
    assert HOSTILE not in wire and "10.0.0.7" not in wire
