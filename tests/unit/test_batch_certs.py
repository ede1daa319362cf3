"""The coordinator's side of batched certificates (ADR 0025) without a network: the batch
it expects, the certificate t root signatures make, the endpoints' rules applied before
anything is handed out, and a member's refusal details read back defensively."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2

from bridge.coordinator.batch_certs import (
    BatchItemsRefused,
    assemble_batch,
    check_items,
    ledger_batch,
)
from bridge.coordinator.clients import CommitteeClient, LedgerDomain
from bridge.core.reasons import ErrorReason
from bridge.core.words import evm_network_word
from bridge.domain.claim_batches import ClaimsRefused, RefusedItem
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee
from bridge.domain.errors import (
    BridgeReason,
    InvalidCertificate,
    InvalidInput,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.rpc.claims_refusal import MAX_MESSAGE, refusal_status, refused_items
from bridge.rpc.errors import DETAILS_KEY
from bridge.rpc.tls import INSECURE_ENV
from bridge.v1 import verifier_pb2
from tests.support import signatures_checked

pytestmark = [pytest.mark.unit, pytest.mark.security, pytest.mark.batch]

SIGNERS = sorted(
    (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
)
COMMITTEE = Committee(1, 3, tuple(s.address for s in SIGNERS))
B = LedgerDomain("b", LedgerId("b").word, bytes(12) + b"\x0b" * 20, evm_network_word(31_337))
OTHER = LedgerDomain("c", LedgerId("c").word, B.bridge_word, B.network_word)


def terms(n: int) -> list[TransferTerms]:
    return [
        TransferTerms(
            nonce=secrets.token_bytes(32),
            security=SecurityId("KR7005930003").word,
            amount=1,
            src_ledger=LedgerId("a").word,
            src_bridge=bytes(12) + b"\x0a" * 20,
            dst_ledger=B.ledger_word,
            dst_bridge=B.bridge_word,
            sender=bytes(12) + b"\x51" * 20,
            recipient=bytes(12) + b"\x52" * 20,
            instructor=bytes(12) + b"\x53" * 20,
            deadline=2_000_000_000,
        )
        for _ in range(n)
    ]


def test_t_root_signatures_make_a_checked_certificate_with_every_proof() -> None:
    ts = terms(5)
    batch = ledger_batch(B, 1, ClaimKind.LOCKED, ts)
    rogue = LocalKeySigner(secrets.token_bytes(32))
    sigs = [s.sign_digest(batch.digest) for s in reversed(SIGNERS)] + [
        rogue.sign_digest(batch.digest)
    ]
    cert = assemble_batch(COMMITTEE, batch, sigs)
    assert len(cert.signatures) == 3, "t kept, the rogue dropped"
    out = check_items(B, COMMITTEE, batch, cert, ts)
    assert [i.terms for i in out.items] == ts and out.ledger == "b"


def test_nothing_a_ledger_would_refuse_is_handed_out() -> None:
    ts = terms(3)
    batch = ledger_batch(B, 1, ClaimKind.COMMIT, ts)
    with pytest.raises(InvalidCertificate, match="only 2 valid signatures"):
        assemble_batch(COMMITTEE, batch, [s.sign_digest(batch.digest) for s in SIGNERS[:2]])
    cert = assemble_batch(COMMITTEE, batch, [s.sign_digest(batch.digest) for s in SIGNERS])
    # The same certificate for another ledger's endpoint: the root digest differs.
    with pytest.raises(InvalidCertificate) as info:
        check_items(OTHER, COMMITTEE, ledger_batch(OTHER, 1, ClaimKind.COMMIT, ts), cert, ts)
    assert info.value.reason is ErrorReason.NOT_COMMITTEE_MEMBER
    # An item that is not in the batch has no proof.
    with pytest.raises(InvalidCertificate) as info:
        check_items(B, COMMITTEE, batch, cert, [*ts[:2], terms(1)[0]])
    assert info.value.reason is ErrorReason.INVALID_BATCH_PROOF
    # More items than the root's count.
    with pytest.raises(InvalidCertificate) as info:
        check_items(B, COMMITTEE, batch, cert, [*ts, *terms(1)])
    assert info.value.reason is ErrorReason.INVALID_BATCH


def test_a_malformed_batch_is_refused_before_asking() -> None:
    ts = terms(2)
    with pytest.raises(InvalidInput, match="DuplicateBatchItem"):
        ledger_batch(B, 1, ClaimKind.LOCKED, [*ts, ts[0]])
    with pytest.raises(InvalidInput, match="InvalidBatch"):
        ledger_batch(B, 1, ClaimKind.LOCKED, [])


def _trailer(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return ((DETAILS_KEY, status.SerializeToString()),)


def test_refusal_details_are_read_defensively() -> None:
    exc = ClaimsRefused([
        RefusedItem(7, BridgeReason.CLAIM_REFUSED, False, "x" * 1000),
        RefusedItem(2, ErrorReason.TOO_EARLY, True, "later"),
        RefusedItem(9, BridgeReason.CLAIM_REFUSED, False, "other text, same reason"),
    ])  # fmt: skip
    got = refused_items(_trailer(refusal_status(exc)), 10)
    assert [(i.index, i.reason, i.retryable) for i in got] == [
        (2, ErrorReason.TOO_EARLY, True),
        (7, BridgeReason.CLAIM_REFUSED, False),
        (9, BridgeReason.CLAIM_REFUSED, False),
    ]
    assert len(got[1].message) == MAX_MESSAGE, "one bounded message per reason"
    # Only items of the request: bits beyond its count are ignored.
    assert [i.index for i in refused_items(_trailer(refusal_status(exc)), 8)] == [2, 7]
    # A reason outside the closed sets is UNKNOWN; an item in two groups keeps the first;
    # garbage and absence are no items.
    status = status_pb2.Status(code=9)
    item = any_pb2.Any()
    item.Pack(
        verifier_pb2.SignClaimsRefusal(
            groups=[
                verifier_pb2.RefusedClaims(reason="Nope", items=b"\x02"),
                verifier_pb2.RefusedClaims(reason="CLAIM_REFUSED", items=b"\x03"),
            ]
        )
    )
    status.details.append(item)
    assert [(i.index, i.reason) for i in refused_items(_trailer(status), 8)] == [
        (0, BridgeReason.CLAIM_REFUSED),
        (1, BridgeReason.UNKNOWN),
    ]
    assert refused_items(((DETAILS_KEY, b"\xff\x00garbage"),), 8) == ()
    assert refused_items(None, 8) == ()
    with pytest.raises(ValueError, match="at least one refused item"):
        ClaimsRefused([])


def test_a_refusal_of_the_largest_batch_fits_in_a_trailer() -> None:
    """5,000 refused items under three reasons: a few KB (gRPC refuses trailers over
    8 KB, and the coordinator would take RESOURCE_EXHAUSTED for an unreachable member)."""
    reasons: list[ErrorReason | BridgeReason] = [
        BridgeReason.CLAIM_REFUSED,
        BridgeReason.PRECONDITION_FAILED,
        ErrorReason.TOO_EARLY,
    ]
    exc = ClaimsRefused([RefusedItem(i, reasons[i % 3], False, "m" * 1000) for i in range(5000)])
    raw = refusal_status(exc).SerializeToString()
    assert len(raw) < 4096, len(raw)
    got = refused_items(((DETAILS_KEY, raw),), 5000)
    assert [(i.index, i.reason) for i in got] == [(i, reasons[i % 3]) for i in range(5000)]


# ---- review helper-108 M2: refusals counted against the committees the ledgers accept


def _refused_rpc(indexes: list[int]) -> grpc.aio.AioRpcError:
    status = refusal_status(
        ClaimsRefused([RefusedItem(i, BridgeReason.CLAIM_REFUSED, False, "no") for i in indexes])
    )
    return grpc.aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString())),
        details="refused",
    )


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A member's failed call: ``code`` and ``details``, no status details."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _unreachable_rpc() -> grpc.aio.AioRpcError:
    return _rpc_error(grpc.StatusCode.UNAVAILABLE, "down")


def answering(client: CommitteeClient, endpoints: Sequence[str], answers: Sequence[object]) -> None:
    """The members at ``endpoints`` answer each of ``client``'s questions with ``answers``
    (one each, in order): a stand-in for their servers in these tests of the client's own
    counting."""

    async def ask_all(call: object, examine: object) -> AsyncIterator[tuple[str, object]]:
        for endpoint, answer in zip(endpoints, answers, strict=True):
            yield endpoint, answer

    client._ask_all = ask_all  # type: ignore[method-assign,assignment]


@pytest.mark.parametrize("members_known", [True, False])
async def test_after_a_rotation_an_item_two_current_members_refuse_is_dropped(
    members_known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator asks the genesis members (retired, unreachable) and the current
    committee (4, t = 3); two current members refuse item 0, two sign. Item 0 cannot be
    certified by the committee the ledger accepts: it is dropped, the rest asked again
    (before: the refusals were counted against all eight endpoints and the whole batch was
    Unavailable). Without the endpoints' member addresses the rule stays the old one."""
    monkeypatch.setenv(INSECURE_ENV, "1")  # channels to the (never dialled) endpoints
    old = Committee(1, 3, tuple(bytes([i]) * 20 for i in range(1, 5)))
    new = Committee(2, 3, tuple(bytes([i]) * 20 for i in range(5, 9)))
    endpoints = [f"m{i}:1" for i in range(8)]
    members = [*old.members, *new.members] if members_known else None
    client = CommitteeClient(old, endpoints, 1.0, members=members)
    answers: list[object] = [_unreachable_rpc()] * 4 + [
        _refused_rpc([0]),
        _refused_rpc([0]),
        verifier_pb2.SignClaimsResponse(),
        verifier_pb2.SignClaimsResponse(),
    ]

    answering(client, endpoints, answers)
    if members_known:
        with pytest.raises(BatchItemsRefused) as info:
            await client.certify_batch(ClaimKind.LOCKED, terms(5), [B], {"b": (new,)})
        assert [i.index for i in info.value.items] == [0]
    else:
        with pytest.raises(Unavailable):
            await client.certify_batch(ClaimKind.LOCKED, terms(5), [B], {"b": (new,)})


async def test_a_member_failing_internally_is_unreachable_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review helper-109: two members answer INTERNAL with their own text (a node's
    address): they count as unreachable (retryable), not as refusals, and their text is
    not in what the coordinator reports."""
    monkeypatch.setenv(INSECURE_ENV, "1")
    committee = Committee(1, 3, tuple(bytes([i]) * 20 for i in range(1, 5)))
    endpoints = [f"m{i}:1" for i in range(4)]
    client = CommitteeClient(committee, endpoints, 1.0, members=list(committee.members))
    crash = _rpc_error(grpc.StatusCode.INTERNAL, "geth http://10.1.2.3:8545 connection refused")
    answers: list[object] = [
        crash,
        crash,
        verifier_pb2.SignClaimsResponse(),
        verifier_pb2.SignClaimsResponse(),
    ]

    answering(client, endpoints, answers)
    with pytest.raises(Unavailable) as info:
        await client.certify_batch(ClaimKind.LOCKED, terms(2), [B])
    assert "10.1.2.3" not in str(info.value)
    assert "2 of 4 members unreachable" in str(info.value)


async def test_refusals_are_weighed_per_committee_without_items_and_without_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review helper-109: (1) after a rotation, two current members refusing the whole batch
    (no item named) with the retired members unreachable is a refusal, not Unavailable;
    (2) a committee of five (t = 3) with an endpoint for four members: two refusing item 0
    leave two that could sign it, so it is dropped."""
    monkeypatch.setenv(INSECURE_ENV, "1")
    old = Committee(1, 3, tuple(bytes([i]) * 20 for i in range(1, 5)))
    new = Committee(2, 3, tuple(bytes([i]) * 20 for i in range(5, 9)))
    endpoints = [f"m{i}:1" for i in range(8)]
    client = CommitteeClient(old, endpoints, 1.0, members=[*old.members, *new.members])
    whole = _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "no")
    answers: list[object] = [_unreachable_rpc()] * 4 + [
        whole,
        whole,
        verifier_pb2.SignClaimsResponse(),
        verifier_pb2.SignClaimsResponse(),
    ]

    answering(client, endpoints, answers)
    with pytest.raises(PreconditionFailed) as refused:
        await client.certify_batch(ClaimKind.LOCKED, terms(3), [B], {"b": (new,)})
    assert not isinstance(refused.value, BatchItemsRefused)

    five = Committee(3, 3, tuple(bytes([i]) * 20 for i in range(10, 15)))
    endpoints = [f"n{i}:1" for i in range(4)]
    client = CommitteeClient(five, endpoints, 1.0, members=list(five.members[:4]))
    answers = [
        _refused_rpc([0]),
        _refused_rpc([0]),
        verifier_pb2.SignClaimsResponse(),
        verifier_pb2.SignClaimsResponse(),
    ]
    answering(client, endpoints, answers)
    with pytest.raises(BatchItemsRefused) as info:
        await client.certify_batch(ClaimKind.LOCKED, terms(3), [B])
    assert [i.index for i in info.value.items] == [0]


# ---- review helper-117 #1: one member's answer flooding the client with copies


def _claim_entry(signer: LocalKeySigner, t: TransferTerms, wrong: bool) -> object:
    from bridge.domain.claims import Claim, ClaimDomain, claim_digest

    digest = claim_digest(
        ClaimDomain(B.ledger_word, B.bridge_word, 1, B.network_word),
        Claim(kind=ClaimKind.LOCKED, transfer_id=t.transfer_id, terms_hash=t.terms_hash),
    )
    signed = b"\x01" * 32 if wrong else digest
    return verifier_pb2.LedgerSignature(
        ledger_id="b", epoch=1, digest=signed, signature=signer.sign_digest(signed)
    )


def _batch_entry(signer: LocalKeySigner, ts: list[TransferTerms], wrong: bool) -> object:
    b = ledger_batch(B, 1, ClaimKind.LOCKED, ts)
    signed = b"\x01" * 32 if wrong else b.digest
    return verifier_pb2.BatchRootSignature(
        ledger_id="b", epoch=1, root=b.root, count=b.count, digest=signed,
        signature=signer.sign_digest(signed),
    )  # fmt: skip


@pytest.mark.parametrize("wrong", [False, True], ids=["its own signature", "a wrong digest"])
@pytest.mark.parametrize("batched", [False, True], ids=["single claim", "batch"])
async def test_a_member_repeating_an_entry_costs_one_check_and_one_report(
    monkeypatch: pytest.MonkeyPatch, wrong: bool, batched: bool
) -> None:
    """One member answers with the same entry 20,000 times (a 4 MiB answer holds about
    29,000): before, the client recovered a signer for every copy, and for a wrong digest
    logged and recorded a misbehaviour per copy (seconds of CPU on the event loop and
    thousands of rows, at every certification). Now one entry per (ledger, epoch) asked is
    checked: the certificate is the other members', one report at most."""
    import bridge.coordinator.clients as clients

    monkeypatch.setenv(INSECURE_ENV, "1")
    checked = signatures_checked(monkeypatch, clients)
    reports: list[object] = []

    async def sink(incident: object) -> None:
        reports.append(incident)

    endpoints = [f"m{i}:1" for i in range(4)]
    client = CommitteeClient(COMMITTEE, endpoints, 1.0, on_misbehaviour=sink,
                             members=list(COMMITTEE.members))  # fmt: skip
    ts = terms(3 if batched else 1)
    if batched:

        def entry(signer: LocalKeySigner, bad: bool) -> object:
            return _batch_entry(signer, ts, bad)

        response: type = verifier_pb2.SignClaimsResponse
    else:

        def entry(signer: LocalKeySigner, bad: bool) -> object:
            return _claim_entry(signer, ts[0], bad)

        response = verifier_pb2.SignClaimResponse
    flood = response(signatures=[entry(SIGNERS[0], wrong)] * 20_000)
    honest = [response(signatures=[entry(s, False)]) for s in SIGNERS[1:]]
    answering(client, endpoints, [flood, *honest])
    if batched:
        got = await client.certify_batch(ClaimKind.LOCKED, ts, [B])
        signers = got["b"].certificate.signatures
    else:
        certs = await client.certify(ClaimKind.LOCKED, ts[0], [B])
        signers = certs["b"].signatures
    assert len(signers) == 3
    assert len(reports) == (1 if wrong else 0)
    assert len(checked) <= 1 + 3 + 3 * 3, f"{len(checked)} signature checks"
