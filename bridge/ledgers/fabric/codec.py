"""The bridge chaincode's JSON formats (fixed by the chaincode) and their Python values.

Every 32-byte word is ``"0x"`` + 64 lowercase hex digits, amounts are decimal strings (they
may exceed 2**53), deadlines and enums are JSON integers. The ``*_from_json`` functions
reject malformed input with ``ValueError`` naming the field; ``*_to_json`` output parses back
to an equal value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.core.tally import SUPPLY_FIGURES
from bridge.domain.committee import Committee, CommitteeRotation, EpochWindow
from bridge.domain.errors import InvalidInput
from bridge.domain.governance import HaltStatus
from bridge.domain.legs import (
    Action,
    EventPosition,
    HolderStatus,
    LedgerEvent,
    Leg,
    LegState,
    LegStatus,
    SignatureSet,
    leg_state_from_ledger,
)
from bridge.domain.terms import TransferTerms

_WORD_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SIG_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_DEC_RE = re.compile(r"^[0-9]+$")
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
SIGNATURE_SIZE = 65
_TERM_WORDS = (
    "nonce", "security", "src_ledger", "src_bridge", "dst_ledger", "dst_bridge",
    "sender", "recipient", "instructor",
)  # fmt: skip

STEP_FUNCTIONS: Mapping[Action, str] = {
    Action.LOCK: "Lock",
    Action.PREPARE: "Prepare",
    Action.MARK_EXPIRED: "MarkExpired",
    Action.COMMIT: "Commit",
    Action.ABORT: "Abort",
}
"""The endpoint protocol's function applying each step (the chaincode's and the CometBFT
application's): ``Lock(terms, instruction)``, the others ``(terms, certificate)``, all as
JSON strings."""


def word_hex(word: bytes) -> str:
    """A 32-byte word as ``0x`` + 64 lowercase hex digits."""
    if len(word) != 32:
        raise ValueError("a word is 32 bytes")
    return "0x" + bytes(word).hex()


def word_from_json(value: object, field: str) -> bytes:
    """Parse ``0x`` + 64 hex digits (any case) into 32 bytes."""
    if not isinstance(value, str) or not _WORD_RE.fullmatch(value):
        raise ValueError(f"{field} must be 0x followed by 64 hex digits, got {value!r}")
    return bytes.fromhex(value[2:])


def int_from_json(value: object, field: str) -> int:
    """A non-negative integer given as a JSON number or a decimal string."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and _DEC_RE.fullmatch(value):
        return int(value)
    raise ValueError(f"{field} must be a non-negative integer, got {value!r}")


def _object(raw: str | bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    if not isinstance(raw, (str, bytes, bytearray)):  # an answer's element of another type
        raise ValueError(f"{what} must be a JSON object, got {type(raw).__name__}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object")
    return data


def _record(value: object, what: str) -> Mapping[str, Any]:
    """An element of an answer's list: a JSON object itself (never a string to parse)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _field(data: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in data:
        raise ValueError(f"{what} lacks {name!r}")
    return data[name]


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def terms_to_dict(terms: TransferTerms) -> dict[str, Any]:
    """The chaincode's Terms object for ``terms``."""
    out: dict[str, Any] = {name: word_hex(getattr(terms, name)) for name in _TERM_WORDS}
    out["amount"] = str(terms.amount)
    out["deadline"] = terms.deadline
    return out


def terms_to_json(terms: TransferTerms) -> str:
    """Terms JSON: words as 0x-hex, ``amount`` a decimal string, ``deadline`` an integer."""
    return _dumps(terms_to_dict(terms))


def terms_from_json(raw: str | bytes | Mapping[str, Any]) -> TransferTerms:
    """Parse Terms JSON (text or an already decoded object); ValueError when malformed.

    Also raises InvalidInput (from :class:`TransferTerms`) for values the domain forbids.
    """
    data = _object(raw, "terms")
    words = {name: word_from_json(_field(data, name, "terms"), name) for name in _TERM_WORDS}
    return TransferTerms(
        amount=int_from_json(_field(data, "amount", "terms"), "amount"),
        deadline=int_from_json(_field(data, "deadline", "terms"), "deadline"),
        **words,
    )


def certificate_to_json(certificate: SignatureSet) -> str:
    """Certificate JSON: ``{"epoch": int, "signatures": ["0x" + 130 hex, ...]}`` (order kept)."""
    for sig in certificate.signatures:
        if len(sig) != SIGNATURE_SIZE:
            raise ValueError("a committee signature is 65 bytes (r || s || v)")
    return _dumps(
        {
            "epoch": certificate.epoch,
            "signatures": ["0x" + bytes(s).hex() for s in certificate.signatures],
        }
    )


def certificate_from_json(raw: str | bytes | Mapping[str, Any]) -> SignatureSet:
    """Parse Certificate JSON; ValueError when malformed."""
    data = _object(raw, "certificate")
    sigs = _field(data, "signatures", "certificate")
    if not isinstance(sigs, list):
        raise ValueError("certificate signatures must be a list")
    out: list[bytes] = []
    for s in sigs:
        if not isinstance(s, str) or not _SIG_RE.fullmatch(s):
            raise ValueError(f"signature must be 0x followed by 130 hex digits, got {s!r}")
        out.append(bytes.fromhex(s[2:]))
    return SignatureSet(int_from_json(_field(data, "epoch", "certificate"), "epoch"), tuple(out))


def leg_name(leg: Leg) -> str:
    """The chaincode's name for a leg: ``outbound`` or ``inbound``."""
    return "outbound" if leg is Leg.OUTBOUND else "inbound"


def leg_from_index(value: object) -> Leg:
    """The event payload's leg index: 0 is OUTBOUND, 1 is INBOUND."""
    index = int_from_json(value, "leg")
    if index not in (0, 1):
        raise ValueError(f"leg must be 0 or 1, got {index}")
    return Leg.OUTBOUND if index == 0 else Leg.INBOUND


def holder_from_json(raw: str | bytes | Mapping[str, Any]) -> HolderStatus:
    """Parse the HolderStatus answer; ValueError when malformed."""
    data = _object(raw, "holder status")

    def flag(name: str) -> bool:
        value = _field(data, name, "holder status")
        if not isinstance(value, bool):
            raise ValueError(f"holder status {name} must be a boolean, got {value!r}")
        return value

    return HolderStatus(
        security_registered=flag("registered"),
        balance=int_from_json(_field(data, "balance", "holder status"), "balance"),
        receive_status=int_from_json(
            _field(data, "receive_status", "holder status"), "receive_status"
        ),
        eligible=flag("eligible"),
        frozen=flag("frozen"),
        paused=flag("paused"),
    )


def object_from_json(raw: str | bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """A JSON object (ValueError when ``raw`` is not one)."""
    return _object(raw, what)


def field(data: Mapping[str, Any], name: str, what: str) -> Any:
    """``data[name]``; ValueError naming ``what`` when absent."""
    return _field(data, name, what)


SUPPLY_FIELDS = SUPPLY_FIGURES
"""The figures of the chaincode's ``Supply`` answer, each a decimal string."""


def supply_from_json(raw: str | bytes | Mapping[str, Any]) -> dict[str, int]:
    """Parse the ``Supply`` answer into its five figures; ValueError when malformed."""
    data = _object(raw, "supply")
    return {name: int_from_json(_field(data, name, "supply"), name) for name in SUPPLY_FIELDS}


SUPPLY_KEY_PREFIXES = ("holder", "escrow", "prepared", "burned", "minted", "parked", "tally")
"""World-state key families behind the chaincode's ``Supply``, each ``<family>/<security>/``:
``Supply`` reads the ``tally`` counters (ADR 0024), which every write of the other families'
amounts updates in the same transaction."""


def is_supply_key(key: str, security: bytes) -> bool:
    """True when the chaincode's ``Supply`` answer for ``security`` reads ``key``.

    ``Supply`` reads ``security/<id>`` and the ``tally/<id>/`` counters, kept in step with
    ``<family>/<id>/`` for each other family in SUPPLY_KEY_PREFIXES (``<id>`` is the 32-byte
    security word in lowercase hex); a block that writes none of these keys leaves the
    answer unchanged. A unit test checks this
    against the chaincode's read set.
    """
    sec = security.hex()
    if key == f"security/{sec}":
        return True
    family, sep, rest = key.partition("/")
    return bool(sep) and family in SUPPLY_KEY_PREFIXES and rest.startswith(f"{sec}/")


_COUNTER_SHARD = re.compile(r"tally/([0-9a-f]{64})/[0-9a-f]{2}")


def is_counter_shard_key(key: str, security: bytes) -> bool:
    """True when ``key`` is one of ``security``'s counter shards ``tally/<id>/<nn>`` (two
    lowercase hex digits, 00 to ff: the chaincode writes 00 to 3f, TALLY_SHARDS, and a later
    one with more shards stays readable), the records whose sums ``Supply`` answers
    (bridge.core.tally); False for its counting state ``tally/<id>/state`` and every other
    key."""
    match = _COUNTER_SHARD.fullmatch(key)
    return match is not None and match.group(1) == security.hex()


def is_amount_key(key: str, security: bytes) -> bool:
    """True when ``key`` holds units of ``security`` (a holder's balance, an escrowed,
    prepared or parked leg, a burned or minted record). ``Supply`` never reads these: every
    transaction that writes one moves the counters by the same amount (ADR 0024)."""
    family, sep, rest = key.partition("/")
    return (
        bool(sep)
        and family != "tally"
        and family in SUPPLY_KEY_PREFIXES
        and rest.startswith(f"{security.hex()}/")
    )


# ---- committee rotation


def rotation_to_json(rotation: CommitteeRotation) -> str:
    """The chaincode's ``RotateCommittee`` rotation argument: ``{"epoch", "next_epoch",
    "threshold", "members" (lowercase 0x addresses, ascending), "activation", "overlap"}``."""
    return _dumps(
        {
            "epoch": rotation.epoch,
            "next_epoch": rotation.next.epoch,
            "threshold": rotation.next.threshold,
            "members": ["0x" + m.hex() for m in rotation.next.members],
            "activation": rotation.activation,
            "overlap": rotation.overlap,
        }
    )


def committees_from_json(raw: str | bytes | Mapping[str, Any]) -> tuple[EpochWindow, ...]:
    """The chaincode's ``Committees`` answer: ``{"committees": [{"epoch", "threshold",
    "members", "active_from", "active_until" (null: no end)}, ...]}`` ascending by epoch."""
    data = _object(raw, "Committees answer")
    items = _field(data, "committees", "Committees answer")
    if not isinstance(items, list):
        raise ValueError("Committees answer: committees must be a list")
    out = []
    for item in items:
        obj = _record(item, "committee window")
        members = _field(obj, "members", "committee window")
        if not isinstance(members, list) or not all(
            isinstance(m, str) and _ADDRESS_RE.fullmatch(m) for m in members
        ):
            raise ValueError("committee window: members must be 0x 20-byte addresses")
        until = _field(obj, "active_until", "committee window")
        try:
            committee = Committee(
                epoch=int_from_json(_field(obj, "epoch", "committee window"), "epoch"),
                threshold=int_from_json(_field(obj, "threshold", "committee window"), "threshold"),
                members=tuple(bytes.fromhex(m[2:]) for m in members),
            )
        except InvalidInput as exc:
            raise ValueError(f"committee window: {exc}") from None
        out.append(
            EpochWindow(
                committee=committee,
                active_from=int_from_json(
                    _field(obj, "active_from", "committee window"), "active_from"
                ),
                active_until=None if until is None else int_from_json(until, "active_until"),
            )
        )
    return tuple(out)


# ---- flow limits (ADR 0010)
FLOW_STATUS_FIELDS = (
    "window",
    "outbound_capacity",
    "outbound_available",
    "inbound_capacity",
    "inbound_available",
    "share_bps",
    "large_threshold",
    "large_delay",
    "large_outbound_available",
    "large_inbound_available",
)
"""The chaincode's ``FlowStatus`` figures, in the order of the EVM ``flowStatus`` array."""


def flow_status_from_json(raw: str | bytes | Mapping[str, Any]) -> tuple[int, list[int]]:
    """Parse the ``FlowStatus`` answer into ``(as_of, figures)``; ValueError when malformed."""
    data = _object(raw, "flow status")
    as_of = _field(data, "as_of", "flow status")
    if type(as_of) is not int or as_of < 0:
        raise ValueError("flow status: as_of must be a non-negative integer")
    figures = [
        int_from_json(_field(data, name, "flow status"), name) for name in FLOW_STATUS_FIELDS
    ]
    return as_of, figures


# ---- endpoint answers as domain values (shared by every kind that runs the endpoint
# protocol module: the Fabric chaincode and the CometBFT application, ADR 0018)


def leg_event_from_json(
    payload: str | bytes | Mapping[str, Any],
    *,
    ledger: str,
    position: EventPosition,
    block_hash: bytes,
    tx_id: str,
) -> LedgerEvent:
    """A ``LegStateChanged`` payload as a LedgerEvent; ValueError when malformed, or when a
    LOCKED event's terms do not hash to its ``terms_hash``."""
    what = f"LegStateChanged event in tx {tx_id}"
    data = _object(payload, what)
    leg = leg_from_index(_field(data, "leg", what))
    state = leg_state_from_ledger(leg, int_from_json(_field(data, "state", what), "state"))
    terms_hash = word_from_json(_field(data, "terms_hash", what), "terms_hash")
    terms: TransferTerms | None = None
    raw_terms = data.get("terms")
    if state is LegState.LOCKED and raw_terms:
        terms = terms_from_json(raw_terms)
        if terms.terms_hash != terms_hash:
            raise ValueError(f"{what}: terms do not hash to the event's terms_hash")
    return LedgerEvent(
        ledger=ledger,
        position=position,
        block_hash=block_hash,
        tx_id=tx_id,
        transfer_id=word_from_json(_field(data, "transfer_id", what), "transfer_id"),
        leg=leg,
        state=state,
        reason=int_from_json(data.get("reason", 0), "reason"),
        terms_hash=terms_hash,
        terms=terms,
    )


def leg_status_from_json(
    raw: str | bytes | Mapping[str, Any], leg: Leg, height: int, not_before: int = 0
) -> LegStatus:
    """The ``GetLeg`` answer as a LegStatus read at ``height``; ValueError when malformed."""
    data = _object(raw, "GetLeg answer")
    state = int_from_json(_field(data, "state", "GetLeg answer"), "state")
    return LegStatus(
        state=leg_state_from_ledger(leg, state),
        terms_hash=word_from_json(data.get("terms_hash") or "0x" + "00" * 32, "terms_hash"),
        reason=int_from_json(data.get("reason", 0), "reason"),
        height=height,
        not_before=not_before,
    )


def halt_status_from_json(raw: str | bytes | Mapping[str, Any]) -> HaltStatus:
    """The ``HaltStatus`` answer (the depository key as 20 bytes, None when unset)."""
    data = _object(raw, "HaltStatus answer")
    depository = data.get("depository")
    key = None
    if isinstance(depository, str):
        key = word_from_json("0x" + "00" * 12 + depository[2:], "depository")[12:]
    return HaltStatus(
        security_halted=data.get("security_halted") is True,
        ledger_halted=data.get("ledger_halted") is True,
        sequence=int_from_json(data.get("sequence", 0), "sequence"),
        depository=key,
    )


# ---- batch (issue 14 items 2-4)

MAX_LEG_READS = 200
"""The most transfer ids one ``Legs`` evaluation answers (the chaincode's bound)."""


MAX_HOLDER_READS = 200
"""The most holders one ``HolderStatuses`` evaluation answers (the chaincode's bound)."""


def holders_to_json(accounts: Sequence[str]) -> str:
    """``HolderStatuses``' holder list: a JSON list of the accounts (``0x`` + 40 hex)."""
    return json.dumps(list(accounts), separators=(",", ":"))


def _answer_records(
    raw: str | bytes | Mapping[str, Any], what: str, field: str, count: int
) -> list[Mapping[str, Any]]:
    """A many-item read's answer ``{"<field>": [record, ...]}``: exactly ``count`` records,
    each a JSON object (ValueError otherwise: ``<what> answer must list <count> <field>``,
    ``<what> record must be a JSON object``); the caller matches each to its request."""
    data = _object(raw, f"{what} answer")
    records = _field(data, field, f"{what} answer")
    if not isinstance(records, list) or len(records) != count:
        raise ValueError(f"{what} answer must list {count} {field}")
    return [_record(r, f"{what} record") for r in records]


def holders_from_json(
    raw: str | bytes | Mapping[str, Any], accounts: Sequence[str]
) -> list[HolderStatus]:
    """The ``HolderStatuses`` answer as one HolderStatus per requested account, in the
    request's order. ValueError when malformed, when it answers another number of holders,
    or when a record's ``holder`` is not the account asked for at its position (compared
    case-insensitively; an answer is never matched to a request by guesswork)."""
    out = []
    for account, rec in zip(
        accounts, _answer_records(raw, "HolderStatuses", "holders", len(accounts)), strict=True
    ):
        echoed = _field(rec, "holder", "HolderStatuses record")
        if not isinstance(echoed, str) or echoed.lower() != account.lower():
            raise ValueError(f"HolderStatuses answer is out of order at {account}")
        out.append(holder_from_json(rec))
    return out


def transfer_ids_to_json(transfer_ids: Sequence[bytes]) -> str:
    """``Legs``' id list: a JSON list of 0x words."""
    return json.dumps([word_hex(t) for t in transfer_ids], separators=(",", ":"))


def legs_from_json(
    raw: str | bytes | Mapping[str, Any], transfer_ids: Sequence[bytes], leg: Leg, height: int
) -> list[LegStatus]:
    """The ``Legs`` answer as one LegStatus per requested id, in the request's order.

    ValueError when malformed (a record without ``not_before`` included: a missing delay is
    never read as none), when it answers another number of legs, or when a record's
    ``transfer_id`` is not the id asked for at its position (an answer is never matched to
    a request by guesswork)."""
    out = []
    for tid, rec in zip(
        transfer_ids, _answer_records(raw, "Legs", "legs", len(transfer_ids)), strict=True
    ):
        if word_from_json(_field(rec, "transfer_id", "Legs record"), "transfer_id") != tid:
            raise ValueError(f"Legs answer is out of order at 0x{tid.hex()}")
        out.append(
            leg_status_from_json(
                rec,
                leg,
                height,
                int_from_json(_field(rec, "not_before", "Legs record"), "not_before"),
            )
        )
    return out
