"""``RelayerService.SubmitBatch`` messages to and from the batched-step values (ADR 0025).

Generated types stop here: the relayer's servicer and the coordinator's gateway convert on
entry and exit. Every decoder validates and raises InvalidInput naming the field; a request
that decodes is well formed (the ledger still decides whether it is acceptable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.core import batch as core
from bridge.domain.errors import InvalidInput
from bridge.domain.ledger_batches import BATCHED_ACTIONS, BatchItem, BatchItemResult, BatchOutcome
from bridge.domain.legs import Action, Leg, LegState
from bridge.rpc.convert import terms_from_pb, terms_to_pb
from bridge.v1 import relayer_pb2

__all__ = [
    "MAX_INSTRUCTION_BYTES",
    "BatchRequest",
    "batch_request_from_pb",
    "batch_request_to_pb",
    "outcome_from_pb",
    "outcome_to_pb",
]

MAX_INSTRUCTION_BYTES = 65
"""An instructor's signature: r || s || v."""
_SIGNATURE_BYTES = 65


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A validated SubmitBatch request: a batched action, its items (distinct transfers) and
    the batch certificate exactly when the action needs one."""

    action: Action
    items: tuple[BatchItem, ...]
    certificate: core.BatchCertificate | None


def batch_request_to_pb(
    action: Action, items: Sequence[BatchItem], certificate: core.BatchCertificate | None
) -> relayer_pb2.SubmitBatchRequest:
    """The request message for ``action`` on ``items`` (no validation: the relayer's)."""
    req = relayer_pb2.SubmitBatchRequest(
        action=int(action),  # type: ignore[arg-type]
        items=[
            relayer_pb2.BatchStepItem(
                terms=terms_to_pb(i.terms), instruction=i.instruction, proof=list(i.proof)
            )
            for i in items
        ],
    )
    if certificate is not None:
        req.certificate.CopyFrom(
            relayer_pb2.BatchCertificate(
                epoch=certificate.epoch,
                kind=certificate.kind,
                root=certificate.root,
                count=certificate.count,
                signatures=list(certificate.signatures),
            )
        )
    return req


def batch_request_from_pb(m: relayer_pb2.SubmitBatchRequest, max_items: int) -> BatchRequest:
    """Validate a SubmitBatch request.

    InvalidInput for: an action without a batched function; not 1..``max_items`` items; a
    certificate for LOCK or none for another action; an instruction on a non-LOCK item or
    longer than 65 bytes; a proof on a LOCK item, a proof element that is not 32 bytes or
    a proof longer than the endpoints' ``MAX_BATCH_PROOF``; malformed terms or certificate
    fields (signatures of 65 bytes, a 32-byte root, a known claim kind); a transfer twice.
    """
    try:
        action = Action(m.action)
    except ValueError:
        action = None
    if action is None or action not in BATCHED_ACTIONS:
        raise InvalidInput("action must be one of LOCK, PREPARE, COMMIT, ABORT")
    if not 1 <= len(m.items) <= max_items:
        raise InvalidInput(f"items must hold 1 to {max_items} items, got {len(m.items)}")
    has_cert = m.HasField("certificate")
    if action is Action.LOCK and has_cert:
        raise InvalidInput("a LOCK batch takes no certificate")
    if action is not Action.LOCK and not has_cert:
        raise InvalidInput(f"a {action.name} batch needs a batch certificate")
    items: list[BatchItem] = []
    seen: set[bytes] = set()
    for i, it in enumerate(m.items):
        if not it.HasField("terms"):
            raise InvalidInput(f"items[{i}].terms is required")
        try:
            terms = terms_from_pb(it.terms)
        except (InvalidInput, ValueError) as exc:
            raise InvalidInput(f"items[{i}].terms: {exc}") from None
        if it.instruction and action is not Action.LOCK:
            raise InvalidInput(f"items[{i}].instruction applies to LOCK only")
        if len(it.instruction) > MAX_INSTRUCTION_BYTES:
            raise InvalidInput(f"items[{i}].instruction must be at most 65 bytes")
        if it.proof and action is Action.LOCK:
            raise InvalidInput(f"items[{i}].proof does not apply to LOCK")
        if len(it.proof) > core.MAX_PROOF_LENGTH:
            raise InvalidInput(f"items[{i}].proof holds at most {core.MAX_PROOF_LENGTH} hashes")
        if any(len(p) != 32 for p in it.proof):
            raise InvalidInput(f"items[{i}].proof elements must be 32 bytes")
        if terms.transfer_id in seen:
            raise InvalidInput(f"items[{i}] repeats transfer 0x{terms.transfer_id.hex()}")
        seen.add(terms.transfer_id)
        items.append(BatchItem(terms, bytes(it.instruction), tuple(bytes(p) for p in it.proof)))
    return BatchRequest(action, tuple(items), _certificate(m) if has_cert else None)


def _certificate(m: relayer_pb2.SubmitBatchRequest) -> core.BatchCertificate:
    c = m.certificate
    if c.kind not in core.CLAIM_KINDS:
        raise InvalidInput(f"certificate.kind {c.kind} is not a claim kind")
    if len(c.root) != 32:
        raise InvalidInput("certificate.root must be 32 bytes")
    if not c.signatures or any(len(s) != _SIGNATURE_BYTES for s in c.signatures):
        raise InvalidInput("certificate.signatures must be 65 bytes each, at least one")
    try:
        return core.BatchCertificate(c.epoch, c.kind, bytes(c.root), c.count, tuple(c.signatures))
    except ValueError as exc:
        raise InvalidInput(f"certificate: {exc}") from None


def outcome_to_pb(outcome: BatchOutcome) -> relayer_pb2.SubmitBatchResponse:
    """A batched invocation's outcome as the response message."""
    return relayer_pb2.SubmitBatchResponse(
        tx_id=outcome.tx_id,
        height=outcome.height,
        items=[
            relayer_pb2.BatchStepResult(
                transfer_id=r.transfer_id,
                leg=int(r.leg),  # type: ignore[arg-type]
                state=int(r.state),  # type: ignore[arg-type]
                terms_hash=r.terms_hash,
                reason=r.reason,
                skipped=r.skipped,
            )
            for r in outcome.items
        ],
    )


def outcome_from_pb(m: relayer_pb2.SubmitBatchResponse) -> BatchOutcome:
    """A response's outcome, shape checked (InvalidInput for an unknown leg or state, or a
    transfer id or terms hash that is not 32 bytes); which transfers it may name is the
    caller's check."""
    out = []
    for r in m.items:
        try:
            leg, state = Leg(r.leg), LegState(r.state)
        except ValueError:
            raise InvalidInput(f"unknown leg {r.leg} or state {r.state}") from None
        if len(r.transfer_id) != 32 or len(r.terms_hash) != 32:
            raise InvalidInput("transfer_id and terms_hash must be 32 bytes")
        out.append(
            BatchItemResult(
                transfer_id=bytes(r.transfer_id),
                leg=leg,
                state=state,
                terms_hash=bytes(r.terms_hash),
                reason=r.reason,
                skipped=r.skipped,
            )
        )
    return BatchOutcome(tx_id=m.tx_id, height=m.height, items=tuple(out))
