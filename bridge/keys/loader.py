"""Open the signer a :data:`~bridge.keys.reference.KeyRef` names (the only place that knows
every backend). PKCS#11 support is imported only when a token key is configured."""

from __future__ import annotations

import argparse
import threading
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.domain.signer import LocalKeySigner, Signer
from bridge.keys.errors import KeyRefInvalid
from bridge.keys.keystore import decrypt_keystore_v3, decrypt_pkcs8_pem
from bridge.keys.p256 import LocalP256Signer, read_pem_key_file
from bridge.keys.protocols import P256Signer
from bridge.keys.reference import KeyRef, KeystoreKey, Pkcs11Key, PlainKeyFile, parse_key_ref
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


def load_key_config(path: Path) -> KeyRef:
    """The key named by a small TOML file holding only ``key_file = ...`` or a ``[key]``
    table (how client tools, e.g. the supply operator's, name a keystore or token key)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KeyRefInvalid(f"{path}: cannot read key configuration: {exc}") from None
    unknown = sorted(set(raw) - {"key_file", "key"})
    if unknown:
        raise KeyRefInvalid(f"{path}: unknown keys {unknown}")
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
