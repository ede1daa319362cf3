"""The chaincode's batched steps (issue 14 items 2-3, ADR 0025): arguments and results.

``LockBatch(items)`` with items ``[{"terms", "instruction"}]``; ``PrepareBatch``,
``CommitBatch``, ``AbortBatch(items, certificate)`` with items ``[{"terms", "proof"}]``
under ONE batch certificate ``{"epoch", "kind", "root", "count", "signatures"}`` (the
CometBFT application runs the same functions). At most :data:`MAX_BATCH_ITEMS` items. The
chaincode answers one record per item, in item order: the leg after the step and whether
the item was ``skipped`` (already in the state the step puts it in: a replay).

A refusal refuses the whole invocation and is decoded like every chaincode refusal
(``LedgerRejected`` with an ``ErrorReason``; ADR 0015); a refusal caused by one item
carries its index as the integer figure ``item`` (:func:`refused_item`), so a relayer can
drop that item and send the rest again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.core.batch import BatchCertificate
from bridge.domain.ledger_batches import (
    BatchItem,
    BatchItemResult,
    BatchOutcome,
    leg_of,
    refused_item,
)
from bridge.domain.legs import Action, leg_state_from_ledger
from bridge.ledgers.fabric import codec

__all__ = [
    "BATCH_EVENT_NAME",
    "BATCH_FUNCTIONS",
    "MAX_BATCH_ITEMS",
    "BatchItem",
    "BatchItemResult",
    "BatchOutcome",
    "arguments",
    "certificate_to_json",
    "items_to_json",
    "leg_of",
    "leg_payloads",
    "refused_item",
    "results_from_json",
]

MAX_BATCH_ITEMS = 200
"""The most items one batched invocation carries (the chaincode's bound; InvalidBatch)."""

BATCH_EVENT_NAME = "LegStatesChanged"
"""The one chaincode event of a batched step: ``{"legs": [<LegStateChanged payload>...]}``."""

BATCH_FUNCTIONS: Mapping[Action, str] = {
    Action.LOCK: "LockBatch",
    Action.PREPARE: "PrepareBatch",
    Action.COMMIT: "CommitBatch",
    Action.ABORT: "AbortBatch",
}
"""The batched function of each step that has one (not MARK_EXPIRED)."""


def items_to_json(action: Action, items: Sequence[BatchItem]) -> str:
    """The ``items`` argument of ``action``'s batched function (order kept)."""
    if action not in BATCH_FUNCTIONS:
        raise ValueError(f"{action.name} has no batched function")
    rows: list[dict[str, Any]] = []
    for item in items:
        row: dict[str, Any] = {"terms": codec.terms_to_dict(item.terms)}
        if action is Action.LOCK:
            row["instruction"] = "0x" + item.instruction.hex()
        else:
            row["proof"] = [codec.word_hex(x) for x in item.proof]
        rows.append(row)
    return json.dumps(rows, separators=(",", ":"))


def certificate_to_json(certificate: BatchCertificate) -> str:
    """The batch certificate argument (signatures in their order, each 65 bytes)."""
    for sig in certificate.signatures:
        if len(sig) != codec.SIGNATURE_SIZE:
            raise ValueError("a committee signature is 65 bytes (r || s || v)")
    return json.dumps(
        {
            "epoch": certificate.epoch,
            "kind": certificate.kind,
            "root": codec.word_hex(certificate.root),
            "count": certificate.count,
            "signatures": ["0x" + bytes(s).hex() for s in certificate.signatures],
        },
        separators=(",", ":"),
    )


def arguments(
    action: Action, items: Sequence[BatchItem], certificate: BatchCertificate | None
) -> list[str]:
    """The batched function's arguments; ValueError for a certified step without a
    certificate, a LOCK with one, or a count outside 1..MAX_BATCH_ITEMS."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValueError(f"a batch has 1 to {MAX_BATCH_ITEMS} items, got {len(items)}")
    args = [items_to_json(action, items)]
    if action is Action.LOCK:
        if certificate is not None:
            raise ValueError("LockBatch takes no certificate")
        return args
    if certificate is None:
        raise ValueError(f"{BATCH_FUNCTIONS[action]} needs a batch certificate")
    return [*args, certificate_to_json(certificate)]


def results_from_json(
    raw: str | bytes, action: Action, items: Sequence[BatchItem], ledger_word: bytes
) -> tuple[BatchItemResult, ...]:
    """The batched function's answer, one result per item in order; ValueError when it is
    malformed or names another transfer at some position."""
    data = json.loads(raw)
    rows = data.get("items") if isinstance(data, dict) else None
    if not isinstance(rows, list) or len(rows) != len(items):
        raise ValueError(f"a batch answer lists {len(items)} items")
    out = []
    for item, row in zip(items, rows, strict=True):
        if not isinstance(row, dict):
            raise ValueError("a batch answer item must be an object")
        tid = codec.word_from_json(row.get("transfer_id"), "transfer_id")
        if tid != item.terms.transfer_id:
            raise ValueError(f"the batch answer is out of order at 0x{tid.hex()}")
        leg = leg_of(action, item.terms, ledger_word)
        out.append(
            BatchItemResult(
                transfer_id=tid,
                leg=leg,
                state=leg_state_from_ledger(leg, codec.int_from_json(row.get("state"), "state")),
                terms_hash=codec.word_from_json(row.get("terms_hash"), "terms_hash"),
                reason=codec.int_from_json(row.get("reason", 0), "reason"),
                skipped=row.get("skipped") is True,
            )
        )
    return tuple(out)


def leg_payloads(name: str, payload: str | bytes) -> list[Mapping[str, Any]]:
    """The leg transitions one chaincode event carries, in order: one for
    ``LegStateChanged``, every element of ``legs`` for ``LegStatesChanged``, none for any
    other event. ValueError for a malformed batch payload (the caller must not skip it).

    Positions: an adapter numbers the transitions of a block consecutively, the k-th leg of
    a batch event taking ``ordinal + shift + k`` where ``shift`` is the number of extra legs
    that earlier batch events of the block carried. A block without batch events keeps the
    positions it always had (its events' ordinals), so relayer checkpoints stay valid."""
    if name == "LegStateChanged":
        return [codec.object_from_json(payload, "LegStateChanged event")]
    if name != BATCH_EVENT_NAME:
        return []
    data = codec.object_from_json(payload, "LegStatesChanged event")
    legs = data.get("legs")
    if not isinstance(legs, list) or not legs or not all(isinstance(x, dict) for x in legs):
        raise ValueError("a LegStatesChanged event must list its legs")
    return legs
