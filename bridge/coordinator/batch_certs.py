"""Batched certificates on the coordinator's side (issue 14 item 3, ADR 0025): the batch a
ledger verifies, the certificate t members' root signatures make, and every item's proof
checked locally before anything is sent to a ledger.

Plain typed values; the gathering itself (asking every member, reporting misbehaviour) is
:meth:`bridge.coordinator.clients.CommitteeClient.certify_batch`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.core import batch as core
from bridge.core.reasons import ProtocolError
from bridge.domain.claim_batches import RefusedItem
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee, assemble_certificate
from bridge.domain.errors import BridgeReason, InvalidCertificate, InvalidInput, PreconditionFailed
from bridge.domain.terms import TransferTerms

if TYPE_CHECKING:
    from bridge.coordinator.clients import LedgerDomain

__all__ = [
    "BatchItemsRefused",
    "CertifiedBatch",
    "CertifiedItem",
    "assemble_batch",
    "check_items",
    "ledger_batch",
]


@dataclass(frozen=True, slots=True)
class CertifiedItem:
    """One item of a certified batch: its terms and the inclusion proof of its claim."""

    terms: TransferTerms
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CertifiedBatch:
    """A batch certificate for one ledger and every item's proof, in the request's order.

    Built only by :func:`check_items`: the certificate passed the endpoints' batch
    certificate rule for its epoch and every proof leads to its root.
    """

    ledger: str
    certificate: core.BatchCertificate
    items: tuple[CertifiedItem, ...]


class BatchItemsRefused(PreconditionFailed):
    """Members refused the batch because of ``items`` (by index, each with the reason the
    first refusing member gave; items too few members would sign): drop them and ask
    again. No item: members named items, but none so many that it could not be certified
    alone; certify them one at a time. Nothing was signed by a member that refused."""

    kind = BridgeReason.CLAIM_REFUSED

    def __init__(self, items: Iterable[RefusedItem]) -> None:
        self.items = tuple(sorted(items, key=lambda i: i.index))
        super().__init__(
            f"committee refused {len(self.items)} items of the batch: "
            + ", ".join(f"{i.index} ({i.reason})" for i in self.items[:10])
            if self.items
            else "committee refused the batch, but no item by enough members to refuse it"
        )


def ledger_batch(
    domain: LedgerDomain, epoch: int, kind: ClaimKind, terms: Sequence[TransferTerms]
) -> core.Batch:
    """The batch of ``kind`` claims about ``terms`` that ``domain``'s endpoint verifies
    under ``epoch``: what every member must have signed. InvalidInput for no item, or a
    transfer given twice."""
    try:
        return core.build_batch([_claim(domain, epoch, int(kind), t) for t in terms])
    except ProtocolError as exc:
        raise InvalidInput(f"not a batch: {exc}") from None


def assemble_batch(
    committee: Committee, batch: core.Batch, signatures: Iterable[bytes]
) -> core.BatchCertificate:
    """The batch certificate of ``batch`` from any member signatures over its root digest:
    invalid, foreign and duplicate ones are dropped, t kept in ascending signer order.
    Raises InvalidCertificate when fewer than t members validly signed."""
    cert = assemble_certificate(committee, batch.digest, signatures)
    return core.BatchCertificate(
        cert.epoch, batch.kind, batch.root, batch.count, tuple(v.signature for v in cert.votes)
    )


def check_items(
    domain: LedgerDomain,
    committee: Committee,
    batch: core.Batch,
    cert: core.BatchCertificate,
    terms: Sequence[TransferTerms],
) -> CertifiedBatch:
    """``cert`` with every item's proof, each checked exactly as the endpoints check them
    (:func:`bridge.core.batch.check_batch_certificate` for ``committee``'s epoch, then
    :func:`bridge.core.batch.check_batch_item` per item). Raises InvalidCertificate (with
    the endpoint's reason) if any check fails: nothing is handed out that a ledger would
    refuse."""
    try:
        core.check_batch_certificate(
            cert, batch.kind, len(terms), domain.network_word, domain.ledger_word,
            domain.bridge_word, committee.epoch, committee.threshold, committee.members,
        )  # fmt: skip
        items = []
        for t in terms:
            proof = batch.proof(_claim(domain, cert.epoch, cert.kind, t))
            core.check_batch_item(
                cert, domain.network_word, domain.ledger_word, domain.bridge_word,
                t.transfer_id, t.terms_hash, proof,
            )  # fmt: skip
            items.append(CertifiedItem(t, proof))
    except ProtocolError as exc:
        refusal = f"batch certificate for {domain.name}: {exc}"
        raise InvalidCertificate(refusal, exc.reason) from None
    return CertifiedBatch(domain.name, cert, tuple(items))


def _claim(domain: LedgerDomain, epoch: int, kind: int, t: TransferTerms) -> core.BatchClaim:
    """The claim ``domain``'s endpoint verifies for ``t`` under ``epoch`` and ``kind``."""
    return core.BatchClaim(
        domain.network_word, domain.ledger_word, domain.bridge_word, epoch, kind,
        t.transfer_id, t.terms_hash,
    )  # fmt: skip
