"""PKCS#11 tokens (HSMs; SoftHSM2 in tests): keys generated inside the token, signing through it.

SECURITY: keys are generated on the token with ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE``
false, so the token refuses to reveal them; a key found under a label that lacks either
property (or was ever extractable / not always sensitive, i.e. it may have been imported or
exported) is refused when loaded. Only ``CKM_ECDSA`` over a 32-byte digest is used, which
every token implements; the bridge shapes the result (low ``s``, recovery id, DER) itself and
checks each signature against the token's public key before returning it.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import pkcs11
from asn1crypto.core import OctetString
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchToken, PKCS11Error
from pkcs11.util.ec import encode_named_curve_parameters

from bridge.domain.committee import address_of_public_key
from bridge.domain.errors import InvalidInput
from bridge.keys.errors import KeyCustodyError, KeyExportable, TokenKeyNotFound, TokenUnavailable
from bridge.keys.p256 import der_from_rs
from bridge.keys.secp256k1 import recoverable_signature

Curve = Literal["secp256k1", "p256"]
"""The two curves the bridge signs with."""

_CURVE_NAMES: dict[str, str] = {"secp256k1": "secp256k1", "p256": "secp256r1"}
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()
T = TypeVar("T")


def _lib(module: Path) -> Any:
    """One loaded PKCS#11 module per path per process (C_Initialize may run only once)."""
    with _LIBS_LOCK:
        key = str(module)
        if key not in _LIBS:
            if not module.is_file():
                raise TokenUnavailable(f"PKCS#11 module {module} does not exist")
            try:
                _LIBS[key] = pkcs11.lib(key)
            except PKCS11Error as exc:
                raise TokenUnavailable(f"PKCS#11 module {module} failed to load: {exc!r}") from None
        return _LIBS[key]


def _point(public: Any) -> bytes:
    """The uncompressed point ``04 || X || Y`` of an EC public key object."""
    raw = bytes(public[Attribute.EC_POINT])
    # Some tokens return the bare point instead of a DER OCTET STRING wrapping it.
    point = raw if len(raw) == 65 and raw[0] == 4 else bytes(OctetString.load(raw).native)
    if len(point) != 65 or point[0] != 4:
        raise KeyCustodyError("the token's public key is not an uncompressed EC point")
    return point


class TokenSession:
    """A logged-in session with one token, used by one thread at a time.

    Guarantees: every call is serialised (PKCS#11 sessions are not re-entrant); a session the
    token dropped (restart, handle invalidated) is reopened once before a call is failed
    with TokenUnavailable.
    """

    def __init__(self, module: Path, token_label: str, pin: bytes, rw: bool = False) -> None:
        self._module = module
        self._label = token_label
        self._pin = pin.decode()
        self._rw = rw
        self._lock = threading.Lock()
        self._session: Any = None
        with self._lock:
            self._session = self._open()

    def _open(self) -> Any:
        lib = _lib(self._module)
        try:
            token = lib.get_token(token_label=self._label)
        except NoSuchToken:
            raise TokenUnavailable(
                f"PKCS#11 module {self._module}: no token labelled {self._label!r}"
            ) from None
        except PKCS11Error as exc:
            raise TokenUnavailable(f"token {self._label!r}: {exc!r}") from None
        try:
            return token.open(user_pin=self._pin, rw=self._rw)
        except PKCS11Error as exc:
            # The exception type names the cause (PinIncorrect, PinLocked, ...), not the PIN.
            raise TokenUnavailable(
                f"token {self._label!r}: login failed ({type(exc).__name__})"
            ) from None

    def run(self, call: Callable[[Any], T]) -> T:
        """Run ``call(session)`` under the lock, reopening a dropped session once."""
        with self._lock:
            try:
                return call(self._session)
            except PKCS11Error:
                self._reopen()
                try:
                    return call(self._session)
                except PKCS11Error as exc:
                    raise TokenUnavailable(f"token {self._label!r}: {type(exc).__name__}") from None

    def _reopen(self) -> None:
        with contextlib.suppress(PKCS11Error):
            self._session.close()
        self._session = self._open()

    @property
    def token_label(self) -> str:
        """The token's label."""
        return self._label

    def close(self) -> None:
        """Close the session (signers using it stop working)."""
        with self._lock, contextlib.suppress(PKCS11Error):
            self._session.close()

    def __repr__(self) -> str:
        return f"TokenSession(module={str(self._module)!r}, token={self._label!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a token session holds a PIN and cannot be pickled")


def generate_key(session: TokenSession, key_label: str, curve: Curve) -> bytes:
    """Generate a key pair inside the token under ``key_label``; return the public point.

    SECURITY: the private key is created non-extractable and sensitive and never leaves the
    token. An existing key under the label is never replaced (KeyCustodyError).
    """
    if curve not in _CURVE_NAMES:
        raise InvalidInput(f"unknown curve {curve!r}")

    def gen(s: Any) -> bytes:
        if list(s.get_objects({Attribute.LABEL: key_label})):
            raise KeyCustodyError(f"token {session.token_label!r} already holds {key_label!r}")
        params = s.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_NAMES[curve])},
            local=True,
        )
        public, _private = params.generate_keypair(
            store=True,
            label=key_label,
            id=secrets.token_bytes(16),
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )
        return _point(public)

    return session.run(gen)


def _find(s: Any, token_label: str, key_label: str, curve: Curve) -> tuple[Any, bytes]:
    """The private key object under ``key_label`` in session ``s`` and its public point,
    after checking its curve and that it never could leave the token."""
    params = encode_named_curve_parameters(_CURVE_NAMES[curve])
    privs = list(
        s.get_objects({Attribute.LABEL: key_label, Attribute.CLASS: ObjectClass.PRIVATE_KEY})
    )
    pubs = list(
        s.get_objects({Attribute.LABEL: key_label, Attribute.CLASS: ObjectClass.PUBLIC_KEY})
    )
    where = f"token {token_label!r} key {key_label!r}"
    if len(privs) != 1 or len(pubs) != 1:
        raise TokenKeyNotFound(
            f"{where}: expected one private and one public key, found {len(privs)} and {len(pubs)}"
        )
    priv, pub = privs[0], pubs[0]
    if priv.key_type != KeyType.EC or bytes(pub[Attribute.EC_PARAMS]) != params:
        raise TokenKeyNotFound(f"{where} is not a {curve} key")
    # SECURITY: only a key that was generated in the token and could never leave it.
    if (
        not priv[Attribute.SENSITIVE]
        or priv[Attribute.EXTRACTABLE]
        or not priv[Attribute.ALWAYS_SENSITIVE]
        or not priv[Attribute.NEVER_EXTRACTABLE]
    ):
        raise KeyExportable(f"{where} is or was extractable; generate one inside the token")
    return priv, _point(pub)


class _TokenKey:
    """A private key object in a token, found again by label whenever the session changed."""

    __slots__ = ("_curve", "_key", "_key_session", "_label", "_public", "_session")

    def __init__(self, session: TokenSession, key_label: str, curve: Curve) -> None:
        self._session = session
        self._label = key_label
        self._curve: Curve = curve
        self._key: Any = None
        self._key_session: Any = None
        self._public = session.run(lambda s: self._bind(s)[1])

    def _bind(self, s: Any) -> tuple[Any, bytes]:
        key, point = _find(s, self._session.token_label, self._label, self._curve)
        self._key, self._key_session = key, s
        return key, point

    def _sign_raw(self, digest: bytes) -> bytes:
        """``CKM_ECDSA`` over ``digest``: the raw 64-byte ``r || s``."""

        def op(s: Any) -> bytes:
            key = self._key if self._key_session is s else self._bind(s)[0]
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

        raw = self._session.run(op)
        if len(raw) != 64:
            raise KeyCustodyError("the token returned a malformed ECDSA signature")
        return raw


class Pkcs11Signer(_TokenKey):
    """A secp256k1 :class:`~bridge.domain.signer.Signer` whose key lives in a PKCS#11 token.

    Guarantees: signatures are 65-byte ``r || s || v`` with low ``s`` that recover to
    :attr:`address` (checked before returning); the key is never read from the token.
    """

    __slots__ = ("_address",)

    def __init__(self, session: TokenSession, key_label: str) -> None:
        super().__init__(session, key_label, "secp256k1")
        self._address = address_of_public_key(self._public)

    @property
    def address(self) -> bytes:
        """The 20-byte address that signatures recover to."""
        return self._address

    def sign_digest(self, digest: bytes) -> bytes:
        """Return a 65-byte ``r || s || v`` signature over the raw 32-byte digest."""
        if len(digest) != 32:
            raise InvalidInput("digest must be 32 bytes")
        raw = self._sign_raw(digest)
        return recoverable_signature(
            digest, int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"), self._public
        )

    def __repr__(self) -> str:
        return (
            f"Pkcs11Signer(token={self._session.token_label!r}, key={self._label!r}, "
            f"address=0x{self._address.hex()})"
        )


class Pkcs11P256Signer(_TokenKey):
    """A :class:`~bridge.keys.protocols.P256Signer` whose P-256 key lives in a PKCS#11 token.

    Guarantees: DER, low-S ECDSA-SHA256 signatures, each verified against the token's public
    key before it is returned; the key is never read from the token.
    """

    __slots__ = ("_ec_public",)

    def __init__(self, session: TokenSession, key_label: str) -> None:
        super().__init__(session, key_label, "p256")
        self._ec_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self._public)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The P-256 public key signatures verify under."""
        return self._ec_public

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA P-256 signature over SHA-256(``message``), normalised to low ``s``."""
        der = der_from_rs(self._sign_raw(hashlib.sha256(message).digest()))
        try:
            self._ec_public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise KeyCustodyError(
                "the token's signature does not verify under its public key"
            ) from None
        return der

    def __repr__(self) -> str:
        return f"Pkcs11P256Signer(token={self._session.token_label!r}, key={self._label!r})"
