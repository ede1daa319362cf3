"""Encrypted key files: Ethereum keystore v3 JSON (secp256k1) and encrypted PKCS#8 PEM (P-256).

Both are decrypted once at start-up into an in-memory signer; the passphrase comes from a
:class:`~bridge.keys.reference.SecretSource`. Writers create files with mode 0600 and never
overwrite one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_keyfile.exceptions import EthKeyfileValueError
from eth_keyfile.keyfile import create_keyfile_json, decode_keyfile_json

from bridge.keys.errors import KeyFileInvalid, WrongPassphrase
from bridge.keys.files import read_private_file, write_private_file
from bridge.keys.p256 import require_p256


def decrypt_keystore_v3(path: Path, passphrase: bytes) -> bytes:
    """The 32-byte secp256k1 key in the keystore v3 file ``path``.

    Raises KeyFileExposed (mode), KeyFileInvalid (not a v3 keystore) or WrongPassphrase
    (MAC mismatch), each naming ``path``.
    """
    data = read_private_file(path, "keystore")
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileInvalid(f"keystore {path} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != 3 or "crypto" not in doc:
        raise KeyFileInvalid(f"keystore {path} is not an Ethereum keystore v3 file")
    try:
        key = bytes(decode_keyfile_json(doc, passphrase))
    except EthKeyfileValueError:
        # v3 decoding raises this type only when the MAC does not match the passphrase.
        raise WrongPassphrase(f"keystore {path}: wrong passphrase") from None
    except (KeyError, TypeError, ValueError, NotImplementedError):
        raise KeyFileInvalid(f"keystore {path} is malformed") from None
    if len(key) != 32:
        raise KeyFileInvalid(f"keystore {path} does not hold a 32-byte secp256k1 key")
    return key


def write_keystore_v3(
    path: Path,
    private_key: bytes,
    passphrase: bytes,
    kdf: Literal["scrypt", "pbkdf2"] = "scrypt",
    iterations: int | None = None,
) -> None:
    """Encrypt ``private_key`` into a new keystore v3 file (scrypt by default), mode 0600."""
    doc = create_keyfile_json(private_key, passphrase, kdf=kdf, iterations=iterations)
    write_private_file(path, json.dumps(doc).encode())


def decrypt_pkcs8_pem(path: Path, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
    """The P-256 key in the encrypted PKCS#8 PEM file ``path``.

    SECURITY: an unencrypted PEM is refused here (KeyFileInvalid): a ``[key] keystore`` entry
    promises encryption at rest. A wrong passphrase raises WrongPassphrase.
    """
    data = read_private_file(path, "keystore")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        raise KeyFileInvalid(f"keystore {path} is not an encrypted PKCS#8 PEM key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        # cryptography reports a wrong passphrase and a corrupt body alike; the header was
        # checked above, so a decryption failure here is the passphrase.
        raise WrongPassphrase(f"keystore {path}: wrong passphrase") from None
    except (TypeError, UnsupportedAlgorithm):
        raise KeyFileInvalid(f"keystore {path} is malformed") from None
    return require_p256(key, str(path))


def write_pkcs8_pem(path: Path, private_key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> None:
    """Encrypt ``private_key`` as PKCS#8 PEM (best available cipher) into a new 0600 file."""
    data = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    write_private_file(path, data)
