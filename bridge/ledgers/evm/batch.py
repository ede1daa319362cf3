"""Encoding of the EVM endpoint's batched steps (ADR 0025), for relayers and tests.

Plain typed values in, web3 contract calls out: the batch of claims an endpoint verifies
(:func:`endpoint_batch`), the ABI tuple of a batch certificate, and the ``lockBatch`` /
``prepareBatch`` / ``commitBatch`` / ``abortBatch`` calls. Refusals decode like every other
endpoint error (:mod:`bridge.ledgers.evm.revert`): ``InvalidBatch``, ``InvalidBatchProof``,
``DuplicateBatchItem`` and ``WrongBatchKind`` are members of the closed ``ErrorReason`` set.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from eth_abi.exceptions import DecodingError
from hexbytes import HexBytes
from web3.contract import AsyncContract, Contract
from web3.contract.async_contract import AsyncContractFunction
from web3.contract.contract import ContractFunction
from web3.exceptions import Web3Exception

from bridge.core import batch as core
from bridge.domain.claims import ClaimDomain, ClaimKind
from bridge.domain.ledger_batches import BatchItem, BatchItemResult
from bridge.domain.legs import Leg, leg_state_from_ledger
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm.calls import BoundCall, ContractCalls

Endpoint = Contract | AsyncContract | ContractCalls
"""An endpoint contract: the adapter's :class:`ContractCalls`, or web3's (tests' are sync)."""


class BatchStep(enum.Enum):
    """A batched step with a certificate: its endpoint function and the claim kind it needs."""

    PREPARE = ("prepareBatch", ClaimKind.LOCKED)
    COMMIT = ("commitBatch", ClaimKind.COMMIT)
    ABORT = ("abortBatch", ClaimKind.ABORT)

    @property
    def function(self) -> str:
        """The endpoint function's name."""
        return self.value[0]

    @property
    def kind(self) -> ClaimKind:
        """The claim kind the step's certificate must certify."""
        return self.value[1]


def endpoint_batch(
    domain: ClaimDomain, kind: ClaimKind, terms: Sequence[TransferTerms]
) -> core.Batch:
    """The batch of ``kind`` claims about ``terms`` that the endpoint of ``domain`` verifies.

    Raises ProtocolError(DUPLICATE_BATCH_ITEM) for terms given twice, INVALID_BATCH for none.
    """
    return core.build_batch(
        [
            core.BatchClaim(
                domain.network,
                domain.ledger,
                domain.contract,
                domain.epoch,
                int(kind),
                t.transfer_id,
                t.terms_hash,
            )
            for t in terms
        ]
    )


def batch_items(
    batch: core.Batch, domain: ClaimDomain, terms: Sequence[TransferTerms]
) -> list[BatchItem]:
    """``terms`` (in the given order, any subset of the batch) with their proofs."""
    out = []
    for t in terms:
        claim = core.BatchClaim(
            domain.network, domain.ledger, domain.contract, batch.epoch, batch.kind,
            t.transfer_id, t.terms_hash,
        )  # fmt: skip
        out.append(BatchItem(t, proof=batch.proof(claim)))
    return out


def certificate_tuple(cert: core.BatchCertificate) -> tuple[int, int, bytes, int, bytes]:
    """``BridgeTypes.BatchCertificate`` as web3 takes it (signatures concatenated)."""
    return (cert.epoch, cert.kind, cert.root, cert.count, b"".join(cert.signatures))


def step_call(
    endpoint: Endpoint,
    step: BatchStep,
    items: Sequence[BatchItem],
    cert: core.BatchCertificate,
) -> ContractFunction | AsyncContractFunction | BoundCall:
    """The ``prepareBatch`` / ``commitBatch`` / ``abortBatch`` call for ``items``."""
    fn = getattr(endpoint.functions, step.function)
    return fn(  # type: ignore[no-any-return]
        [i.terms.as_abi_tuple() for i in items],
        [list(i.proof) for i in items],
        certificate_tuple(cert),
    )


def lock_call(
    endpoint: Endpoint,
    terms: Sequence[TransferTerms],
    instructions: Sequence[bytes],
) -> ContractFunction | AsyncContractFunction | BoundCall:
    """The ``lockBatch`` call: item i is ``terms[i]`` with ``instructions[i]`` (empty for a
    holder's own lock)."""
    if len(terms) != len(instructions):
        raise ValueError("one instruction per item")
    return endpoint.functions.lockBatch([t.as_abi_tuple() for t in terms], list(instructions))


def batch_results(
    endpoint: Endpoint,
    logs: Sequence[Any],
    items: Sequence[BatchItem],
    legs: Sequence[Leg],
) -> tuple[BatchItemResult, ...]:
    """Each item's result from the logs of the batched transaction's receipt, in item order:
    the last ``LegStateChanged`` of its leg (moved), or its ``BatchItemSkipped`` (a replay:
    the endpoint skips only a leg holding the item's own terms, so its terms hash is the
    item's; reason 0, the caller reads an inbound leg's). Only the endpoint's own logs
    count. ValueError when an item has neither (the receipt is not of this batch), or when an
    endpoint log with one of these topics does not decode as that event."""
    changed = endpoint.events.LegStateChanged()
    skipped = endpoint.events.BatchItemSkipped()
    topics = {HexBytes(changed.topic): changed, HexBytes(skipped.topic): skipped}
    moved: dict[tuple[bytes, int], tuple[int, int, bytes]] = {}
    replayed: dict[tuple[bytes, int], int] = {}
    for log in logs:
        if str(log["address"]).lower() != str(endpoint.address).lower() or not log["topics"]:
            continue
        event = topics.get(HexBytes(log["topics"][0]))
        if event is None:
            continue
        try:
            args = event.process_log(log)["args"]
        except (Web3Exception, DecodingError) as exc:  # the right topic, not the event's shape
            raise ValueError(f"an endpoint log of the receipt does not decode: {exc}") from exc
        key = (bytes(args["transferId"]), int(args["leg"]))
        if event is changed:
            moved[key] = (int(args["state"]), int(args["reason"]), bytes(args["termsHash"]))
        else:
            replayed[key] = int(args["state"])
    out = []
    for item, leg in zip(items, legs, strict=True):
        tid = item.terms.transfer_id
        key = (tid, 0 if leg is Leg.OUTBOUND else 1)  # the endpoint's leg numbering
        if key in moved:
            state, reason, terms_hash = moved[key]
            out.append(
                BatchItemResult(
                    tid, leg, leg_state_from_ledger(leg, state), terms_hash,
                    reason if leg is Leg.INBOUND else 0, False,
                )
            )  # fmt: skip
        elif key in replayed:
            state = leg_state_from_ledger(leg, replayed[key])
            out.append(BatchItemResult(tid, leg, state, item.terms.terms_hash, 0, True))
        else:
            raise ValueError(f"the receipt has no leg event for transfer 0x{tid.hex()}")
    return tuple(out)
