"""Signers: every secp256k1 key sits behind :class:`Signer`; :mod:`bridge.keys` provides the
keystore and PKCS#11 (HSM) backends and opens the one a configuration names."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from coincurve import PrivateKey

from bridge.domain.committee import address_of_public_key
from bridge.domain.errors import InvalidInput


def read_key_file(path: Path) -> bytes:
    """Read a plaintext hex secp256k1 private key (devnet form; see :mod:`bridge.keys` for
    keystores and tokens).

    Raises KeyFileExposed for a file readable by group or others, KeyFileInvalid for one
    that does not hold a 32-byte hex key; both name the file, never its content.
    """
    from bridge.keys.errors import KeyFileInvalid
    from bridge.keys.files import read_private_file

    data = read_private_file(path, "key file")
    try:
        raw = bytes.fromhex(data.decode().strip().removeprefix("0x"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFileInvalid(f"key file {path} does not hold a hex key") from None
    if len(raw) != 32:
        raise KeyFileInvalid(f"key file {path} does not hold a 32-byte key")
    return raw


class Signer(Protocol):
    """Signs raw 32-byte digests with secp256k1; never exposes the key."""

    @property
    def address(self) -> bytes:
        """The 20-byte address that signatures recover to."""
        ...

    def sign_digest(self, digest: bytes) -> bytes:
        """Return a 65-byte ``r || s || v`` signature (low s, v in {27, 28})."""
        ...


class LocalKeySigner:
    """A Signer holding a secp256k1 key in process memory (loaded from a 0600 key file)."""

    __slots__ = ("_address", "_key")

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise InvalidInput("a secp256k1 private key is 32 bytes")
        self._key = PrivateKey(private_key)
        self._address = address_of_public_key(self._key.public_key.format(compressed=False))

    @classmethod
    def from_key_file(cls, path: Path) -> LocalKeySigner:
        """Load a key file (see :func:`read_key_file`)."""
        return cls(read_key_file(path))

    @property
    def address(self) -> bytes:
        """The 20-byte address that signatures recover to."""
        return self._address

    def sign_digest(self, digest: bytes) -> bytes:
        """Return a 65-byte ``r || s || v`` signature over the raw digest."""
        if len(digest) != 32:
            raise InvalidInput("digest must be 32 bytes")
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])

    def __repr__(self) -> str:
        return f"LocalKeySigner(address=0x{self._address.hex()})"
