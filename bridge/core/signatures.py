"""The signature recovery rule and the certificate acceptance rule, as every endpoint applies them.

Signatures are 65 bytes ``r || s || v`` over a raw 32-byte digest (no EIP-191 prefix), v in
{27, 28}, s in the lower half of the curve order, exactly what EVM ``ecrecover`` with the
endpoint's extra checks accepts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from coincurve import PublicKey

from .digests import ORDER_ACTIONS, ORDER_SET_DEPOSITORY, Order, order_digest
from .hashing import keccak256
from .reasons import ErrorReason, ProtocolError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_CURVE_ORDER = SECP256K1_N // 2
SIGNATURE_LENGTH = 65


def address_of_public_key(uncompressed: bytes) -> bytes:
    """The 20-byte EVM address of a 65-byte uncompressed secp256k1 public key."""
    if len(uncompressed) != 65 or uncompressed[0] != 4:
        raise ValueError("expected a 65-byte uncompressed public key")
    return keccak256(uncompressed[1:])[12:]


def recover_signer(digest: bytes, signature: bytes) -> bytes:
    """Return the 20-byte address that produced ``signature`` over ``digest``.

    Raises ProtocolError(INVALID_SIGNATURE) for a digest that is not 32 bytes, a signature
    that is not 65 bytes, v not 27/28, r or s out of range (high s included: the malleable
    twin is refused) or a signature that recovers no public key.
    """
    if len(digest) != 32:
        raise ProtocolError(ErrorReason.INVALID_SIGNATURE, "digest must be 32 bytes")
    if len(signature) != SIGNATURE_LENGTH:
        raise ProtocolError(ErrorReason.INVALID_SIGNATURE, "signature must be 65 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise ProtocolError(ErrorReason.INVALID_SIGNATURE, "signature v must be 27 or 28")
    if not (0 < r < SECP256K1_N and 0 < s <= HALF_CURVE_ORDER):
        raise ProtocolError(
            ErrorReason.INVALID_SIGNATURE,
            "signature r/s out of range (high-s signatures are refused)",
        )
    try:
        pub = PublicKey.from_signature_and_message(
            bytes(signature[:64]) + bytes([v - 27]), bytes(digest), hasher=None
        )
    except Exception as exc:  # coincurve raises a bare Exception when recovery fails
        raise ProtocolError(
            ErrorReason.INVALID_SIGNATURE, "signature does not recover to a public key"
        ) from exc
    return address_of_public_key(pub.format(compressed=False))


def check_certificate(
    digest: bytes,
    epoch: int,
    current_epoch: int,
    threshold: int,
    members: Collection[bytes],
    signatures: Sequence[bytes] | None,
) -> None:
    """Apply the endpoints' certificate acceptance rule, check for check and in order.

    In order: the epoch is the current one (WRONG_EPOCH); the signatures split into parts
    (``None`` means they did not: MALFORMED_SIGNATURES); at least ``threshold`` of them
    (TOO_FEW_SIGNATURES); then for each, in order: it recovers (INVALID_SIGNATURE with
    ``index=i``), its signer is strictly above the previous one (SIGNERS_NOT_ASCENDING, so no
    duplicates) and a member (NOT_COMMITTEE_MEMBER). Raises ProtocolError on the first
    failure; returns None when the certificate is accepted.
    """
    if epoch != current_epoch:
        raise ProtocolError(ErrorReason.WRONG_EPOCH, f"got={epoch}, current={current_epoch}")
    if signatures is None:
        raise ProtocolError(ErrorReason.MALFORMED_SIGNATURES, "signatures do not split")
    count = len(signatures)
    if count < threshold:
        raise ProtocolError(ErrorReason.TOO_FEW_SIGNATURES, f"got={count}, threshold={threshold}")
    previous = bytes(20)
    for i, sig in enumerate(signatures):
        try:
            signer = recover_signer(digest, sig)
        except ProtocolError:
            raise ProtocolError(ErrorReason.INVALID_SIGNATURE, f"index={i}") from None
        if signer <= previous:
            raise ProtocolError(ErrorReason.SIGNERS_NOT_ASCENDING, f"index={i}")
        if signer not in members:
            raise ProtocolError(ErrorReason.NOT_COMMITTEE_MEMBER, f"signer=0x{signer.hex()}")
        previous = signer


def check_instruction(digest: bytes, instructor: bytes, instruction: bytes) -> None:
    """Accept ``instruction`` only if it is a valid signature over ``digest`` by ``instructor``.

    ``instructor`` is the terms' 32-byte instructor word (12 zero bytes + a 20-byte address).
    Raises ProtocolError(MISSING_INSTRUCTION) for an empty instruction and
    ProtocolError(INVALID_INSTRUCTION) for a malformed one, one that breaks the signature
    rules, or one that recovers to any other address.
    """
    if not instruction:
        raise ProtocolError(ErrorReason.MISSING_INSTRUCTION, "the lock carries no instruction")
    if len(instructor) != 32 or any(instructor[:12]) or not any(instructor[12:]):
        raise ProtocolError(ErrorReason.INVALID_INSTRUCTION, "instructor is not an address word")
    try:
        signer = recover_signer(digest, instruction)
    except ProtocolError as exc:
        raise ProtocolError(ErrorReason.INVALID_INSTRUCTION, exc.detail) from None
    if signer != instructor[12:]:
        raise ProtocolError(
            ErrorReason.INVALID_INSTRUCTION,
            f"signed by 0x{signer.hex()}, not the instructor 0x{instructor[12:].hex()}",
        )


# ---- depository halt


def check_order(
    order: Order,
    signature: bytes,
    depository: bytes | None,
    network: bytes,
    ledger: bytes,
    last_sequence: int,
    now: int | None,
) -> None:
    """The endpoints' acceptance rule for a depository order, check for check and in order.

    In order: a depository key is configured (NO_DEPOSITORY); the action is known and a
    key-replacement names a nonzero address word while the others name none (INVALID_ORDER);
    the order is for this network and for this ledger or every ledger (WRONG_LEDGER); it has
    not expired, ``now < expiry`` (ORDER_EXPIRED; skipped when ``now`` is None: a ledger
    without a clock); its sequence is
    above ``last_sequence`` (STALE_ORDER: a replay or an older order); the signature follows
    the signature rules (INVALID_SIGNATURE) and recovers to ``depository`` (NOT_DEPOSITORY).
    Raises ProtocolError on the first failure; returns None when the order is accepted.
    """
    if depository is None:
        raise ProtocolError(ErrorReason.NO_DEPOSITORY, "no depository key is configured")
    if order.action not in ORDER_ACTIONS:
        raise ProtocolError(ErrorReason.INVALID_ORDER, f"action={order.action}")
    if (order.action == ORDER_SET_DEPOSITORY) != any(order.key):
        raise ProtocolError(ErrorReason.INVALID_ORDER, "key must be set exactly for a key change")
    if order.action == ORDER_SET_DEPOSITORY and (any(order.key[:12]) or any(order.security)):
        raise ProtocolError(
            ErrorReason.INVALID_ORDER, "a key change names an address word and no security"
        )
    if order.network != network:
        raise ProtocolError(ErrorReason.WRONG_LEDGER, "order is for another network")
    if any(order.ledger) and order.ledger != ledger:
        raise ProtocolError(ErrorReason.WRONG_LEDGER, "order is for another ledger")
    if now is not None and now >= order.expiry:
        raise ProtocolError(ErrorReason.ORDER_EXPIRED, f"expiry={order.expiry}, now={now}")
    if order.sequence <= last_sequence:
        raise ProtocolError(
            ErrorReason.STALE_ORDER, f"sequence={order.sequence}, last={last_sequence}"
        )
    try:
        signer = recover_signer(order_digest(order), signature)
    except ProtocolError:
        raise ProtocolError(ErrorReason.INVALID_SIGNATURE, "index=0") from None
    if signer != depository:
        raise ProtocolError(ErrorReason.NOT_DEPOSITORY, f"signer=0x{signer.hex()}")
