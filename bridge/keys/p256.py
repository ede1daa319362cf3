"""ECDSA P-256 (Fabric identities): low-S normalisation and the in-memory signer."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from bridge.keys.errors import KeyFileInvalid
from bridge.keys.files import read_private_file

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order ``n`` of the NIST P-256 group."""
P256_HALF_ORDER = P256_ORDER >> 1


def low_s(signature: bytes) -> bytes:
    """Return the DER ECDSA P-256 ``signature`` with ``s`` replaced by ``n - s`` when ``s > n/2``.

    Both forms verify; Fabric accepts only the low one.
    """
    r, s = decode_dss_signature(signature)
    if s > P256_HALF_ORDER:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def der_from_rs(raw: bytes) -> bytes:
    """DER, low-S form of a raw 64-byte ``r || s`` signature (what PKCS#11 returns)."""
    if len(raw) != 64:
        raise KeyFileInvalid("a raw P-256 signature is 64 bytes")
    return low_s(
        encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    )


def require_p256(key: object, where: str) -> ec.EllipticCurvePrivateKey:
    """``key`` as a P-256 private key, or KeyFileInvalid naming ``where``."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileInvalid(f"key file {where} does not hold an ECDSA P-256 key")
    return key


def read_pem_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM (PKCS#8 or SEC1) ECDSA P-256 private key (devnet form).

    Refuses files readable by group or others (chmod 600); raises a KeyCustodyError naming
    the file and the problem, never echoing key material.
    """
    data = read_private_file(path, "key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileInvalid(
            f"key file {path} does not hold an unencrypted PEM private key"
        ) from None
    return require_p256(key, str(path))


class LocalP256Signer:
    """A :class:`~bridge.keys.protocols.P256Signer` holding the key in process memory."""

    __slots__ = ("_key",)

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = require_p256(private_key, "given")

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The P-256 public key."""
        return self._key.public_key()

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA P-256 signature over SHA-256(``message``), normalised to low ``s``."""
        return low_s(self._key.sign(message, ec.ECDSA(hashes.SHA256())))

    def __repr__(self) -> str:
        return "LocalP256Signer()"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a signer holds a private key and cannot be pickled")
