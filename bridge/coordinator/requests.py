"""Validation of brokerage requests: every rule that needs no ledger, with precise errors,
including the brokerage's signed instruction (protocol v2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from bridge.config import NetworkConfig
from bridge.coordinator.records import TransferRequest
from bridge.domain.errors import InvalidInput, NotFound
from bridge.domain.ids import SecurityId, is_valid_isin
from bridge.domain.instructions import (
    Instruction,
    UnauthorisedInstructor,
    instructor_word,
    verify_instruction,
)
from bridge.domain.terms import UINT256_MAX, TransferTerms
from bridge.ledgers.addresses import codec_for
from bridge.ledgers.factory import bridge_word_of

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
ADOPTED_KEY_PREFIX = "onchain:"
"""Idempotency keys the coordinator gives transfers it adopts from a holder-direct lock;
reserved (in any letter case), so no brokerage can claim one first."""
_AMOUNT_RE = re.compile(r"^[0-9]+$")


def parse_amount(text: str) -> int:
    """Parse a decimal unit amount in 1..2**256-1."""
    text = text.strip()
    if text.startswith("-"):
        raise InvalidInput("amount must be positive, got a negative number")
    if not _AMOUNT_RE.fullmatch(text):
        raise InvalidInput(f"amount {text!r} is not a decimal integer")
    if len(text) > 80:
        raise InvalidInput("amount exceeds 2^256-1")
    value = int(text)
    if value == 0:
        raise InvalidInput("amount must be at least 1")
    if value > UINT256_MAX:
        raise InvalidInput("amount exceeds 2^256-1")
    return value


def validate_request(
    network: NetworkConfig,
    *,
    idempotency_key: str,
    security: str,
    source_ledger: str,
    target_ledger: str,
    sender: str,
    recipient: str,
    amount: str,
) -> TransferRequest:
    """Return a normalised request, or raise InvalidInput / NotFound naming the field."""
    if not _KEY_RE.fullmatch(idempotency_key):
        raise InvalidInput("idempotency_key must be 1-128 printable ASCII characters")
    # SECURITY: a key in the adoption namespace, claimed before the coordinator adopts the
    # holder's lock, would block the adoption (the store keeps the first row per key).
    if idempotency_key.lower().startswith(ADOPTED_KEY_PREFIX):
        raise InvalidInput(
            f"idempotency_key must not start with {ADOPTED_KEY_PREFIX!r}: that prefix is"
            " reserved for transfers adopted from holder-direct locks"
        )
    if not security:
        raise InvalidInput("security_id is required")
    if not is_valid_isin(security):
        raise InvalidInput(f"security_id {security!r} is not a valid ISIN")
    if security not in network.securities:
        raise NotFound(f"security {security} is not registered with the bridge")
    for field, name in (("source_ledger", source_ledger), ("target_ledger", target_ledger)):
        if not name:
            raise InvalidInput(f"{field} is required")
        if name not in network.ledgers:
            raise NotFound(f"{field} {name!r} is not a connected ledger")
    if source_ledger == target_ledger:
        raise InvalidInput("source_ledger and target_ledger must differ")
    value = parse_amount(amount)
    src_codec = codec_for(network.ledgers[source_ledger].kind)
    dst_codec = codec_for(network.ledgers[target_ledger].kind)
    try:
        sender_word = src_codec.parse(sender)
    except InvalidInput as exc:
        raise InvalidInput(f"sender: {exc}") from None
    try:
        recipient_word = dst_codec.parse(recipient)
    except InvalidInput as exc:
        raise InvalidInput(f"recipient: {exc}") from None
    if not any(sender_word):
        raise InvalidInput("sender must not be the zero address")
    if not any(recipient_word):
        raise InvalidInput("recipient must not be the zero address")
    return TransferRequest(
        idempotency_key=idempotency_key,
        security=security,
        source_ledger=source_ledger,
        target_ledger=target_ledger,
        sender=src_codec.format(sender_word),
        recipient=dst_codec.format(recipient_word),
        amount=value,
    )


def is_valid_key(key: str) -> bool:
    """True when ``key`` has the idempotency-key format (1-128 printable ASCII, no space)."""
    return _KEY_RE.fullmatch(key) is not None


def validate_batch_id(batch_id: str) -> None:
    """Raise InvalidInput unless ``batch_id`` has the idempotency-key format (ADR 0023)."""
    if not _KEY_RE.fullmatch(batch_id):
        raise InvalidInput("batch_id must be 1-128 printable ASCII characters")


class SubmitFields(Protocol):
    """The fields of a submit request as they arrive (a ``SubmitTransferRequest`` has them)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def security_id(self) -> str: ...
    @property
    def source_ledger(self) -> str: ...
    @property
    def target_ledger(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def amount(self) -> str: ...


def validate_submit(network: NetworkConfig, request: SubmitFields) -> TransferRequest:
    """:func:`validate_request` on a submit request's fields (same errors, same result)."""
    return validate_request(
        network,
        idempotency_key=request.idempotency_key,
        security=request.security_id,
        source_ledger=request.source_ledger,
        target_ledger=request.target_ledger,
        sender=request.sender,
        recipient=request.recipient,
        amount=request.amount,
    )


DEADLINE_SKEW_S = 60
"""Seconds a brokerage's clock may run ahead of the coordinator's."""


def terms_for(
    network: NetworkConfig, request: TransferRequest, instruction: Instruction
) -> TransferTerms:
    """The terms a validated request and its instruction make (what the instructor signed)."""
    src = network.ledgers[request.source_ledger]
    dst = network.ledgers[request.target_ledger]
    return TransferTerms(
        nonce=instruction.nonce,
        security=SecurityId(request.security).word,
        amount=request.amount,
        src_ledger=src.id.word,
        src_bridge=bridge_word_of(src),
        dst_ledger=dst.id.word,
        dst_bridge=bridge_word_of(dst),
        sender=codec_for(src.kind).parse(request.sender),
        recipient=codec_for(dst.kind).parse(request.recipient),
        instructor=instructor_word(instruction.instructor),
        deadline=instruction.deadline,
    )


def authorise_instruction(
    network: NetworkConfig, request: TransferRequest, instruction: Instruction
) -> TransferTerms:
    """Return the instructed terms if the instruction is authentic, whatever its deadline.

    SECURITY: the instructor must be an instruction key registered for the source ledger
    (UnauthorisedInstructor, PERMISSION_DENIED) and the signature must be its signature over
    exactly these terms on the source ledger's network (InvalidInstruction,
    PERMISSION_DENIED), checked with the ledgers' own rule. Runs before anything recorded is
    read, so a caller without a valid instruction learns nothing about recorded keys.
    """
    if not network.may_instruct(request.source_ledger, instruction.instructor):
        raise UnauthorisedInstructor(
            f"instructor 0x{instruction.instructor.hex()} is not an instruction key registered"
            f" for ledger {request.source_ledger}"
        )
    terms = terms_for(network, request, instruction)
    verify_instruction(
        network.ledgers[request.source_ledger].network_word, terms, instruction.signature
    )
    return terms


@dataclass(frozen=True, slots=True)
class Authorised:
    """An instruction authenticated for exactly ``request``: the terms
    :func:`authorise_instruction` returned for this request and instruction (built only by
    :func:`authorised`)."""

    request: TransferRequest
    instruction: Instruction
    terms: TransferTerms


def authorised(
    network: NetworkConfig, request: TransferRequest, instruction: Instruction
) -> Authorised:
    """:func:`authorise_instruction`, kept with what it authenticated: a caller that must
    know whether an item was refused before its instruction was authenticated (the batch
    quota) authenticates first and hands the result to ``Admission.check``, which then does
    not verify the signature again."""
    return Authorised(request, instruction, authorise_instruction(network, request, instruction))


def check_deadline(instruction: Instruction, *, now: float, ttl: int) -> None:
    """Refuse (InvalidInput) a deadline that has passed or lies more than ``ttl`` seconds
    (plus clock skew) ahead. Applies to new transfers only: a retry of a recorded one may
    come after its deadline."""
    if instruction.deadline <= now:
        raise InvalidInput("instruction.deadline has passed")
    if instruction.deadline > now + ttl + DEADLINE_SKEW_S:
        raise InvalidInput(f"instruction.deadline is more than transfer_ttl={ttl}s ahead")


def check_instruction(
    network: NetworkConfig,
    request: TransferRequest,
    instruction: Instruction,
    *,
    now: float,
    ttl: int,
) -> TransferTerms:
    """Return the instructed terms, or refuse before anything is recorded.

    SECURITY: authorise_instruction (registered instructor, signature over exactly these
    terms) and then check_deadline (InvalidInput).
    """
    terms = authorise_instruction(network, request, instruction)
    check_deadline(instruction, now=now, ttl=ttl)
    return terms
