"""Open the signer a :data:`~bridge.keys.reference.KeyRef` names (the only place that knows
every backend). PKCS#11 support is imported only when a token key is configured."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.domain.signer import LocalKeySigner, Signer
from bridge.keys.keystore import decrypt_keystore_v3, decrypt_pkcs8_pem
from bridge.keys.p256 import LocalP256Signer, read_pem_key_file
from bridge.keys.protocols import P256Signer
from bridge.keys.reference import KeyRef, KeystoreKey, Pkcs11Key, PlainKeyFile
from bridge.keys.secret import read_secret

if TYPE_CHECKING:
    from bridge.keys.pkcs11_token import TokenSession

_SESSIONS: dict[tuple[Path, str], TokenSession] = {}
_SESSIONS_LOCK = threading.Lock()


def token_session(module: Path, token_label: str, pin: bytes) -> TokenSession:
    """The process's one logged-in session with ``token_label``.

    PKCS#11 allows one login per token per application and logs every session out when one
    closes, so every key on a token shares this session. It is read-write because key
    generation needs that; the daemons call no object-modifying function.
    """
    from bridge.keys.pkcs11_token import TokenSession

    with _SESSIONS_LOCK:
        key = (module, token_label)
        if key not in _SESSIONS:
            _SESSIONS[key] = TokenSession(module, token_label, pin, rw=True)
        return _SESSIONS[key]


def _session_for(ref: Pkcs11Key) -> TokenSession:
    return token_session(ref.module, ref.token_label, read_secret(ref.pin, "PIN"))


def open_signer(ref: KeyRef) -> Signer:
    """A secp256k1 signer for ``ref``: a hex key file, a keystore v3 JSON, or a token key.

    Raises a typed KeyCustodyError naming the file, variable or token at fault.
    """
    if isinstance(ref, PlainKeyFile):
        return LocalKeySigner.from_key_file(ref.path)
    if isinstance(ref, KeystoreKey):
        passphrase = read_secret(ref.passphrase, "keystore passphrase")
        return LocalKeySigner(decrypt_keystore_v3(ref.path, passphrase))
    from bridge.keys.pkcs11_token import Pkcs11Signer

    return Pkcs11Signer(_session_for(ref), ref.key_label)


def open_p256_signer(ref: KeyRef) -> P256Signer:
    """A P-256 signer for ``ref``: a PEM key file, an encrypted PKCS#8 PEM, or a token key."""
    if isinstance(ref, PlainKeyFile):
        return LocalP256Signer(read_pem_key_file(ref.path))
    if isinstance(ref, KeystoreKey):
        passphrase = read_secret(ref.passphrase, "keystore passphrase")
        return LocalP256Signer(decrypt_pkcs8_pem(ref.path, passphrase))
    from bridge.keys.pkcs11_token import Pkcs11P256Signer

    return Pkcs11P256Signer(_session_for(ref), ref.key_label)
