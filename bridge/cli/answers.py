"""Checks of the coordinator's answers against what this brokerage signed (review F8).

The transfer id is a hash of the source ledger, its bridge, the sender, the instructor and
the nonce (``bridge.domain.terms``), so a client computes it from the terms it signed. A
coordinator that is compromised, or wrong, could otherwise answer another transfer (an
older COMMITTED one) for a new instruction; the CLI would print it as this one's result.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import NetworkConfig
from bridge.coordinator.requests import terms_for, validate_submit
from bridge.domain.errors import BridgeError
from bridge.rpc.convert import instruction_from_pb
from bridge.v1 import transfer_pb2


class AnswerMismatch(Exception):
    """The coordinator answered a transfer other than the one signed (exit code 4)."""


@dataclass(frozen=True)
class Expected:
    """What a signed request must come back as."""

    transfer_id: str
    """0x-prefixed hex, as the API gives it."""
    idempotency_key: str
    security: str
    source_ledger: str
    target_ledger: str
    sender: str
    recipient: str
    amount: str


def expected_of(
    network: NetworkConfig, request: transfer_pb2.SubmitTransferRequest
) -> Expected | None:
    """The transfer a signed request makes, computed locally from its terms; None for a
    request without a well-formed instruction (the coordinator refuses those itself)."""
    try:
        req = validate_submit(network, request)
        terms = terms_for(network, req, instruction_from_pb(request))
    except (BridgeError, ValueError):
        return None
    return Expected(
        transfer_id="0x" + terms.transfer_id.hex(),
        idempotency_key=req.idempotency_key,
        security=req.security,
        source_ledger=req.source_ledger,
        target_ledger=req.target_ledger,
        sender=req.sender,
        recipient=req.recipient,
        amount=str(req.amount),
    )


def check_transfer(expected: Expected | None, t: transfer_pb2.Transfer, what: str) -> None:
    """Raise AnswerMismatch unless ``t`` is exactly the transfer ``expected`` describes.
    SECURITY: the id is recomputed here, never taken from the answer; a request this
    client did not sign properly (``expected`` None) may not come back as a transfer."""
    if expected is None:
        raise AnswerMismatch(
            f"{what}: answered transfer {t.transfer_id} for a request that makes none"
        )
    got = (
        t.transfer_id.lower(),
        t.idempotency_key,
        t.security_id,
        t.source_ledger,
        t.target_ledger,
        t.sender.lower(),
        t.recipient.lower(),
        t.amount,
    )
    want = (
        expected.transfer_id,
        expected.idempotency_key,
        expected.security,
        expected.source_ledger,
        expected.target_ledger,
        expected.sender.lower(),
        expected.recipient.lower(),
        expected.amount,
    )
    if got != want:
        fields = ("transfer_id", "idempotency_key", "security_id", "source_ledger",
                  "target_ledger", "sender", "recipient", "amount")  # fmt: skip
        diff = [
            f"{n} {g!r} (signed {w!r})" for n, g, w in zip(fields, got, want, strict=True) if g != w
        ]
        raise AnswerMismatch(
            f"{what}: the coordinator answered a transfer that is not the one signed: "
            + ", ".join(diff)
            + "; do not book it, check the transfer on the source ledger"
        )


def check_batch(
    expected: list[Expected | None],
    keys: list[str],
    resp: transfer_pb2.SubmitTransfersResponse,
    batch_id: str,
) -> None:
    """Raise AnswerMismatch unless ``resp`` answers this batch: its id, one result per
    item in order, each result's key the item's (``keys``), an outcome this client knows,
    each answered transfer the one signed, and a shape that fits the outcome: REFUSED and
    RETRYABLE with an error and no transfer (nothing was recorded); CREATED and EXISTING
    for an item that makes a transfer, with that transfer or, when its record cannot be
    read now, an error."""
    if resp.batch_id != batch_id:
        raise AnswerMismatch(f"answered batch {resp.batch_id!r}, not {batch_id!r}")
    if [r.index for r in resp.results] != list(range(len(expected))):
        raise AnswerMismatch(
            f"batch {batch_id}: {len(resp.results)} results for {len(expected)} items,"
            " or out of order"
        )
    out = transfer_pb2.BatchItemOutcome
    recorded = (out.BATCH_ITEM_OUTCOME_CREATED, out.BATCH_ITEM_OUTCOME_EXISTING)
    not_recorded = (out.BATCH_ITEM_OUTCOME_REFUSED, out.BATCH_ITEM_OUTCOME_RETRYABLE)
    for r in resp.results:
        what = f"batch {batch_id} item {r.index}"
        if r.idempotency_key != keys[r.index]:
            raise AnswerMismatch(
                f"{what}: answered key {r.idempotency_key!r}, not {keys[r.index]!r}"
            )
        if r.outcome in not_recorded:
            if r.HasField("transfer") or not r.HasField("error"):
                raise AnswerMismatch(
                    f"{what}: {out.Name(r.outcome)} must come with an error and no transfer"
                )
        elif r.outcome in recorded:
            if r.HasField("transfer"):
                check_transfer(expected[r.index], r.transfer, what)
            elif expected[r.index] is None:
                raise AnswerMismatch(f"{what}: answered recorded for a request that makes none")
            elif not r.HasField("error"):
                raise AnswerMismatch(
                    f"{what}: recorded, yet answered without its transfer or an error"
                )
        else:
            raise AnswerMismatch(f"{what}: an outcome this client does not know ({r.outcome})")
