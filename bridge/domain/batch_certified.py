"""A transfer's certificate for one ledger when it was certified in a batch (issue 14).

A recorded decision holds, per ledger, either the single-claim :class:`SignatureSet` or a
:class:`BatchCertified`: the batch certificate the committee signed over a Merkle root of
many claims and this transfer's own inclusion proof under that root (ADR 0025).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.batch import BatchCertificate
from bridge.domain.legs import SignatureSet

__all__ = ["BatchCertified", "LedgerCertificate", "epoch_of"]


@dataclass(frozen=True, slots=True)
class BatchCertified:
    """One transfer's share of a batch certificate: the certificate (epoch, kind, root,
    count, signatures) and the transfer's proof (sibling hashes, bottom up) into its root.

    Only built from a batch whose certificate and every proof passed the endpoints' own
    checks (:func:`bridge.coordinator.batch_certs.check_items`), or read back from the
    store that recorded such a one.
    """

    certificate: BatchCertificate
    proof: tuple[bytes, ...]

    @property
    def epoch(self) -> int:
        """The committee epoch the batch was certified under."""
        return self.certificate.epoch


LedgerCertificate = SignatureSet | BatchCertified
"""What a recorded decision holds for one ledger."""


def epoch_of(certificate: LedgerCertificate) -> int:
    """The committee epoch of either kind of certificate."""
    return certificate.epoch
