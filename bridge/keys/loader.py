"""Open the signer a :data:`~bridge.keys.reference.KeyRef` names (the only place that knows
every backend). PKCS#11 support is imported only when a token key is configured."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.domain.signer import LocalKeySigner, Signer
from bridge.keys.errors import PlaintextKeyRefused, TokenPinMismatch
from bridge.keys.keystore import decrypt_keystore_v3, decrypt_pkcs8_pem
from bridge.keys.p256 import LocalP256Signer, read_pem_key_file
from bridge.keys.protocols import P256Signer
from bridge.keys.reference import KeyRef, KeystoreKey, Pkcs11Key, PlainKeyFile, parse_key_ref
from bridge.keys.secret import read_secret
from bridge.logfields import get_logger

if TYPE_CHECKING:
    from bridge.keys.pkcs11_token import TokenSession

PLAINTEXT_KEYS_ENV = "KSTB_PLAINTEXT_KEYS_FOR_DEVELOPMENT"
"""Set to ``1`` to accept plaintext key files (the devnet only; every open logs a warning)."""

_SESSIONS: dict[tuple[Path, str], tuple[TokenSession, bytes]] = {}
_SESSIONS_LOCK = threading.Lock()


def _pin_digest(module: Path, token_label: str, pin: bytes) -> bytes:
    """A keyed digest of the PIN, so the cache never holds the PIN itself for comparison."""
    return hmac.new(f"{module}\0{token_label}".encode(), pin, hashlib.sha256).digest()


def token_session(module: Path, token_label: str, pin: bytes) -> TokenSession:
    """The process's one logged-in session with ``token_label``.

    PKCS#11 allows one login per token per application and logs every session out when one
    closes, so every key on a token shares this session. It is read-write because key
    generation needs that; the daemons call no object-modifying function.

    SECURITY: the session is reused only for the PIN it was logged in with; a later key on
    the same token configured with another PIN is refused (TokenPinMismatch), so every key
    reference has its own PIN checked.
    """
    from bridge.keys.pkcs11_token import TokenSession

    digest = _pin_digest(module, token_label, pin)
    with _SESSIONS_LOCK:
        key = (module, token_label)
        if key not in _SESSIONS:
            _SESSIONS[key] = (TokenSession(module, token_label, pin, rw=True), digest)
        session, logged_in_with = _SESSIONS[key]
        if not hmac.compare_digest(logged_in_with, digest):
            raise TokenPinMismatch(
                f"token {token_label!r} ({module}) is already open in this process with"
                " another PIN; this key's PIN is wrong"
            )
        return session


def _check_plaintext_allowed(ref: PlainKeyFile) -> None:
    """Return (with a loud warning) if plaintext key files are allowed; else refuse."""
    # SECURITY: a plaintext key file is readable by anyone who gets the disk or a backup;
    # production keys live in an encrypted keystore or a token (docs/keys.md).
    if os.environ.get(PLAINTEXT_KEYS_ENV) != "1":
        raise PlaintextKeyRefused(
            f"{ref.path}: plaintext key files are refused outside development; use an"
            " encrypted keystore or a PKCS#11 token key (python -m bridge.keys import),"
            f" or set {PLAINTEXT_KEYS_ENV}=1 on a devnet"
        )
    get_logger().warning(
        "INSECURE: plaintext signing key file; never use this outside development",
        path=str(ref.path),
        flag=PLAINTEXT_KEYS_ENV,
    )


def _session_for(ref: Pkcs11Key) -> TokenSession:
    return token_session(ref.module, ref.token_label, read_secret(ref.pin, "PIN"))


def open_signer(ref: KeyRef) -> Signer:
    """A secp256k1 signer for ``ref``: a hex key file, a keystore v3 JSON, or a token key.

    A hex key file only with :data:`PLAINTEXT_KEYS_ENV` set (PlaintextKeyRefused otherwise).
    Raises a typed KeyCustodyError naming the file, variable or token at fault.
    """
    if isinstance(ref, PlainKeyFile):
        _check_plaintext_allowed(ref)
        return LocalKeySigner.from_key_file(ref.path)
    if isinstance(ref, KeystoreKey):
        passphrase = read_secret(ref.passphrase, "keystore passphrase")
        return LocalKeySigner(decrypt_keystore_v3(ref.path, passphrase))
    from bridge.keys.pkcs11_token import Pkcs11Signer

    return Pkcs11Signer(_session_for(ref), ref.key_label)


def open_p256_signer(ref: KeyRef) -> P256Signer:
    """A P-256 signer for ``ref``: a PEM key file (only with :data:`PLAINTEXT_KEYS_ENV`
    set), an encrypted PKCS#8 PEM, or a token key."""
    if isinstance(ref, PlainKeyFile):
        _check_plaintext_allowed(ref)
        return LocalP256Signer(read_pem_key_file(ref.path))
    if isinstance(ref, KeystoreKey):
        passphrase = read_secret(ref.passphrase, "keystore passphrase")
        return LocalP256Signer(decrypt_pkcs8_pem(ref.path, passphrase))
    from bridge.keys.pkcs11_token import Pkcs11P256Signer

    return Pkcs11P256Signer(_session_for(ref), ref.key_label)


def load_key_config(path: Path) -> KeyRef:
    """The key named by a small TOML file holding only ``key_file = ...`` or a ``[key]``
    table (how client tools, e.g. the supply operator's, name a keystore or token key). A
    file that cannot be read, or with unknown keys or wrong types, is refused with a
    ConfigError naming each path (:class:`bridge.config_schema.KeyConfigFile`)."""
    from bridge.config_rules import check_file

    _, raw = check_file("key", path)
    return parse_key_ref(raw, path.parent, str(path))


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    """``--key-file`` (plaintext, devnet) or ``--key-config`` (a key reference TOML file)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--key-file", type=Path, help="plaintext 0600 key file (devnet only)")
    group.add_argument(
        "--key-config", type=Path, help="TOML file with key_file or a [key] table (keystore/HSM)"
    )


def signer_from_arguments(args: argparse.Namespace) -> Signer:
    """The secp256k1 signer named by :func:`add_key_arguments`' options."""
    if args.key_config is not None:
        return open_signer(load_key_config(args.key_config))
    return open_signer(PlainKeyFile(args.key_file))
