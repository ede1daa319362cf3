"""The CometBFT chain's transaction envelope and result codes (ADR 0018).

Shared, byte for byte, by the adapter that signs transactions and the ABCI application
(``contracts/cometbft``) that checks them; pure (the protocol core only), so
the application pins it with the rest of its code (see ``kstb_cometbft.fingerprint``).

A transaction is canonical JSON ``{"body": {...}, "sig": "0x<65 bytes>"}`` where the body is
``{"chain_id", "function", "args", "nonce", "signer", "valid_until"}``: the chain it is
for, the endpoint function and its string arguments (the chaincode's calling convention),
the signer's sequence number, its 20-byte secp256k1 address and the last block height that
may carry it (a transaction not in a block by then never will be: no signed call waits to
be replayed once its signer has moved on). The signature is the protocol core's
``r || s || v`` over ``sha256(TX_TAG || canonical body)``, checked with the core's
recovery rule (``bridge.core.signatures.recover_signer``: low s, v 27/28), so any
:class:`~bridge.domain.signer.Signer` (a key file, a keystore, an HSM token) can sign.

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
from typing import TYPE_CHECKING

from bridge.core.reasons import ErrorReason, ProtocolError
from bridge.core.signatures import recover_signer

if TYPE_CHECKING:
    from bridge.domain.signer import Signer

TX_TAG = b"KSTB/cometbft/tx/v1"
"""Domain tag of the transaction signing digest (no other KSTB digest starts with it)."""
MAX_TX_BYTES = 64 * 1024
"""Larger transactions are refused before parsing."""
MAX_NONCE = 2**63 - 1
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
    UNKNOWN_ACCOUNT = 6
    """The signer is neither a genesis account nor an enabled relayer (a permissioned chain:
    a stranger's key cannot fill blocks or grow state)."""
    EXPIRED = 7
    """The block (or the next block, at CheckTx) is above the body's ``valid_until``."""


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
    signer: bytes
    """The signer's 20-byte address."""
    valid_until: int = MAX_NONCE
    """The last block height that may carry the transaction (MAX_NONCE: no limit; the
    adapter's client always sets a near one, see ``rpc.VALID_BLOCKS``)."""

    def to_json(self) -> dict[str, object]:
        """The body as a JSON object (hex with 0x for bytes)."""
        return {
            "args": list(self.args),
            "chain_id": self.chain_id,
            "function": self.function,
            "nonce": self.nonce,
            "signer": "0x" + self.signer.hex(),
            "valid_until": self.valid_until,
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
    def account(self) -> str:
        """The signer's account id (:func:`account_id`)."""
        return account_id(self.body.signer)


def canonical(value: object) -> bytes:
    """Deterministic JSON: sorted keys, compact, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def account_id(address: bytes) -> str:
    """The account id of a 20-byte address: its 32-byte word in lowercase hex (12 zero
    bytes, then the address), the form the endpoint's identities take (``<org>:<64 hex>``)."""
    if len(address) != 20:
        raise ValueError("an address is 20 bytes")
    return (bytes(12) + address).hex()


def sign(body: TxBody, signer: Signer) -> bytes:
    """The encoded transaction: ``body`` signed by ``signer``, whose address must be
    ``body.signer``."""
    if signer.address != body.signer:
        raise ValueError("the body names another signer")
    sig = signer.sign_digest(body.digest())
    return canonical({"body": body.to_json(), "sig": "0x" + sig.hex()})


def decode(raw: bytes, chain_id: str) -> SignedTx:
    """Parse and authenticate ``raw`` for chain ``chain_id``; EnvelopeError otherwise.

    SECURITY: the signature must recover (core rule: low s, no malleated twin) to the
    body's own signer address, and the body must name this chain (no replay from another chain). The
    nonce is checked against state by the application, not here.
    """
    if len(raw) > MAX_TX_BYTES:
        raise EnvelopeError(EnvelopeCode.MALFORMED, f"{len(raw)} bytes > {MAX_TX_BYTES}")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # SECURITY: deeply nested JSON exhausts the parser's stack (RecursionError). Whether
        # it does at a given depth may differ between processes, but the outcome may not: a
        # valid envelope nests exactly three containers, so any input deep enough to matter
        # is MALFORMED either way (here or in the shape checks below).
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
    try:
        recovered = recover_signer(body.digest(), sig)
    except ProtocolError as exc:
        raise EnvelopeError(EnvelopeCode.BAD_SIGNATURE, exc.detail) from None
    if recovered != body.signer:
        raise EnvelopeError(EnvelopeCode.BAD_SIGNATURE, "signature is not the signer's")
    return SignedTx(body, sig)


def _hex(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(rf"0x[0-9a-f]{{{2 * size}}}", value):
        raise EnvelopeError(EnvelopeCode.MALFORMED, f"{name} must be 0x + {2 * size} hex")
    return bytes.fromhex(value[2:])


def _body(obj: object) -> TxBody:
    keys = {"args", "chain_id", "function", "nonce", "signer", "valid_until"}
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
    until = obj["valid_until"]
    if isinstance(until, bool) or not isinstance(until, int) or not 0 <= until <= MAX_NONCE:
        raise EnvelopeError(EnvelopeCode.MALFORMED, "valid_until")
    signer = _hex(obj["signer"], 20, "signer")
    return TxBody(chain, function, tuple(args), nonce, signer, until)


def encode_query(args: Sequence[str]) -> bytes:
    """An ABCI query's data: the function's arguments as canonical JSON."""
    return canonical(list(args))
