"""The signing seams: secp256k1 :class:`Signer` (committee, supply, brokerage, EVM accounts)
and :class:`P256Signer` (Fabric identities). Every backend implements one of them."""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from bridge.domain.signer import Signer

__all__ = ["P256Signer", "Signer"]


class P256Signer(Protocol):
    """Signs messages with an ECDSA P-256 key that it never exposes.

    Guarantees: :meth:`sign` returns a DER ECDSA signature over SHA-256(``message``) whose
    ``s`` is in the lower half of the group order (Fabric refuses the upper half), and it
    verifies under :attr:`public_key`.
    """

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The P-256 public key signatures verify under."""
        ...

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA-SHA256 signature over ``message``, low ``s``."""
        ...
