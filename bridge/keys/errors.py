"""Typed errors of key custody; each is an :class:`InvalidInput` (a configuration fault).

Messages name the file, variable, token or label involved and never carry key material,
passphrases or PINs.
"""

from __future__ import annotations

from bridge.domain.errors import InvalidInput


class KeyCustodyError(InvalidInput):
    """A signing key could not be loaded or used as configured."""


class KeyFileExposed(KeyCustodyError):
    """A key, keystore, passphrase or PIN file is readable by group or others (needs 0600)."""


class KeyFileInvalid(KeyCustodyError):
    """A key or keystore file does not hold what its form requires (wrong format or curve)."""


class SecretUnavailable(KeyCustodyError):
    """A passphrase or PIN source (file or environment variable) is missing or empty."""


class WrongPassphrase(KeyCustodyError):
    """The passphrase does not decrypt the keystore (MAC mismatch or bad decrypt)."""


class TokenUnavailable(KeyCustodyError):
    """The PKCS#11 module, token or login failed (no such token label, wrong PIN, ...)."""


class TokenPinMismatch(TokenUnavailable):
    """A token is already open in this process with another PIN; a second key on it must
    not be used without its own PIN having been checked."""


class PlaintextKeyRefused(KeyCustodyError):
    """A plaintext key file was configured and the development flag for plaintext keys is
    not set (production keys live in an encrypted keystore or a PKCS#11 token)."""


class TokenKeyNotFound(KeyCustodyError):
    """The token holds no key, or more than one key, under the configured label."""


class KeyExportable(KeyCustodyError):
    """A token key is extractable or not sensitive, so it may have left the token: refused."""


class KeyRefInvalid(KeyCustodyError):
    """A key reference in a configuration file is malformed (the message names its path)."""
