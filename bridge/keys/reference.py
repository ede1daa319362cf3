"""Key references: where a daemon's signing key lives, as written in its TOML file.

Three forms, exactly one per key::

    key_file = "keys/member.key"            # plaintext hex / PEM, 0600 (devnet only)

    [key]                                   # encrypted keystore
    keystore = "keys/member.json"           # secp256k1: Ethereum keystore v3 JSON;
                                            # P-256: encrypted PKCS#8 PEM
    passphrase_file = "secrets/member.pass" # 0600; or passphrase_env = "VAR"

    [key]                                   # PKCS#11 token (HSM)
    pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "kstb-member-1"
    key_label = "member-1"
    pin_file = "secrets/token.pin"          # 0600; or pin_env = "VAR"

Relative paths are resolved against the configuration file's directory. Unknown keys, a
missing or doubled secret source and both ``key_file`` and ``[key]`` are refused with an
error naming the path in the file (e.g. ``relayer.toml: key.pin_env``). Parsing does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.keys.errors import KeyRefInvalid


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a passphrase or PIN is read from: a 0600 file, or an environment variable."""

    file: Path | None = None
    env: str = ""

    def describe(self) -> str:
        """A loggable description (never the secret itself)."""
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"


@dataclass(frozen=True, slots=True)
class PlainKeyFile:
    """A plaintext key file (hex secp256k1 or PEM P-256), 0600; for the devnet only."""

    path: Path


@dataclass(frozen=True, slots=True)
class KeystoreKey:
    """An encrypted key file (keystore v3 JSON or encrypted PKCS#8 PEM) and its passphrase."""

    path: Path
    passphrase: SecretSource


@dataclass(frozen=True, slots=True)
class Pkcs11Key:
    """A key generated inside a PKCS#11 token, found by token label and key label."""

    module: Path
    token_label: str
    key_label: str
    pin: SecretSource


KeyRef = PlainKeyFile | KeystoreKey | Pkcs11Key
"""Any key reference."""

_KEYSTORE_KEYS = frozenset({"keystore", "passphrase_file", "passphrase_env"})
_PKCS11_KEYS = frozenset({"pkcs11_module", "token_label", "key_label", "pin_file", "pin_env"})


def _rel(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise KeyRefInvalid(f"{where}: expected a non-empty path string")
    p = Path(value)
    return p if p.is_absolute() else base / p


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise KeyRefInvalid(f"{where}.{key}: expected a non-empty string")
    return value


def _secret(table: Mapping[str, Any], kind: str, base: Path, where: str) -> SecretSource:
    file_key, env_key = f"{kind}_file", f"{kind}_env"
    if (file_key in table) == (env_key in table):
        raise KeyRefInvalid(f"{where}: exactly one of {file_key} or {env_key} is required")
    if file_key in table:
        return SecretSource(file=_rel(base, table[file_key], f"{where}.{file_key}"))
    return SecretSource(env=_text(table, env_key, where))


def parse_key_table(table: Any, base: Path, where: str) -> KeystoreKey | Pkcs11Key:
    """Parse a ``[key]`` table; ``where`` names it (``file: path.key``) in every error."""
    if not isinstance(table, Mapping):
        raise KeyRefInvalid(f"{where}: expected a table")
    keys = set(table)
    if "keystore" in keys:
        unknown = sorted(keys - _KEYSTORE_KEYS)
        if unknown:
            raise KeyRefInvalid(f"{where}: unknown keys {unknown} for a keystore key")
        return KeystoreKey(
            path=_rel(base, table["keystore"], f"{where}.keystore"),
            passphrase=_secret(table, "passphrase", base, where),
        )
    if "pkcs11_module" in keys:
        unknown = sorted(keys - _PKCS11_KEYS)
        if unknown:
            raise KeyRefInvalid(f"{where}: unknown keys {unknown} for a PKCS#11 key")
        return Pkcs11Key(
            module=_rel(base, table["pkcs11_module"], f"{where}.pkcs11_module"),
            token_label=_text(table, "token_label", where),
            key_label=_text(table, "key_label", where),
            pin=_secret(table, "pin", base, where),
        )
    raise KeyRefInvalid(f"{where}: needs keystore (encrypted file) or pkcs11_module (token)")


def parse_key_ref(table: Mapping[str, Any], base: Path, where: str, prefix: str = "") -> KeyRef:
    """The key named by ``table``'s ``key_file`` or ``key`` entry (exactly one of them).

    ``where`` is the file (``relayer.toml``), ``prefix`` the table's dotted path in it with a
    trailing dot (``fabric_identities.fab.``); errors name e.g. ``relayer.toml: key.pin_env``.
    """
    has_file, has_table = "key_file" in table, "key" in table
    if has_file and has_table:
        raise KeyRefInvalid(f"{where}: {prefix}key_file and {prefix}key are exclusive; give one")
    if has_file:
        return PlainKeyFile(_rel(base, table["key_file"], f"{where}: {prefix}key_file"))
    if has_table:
        return parse_key_table(table["key"], base, f"{where}: {prefix}key")
    raise KeyRefInvalid(f"{where}: missing required {prefix}key_file or {prefix}key")


def key_ref_to_toml(ref: KeyRef) -> dict[str, Any]:
    """The TOML entries (``key_file`` or a ``key`` table) that parse back to ``ref``."""
    if isinstance(ref, PlainKeyFile):
        return {"key_file": str(ref.path)}
    if isinstance(ref, KeystoreKey):
        table: dict[str, Any] = {"keystore": str(ref.path)}
        src = ref.passphrase
        table.update(
            {"passphrase_file": str(src.file)} if src.file else {"passphrase_env": src.env}
        )
        return {"key": table}
    table = {
        "pkcs11_module": str(ref.module),
        "token_label": ref.token_label,
        "key_label": ref.key_label,
    }
    table.update({"pin_file": str(ref.pin.file)} if ref.pin.file else {"pin_env": ref.pin.env})
    return {"key": table}
