"""A Fabric client identity: MSP id, X.509 certificate and its ECDSA P-256 private key.

Fabric verifies every proposal, transaction envelope and Gateway request against the
certificate in the creator's ``msp.SerializedIdentity`` and rejects ECDSA signatures whose
``s`` lies in the upper half of the curve order; :meth:`SigningIdentity.sign` therefore always
returns low-S DER signatures. The key sits behind a :class:`~bridge.keys.protocols.P256Signer`
(a PEM file for the devnet, an encrypted PKCS#8 PEM, or a PKCS#11 token) and never leaves it:
it is not part of ``repr``, ``str`` or any log line, and key files readable by group or others
are refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.domain.errors import InvalidInput
from bridge.keys.p256 import (
    P256_HALF_ORDER,
    P256_ORDER,
    LocalP256Signer,
    low_s,
    read_pem_key_file,
)
from bridge.keys.protocols import P256Signer
from bridge.keys.reference import KeyRef
from bridge.ledgers.fabric._protos import identities_pb2

__all__ = ["P256_HALF_ORDER", "P256_ORDER", "SigningIdentity", "low_s", "read_pem_key_file"]


class SigningIdentity:
    """Signs for one Fabric identity; the certificate is public, the key never leaves.

    Guarantees: the certificate's public key matches the signer's (checked at
    construction); :meth:`sign` returns DER ECDSA-SHA256 signatures with low ``s``, made by
    the :class:`P256Signer` (an in-memory key is wrapped in one);
    :meth:`serialized` is the exact ``msp.SerializedIdentity`` bytes Fabric expects as a
    creator (MSP id + the PEM certificate as given).
    """

    __slots__ = ("_cert", "_cert_pem", "_key", "_msp_id", "_serialized")

    def __init__(
        self,
        msp_id: str,
        certificate_pem: bytes,
        private_key: ec.EllipticCurvePrivateKey | P256Signer,
    ) -> None:
        if not msp_id:
            raise InvalidInput("an MSP id is required")
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError:
            raise InvalidInput("the certificate is not a PEM X.509 certificate") from None
        signer: P256Signer = (
            LocalP256Signer(private_key)
            if isinstance(private_key, ec.EllipticCurvePrivateKey)
            else private_key
        )
        cert_key = cert.public_key()
        if not isinstance(cert_key, ec.EllipticCurvePublicKey) or cert_key.public_numbers() != (
            signer.public_key.public_numbers()
        ):
            raise InvalidInput("the private key does not belong to the certificate")
        self._msp_id = msp_id
        self._cert_pem = bytes(certificate_pem)
        self._cert = cert
        self._key = signer
        self._serialized: bytes = identities_pb2.SerializedIdentity(
            mspid=msp_id, id_bytes=self._cert_pem
        ).SerializeToString()

    @classmethod
    def from_files(cls, msp_id: str, cert_path: Path, key_path: Path) -> SigningIdentity:
        """Load a PEM certificate and a 0600 PEM P-256 key file (see :func:`read_pem_key_file`)."""
        return cls(msp_id, Path(cert_path).read_bytes(), read_pem_key_file(Path(key_path)))

    @classmethod
    def from_key_ref(cls, msp_id: str, cert_path: Path, key: KeyRef) -> SigningIdentity:
        """Load a PEM certificate and open its key wherever ``key`` says (file, keystore, token)."""
        from bridge.keys.loader import open_p256_signer

        return cls(msp_id, Path(cert_path).read_bytes(), open_p256_signer(key))

    @classmethod
    def from_msp_dir(cls, msp_id: str, msp_dir: Path) -> SigningIdentity:
        """Load ``signcerts/*.pem`` and the single ``keystore/*`` key of an MSP directory."""
        certs = sorted((Path(msp_dir) / "signcerts").glob("*.pem"))
        keys = sorted(p for p in (Path(msp_dir) / "keystore").iterdir() if p.is_file())
        if len(certs) != 1 or len(keys) != 1:
            raise InvalidInput(f"{msp_dir} must hold exactly one signcert and one keystore key")
        return cls.from_files(msp_id, certs[0], keys[0])

    @property
    def msp_id(self) -> str:
        """The MSP the certificate belongs to, e.g. ``Org1MSP``."""
        return self._msp_id

    @property
    def certificate_pem(self) -> bytes:
        """The X.509 certificate as PEM bytes, exactly as loaded."""
        return self._cert_pem

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return self._cert

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The P-256 public key (for verifying this identity's signatures)."""
        return self._key.public_key

    def serialized(self) -> bytes:
        """The ``msp.SerializedIdentity`` bytes (creator field of headers and requests)."""
        return self._serialized

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA P-256 signature over SHA-256(``message``), normalised to low ``s``."""
        return self._key.sign(message)

    def chaincode_identity(self) -> str:
        """``<msp id>:<sha256 hex of the certificate PEM>``: how the bridge chaincode names
        this caller (its relayer list and admin hold this string; safe to log)."""
        return f"{self._msp_id}:{hashlib.sha256(self._cert_pem).hexdigest()}"

    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER encoding, hex (safe to log)."""
        return hashlib.sha256(self._cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def __repr__(self) -> str:
        subject = self._cert.subject.rfc4514_string()
        return f"SigningIdentity(msp_id={self._msp_id!r}, subject={subject!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a SigningIdentity holds a private key and cannot be pickled")
