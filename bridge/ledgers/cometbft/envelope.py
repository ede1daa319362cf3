"""The CometBFT chain's transaction envelope and result codes (ADR 0018).

Shared, byte for byte, by the adapter that signs transactions and the ABCI application
(``contracts/cometbft``) that checks them; pure (coincurve and the protocol core only), so
the application pins it with the rest of its code (see ``kstb_cometbft.fingerprint``).

A transaction is canonical JSON ``{"body": {...}, "sig": "0x<65 bytes>"}`` where the body is
``{"chain_id", "function", "args", "nonce", "pubkey"}``: the chain it is for, the endpoint
function and its string arguments (the chaincode's calling convention), the signer's
sequence number and its compressed secp256k1 public key. The signature is a recoverable
secp256k1 signature over ``sha256(TX_TAG || canonical body)``.

Result codes: 0 is success; :data:`ENVELOPE_CODES` are the envelope's own refusals (the
signature, the chain, the nonce); every endpoint refusal carries the code of its
:class:`~bridge.core.reasons.ErrorReason` (:func:`reason_code`), so a client maps a result to
the closed set by number, never by parsing a message.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coincurve import PrivateKey, PublicKey

from bridge.core.reasons import ErrorReason

TX_TAG = b"KSTB/cometbft/tx/v1"
"""Domain tag of the transaction signing digest (no other KSTB digest starts with it)."""
MAX_TX_BYTES = 64 * 1024
"""Larger transactions are refused before parsing."""
MAX_NONCE = 2**63 - 1
HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_CHAIN_RE = re.compile(r"[a-zA-Z0-9]+(?:[-_][a-zA-Z0-9]+)*")
_FUNCTION_RE = re.compile(r"[A-Z][A-Za-z]{0,63}")


class EnvelopeCode(enum.IntEnum):
    """The envelope's own refusals (before the endpoint runs)."""

    MALFORMED = 1
    """Not a well-formed envelope (JSON, fields, sizes)."""
    BAD_SIGNATURE = 2
    """The signature does not recover to the body's public key, or is malleable (high s)."""
    WRONG_CHAIN = 3
    """Signed for another chain id (a cross-chain replay)."""
    BAD_NONCE = 4
    """Not the signer's next sequence number (a replay, or a gap)."""
    READ_ONLY_FUNCTION = 5
    """A query function sent as a transaction."""


ENVELOPE_CODES = frozenset(int(c) for c in EnvelopeCode)
_REASON_BASE = 1000
_REASON_SPAN = 1_000_000


def reason_code(reason: ErrorReason) -> int:
    """The result code of an endpoint refusal: ``1000 + crc32(name) mod 10**6``.

    Derived from the reason's name (not its position), so adding a reason never renumbers
    another; ``tests/unit`` checks the codes of the closed set are distinct."""
    return _REASON_BASE + zlib.crc32(reason.value.encode("ascii")) % _REASON_SPAN


_BY_CODE: Mapping[int, ErrorReason] = {reason_code(r): r for r in ErrorReason}


def reason_of(code: int) -> ErrorReason | None:
    """The ErrorReason a result code carries (None: success or an envelope code)."""
    return _BY_CODE.get(code)


class EnvelopeError(Exception):
    """A transaction refused by the envelope rules; ``code`` is its :class:`EnvelopeCode`."""

    def __init__(self, code: EnvelopeCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TxBody:
    """What a signer authorises: one endpoint call on one chain at one sequence number."""

    chain_id: str
    function: str
    args: tuple[str, ...]
    nonce: int
    pubkey: bytes
    """33-byte compressed secp256k1 public key."""

    def to_json(self) -> dict[str, object]:
        """The body as a JSON object (hex with 0x for bytes)."""
        return {
            "args": list(self.args),
            "chain_id": self.chain_id,
            "function": self.function,
            "nonce": self.nonce,
            "pubkey": "0x" + self.pubkey.hex(),
        }

    def digest(self) -> bytes:
        """sha256(TX_TAG || canonical JSON body): what the signature covers."""
        return hashlib.sha256(TX_TAG + canonical(self.to_json())).digest()


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A decoded transaction whose signature matches its public key (see :func:`decode`)."""

    body: TxBody
    signature: bytes

    @property
    def signer(self) -> str:
        """The signer's account id: sha256 hex of its compressed public key."""
        return account_id(self.body.pubkey)


def canonical(value: object) -> bytes:
    """Deterministic JSON: sorted keys, compact, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def account_id(pubkey: bytes) -> str:
    """The account id of a compressed public key (64 lowercase hex digits)."""
    return hashlib.sha256(pubkey).hexdigest()


def sign(body: TxBody, private_key: bytes) -> bytes:
    """The encoded transaction: ``body`` signed with ``private_key`` (32 bytes), whose
    public key must be ``body.pubkey``."""
    key = PrivateKey(private_key)
    if key.public_key.format(compressed=True) != body.pubkey:
        raise ValueError("the body's pubkey is not this private key's")
    sig = key.sign_recoverable(body.digest(), hasher=None)
    return canonical({"body": body.to_json(), "sig": "0x" + sig.hex()})


def public_key(private_key: bytes) -> bytes:
    """The compressed public key of a 32-byte private key."""
    return PrivateKey(private_key).public_key.format(compressed=True)


def decode(raw: bytes, chain_id: str) -> SignedTx:
    """Parse and authenticate ``raw`` for chain ``chain_id``; EnvelopeError otherwise.

    SECURITY: the signature must recover to the body's own public key with a low s (no
    malleated twin), and the body must name this chain (no replay from another chain). The
    nonce is checked against state by the application, not here.
    """
    if len(raw) > MAX_TX_BYTES:
        raise EnvelopeError(EnvelopeCode.MALFORMED, f"{len(raw)} bytes > {MAX_TX_BYTES}")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError(EnvelopeCode.MALFORMED, "not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"body", "sig"}:
        raise EnvelopeError(EnvelopeCode.MALFORMED, "an envelope is {body, sig}")
    body = _body(obj["body"])
    sig = _hex(obj["sig"], 65, "sig")
    if canonical(obj) != raw:  # one encoding per transaction: its hash names it
        raise EnvelopeError(EnvelopeCode.MALFORMED, "not in canonical form")
    if body.chain_id != chain_id:
        raise EnvelopeError(
            EnvelopeCode.WRONG_CHAIN, f"signed for {body.chain_id!r}, this is {chain_id!r}"
        )
    if int.from_bytes(sig[32:64], "big") > HALF_N or sig[64] > 1:
        raise EnvelopeError(EnvelopeCode.BAD_SIGNATURE, "high-s or bad recovery id")
    try:
        recovered = PublicKey.from_signature_and_message(sig, body.digest(), hasher=None)
    except (ValueError, TypeError):
        raise EnvelopeError(EnvelopeCode.BAD_SIGNATURE, "signature does not recover") from None
    if recovered.format(compressed=True) != body.pubkey:
        raise EnvelopeError(EnvelopeCode.BAD_SIGNATURE, "signature is not the pubkey's")
    return SignedTx(body, sig)


def _hex(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(rf"0x[0-9a-f]{{{2 * size}}}", value):
        raise EnvelopeError(EnvelopeCode.MALFORMED, f"{name} must be 0x + {2 * size} hex")
    return bytes.fromhex(value[2:])


def _body(obj: object) -> TxBody:
    keys = {"args", "chain_id", "function", "nonce", "pubkey"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise EnvelopeError(EnvelopeCode.MALFORMED, f"a body has exactly {sorted(keys)}")
    chain, function, args, nonce = obj["chain_id"], obj["function"], obj["args"], obj["nonce"]
    if not isinstance(chain, str) or not _CHAIN_RE.fullmatch(chain):
        raise EnvelopeError(EnvelopeCode.MALFORMED, "chain_id")
    if not isinstance(function, str) or not _FUNCTION_RE.fullmatch(function):
        raise EnvelopeError(EnvelopeCode.MALFORMED, "function")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise EnvelopeError(EnvelopeCode.MALFORMED, "args must be a list of strings")
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= MAX_NONCE:
        raise EnvelopeError(EnvelopeCode.MALFORMED, "nonce")
    pubkey = _hex(obj["pubkey"], 33, "pubkey")
    if pubkey[0] not in (2, 3):
        raise EnvelopeError(EnvelopeCode.MALFORMED, "pubkey must be compressed")
    return TxBody(chain, function, tuple(args), nonce, pubkey)


def encode_query(args: Sequence[str]) -> bytes:
    """An ABCI query's data: the function's arguments as canonical JSON."""
    return canonical(list(args))
