"""The ledger side of the KSTB protocol on Fabric: token controls and bridge legs, pure logic.

This module is the Fabric twin of ``contracts/evm/src/BridgeEndpoint.sol`` and
``SecurityToken.sol``: the same checks, in the same order, with the same error names and the
same digests, byte for byte. It does no I/O and imports nothing from Fabric; the world state
is a tiny key-value interface (:class:`KeyValue`) and events go to a callback, so the whole
state machine is unit-testable. ``kstb_chaincode.chaincode`` binds it to the Fabric shim.

Determinism (every endorsing peer must compute the same write set): no peer clock in any
result (the only time is the transaction timestamp, identical on every endorser, read by the
committee-epoch rules, the flow limits and the deadlines of Lock and MarkExpired; a peer's
own clock only refuses a skewed timestamp), no randomness, no floating point, no iteration
over unordered containers that reaches the output; JSON is written with ``sort_keys`` and
compact separators; amounts are Python ints stored as decimal strings; amounts and balances
are bounded to ``< 2**256`` like the EVM's uint256 (the EVM's bound on totalSupply is not
enforced: it would need a per-security counter, see Keys).

Atomicity: :func:`execute` runs a call over a write buffer and an event buffer. Only a call
that succeeds writes (in sorted key order) and emits; a failing call leaves the store
untouched, like an EVM revert. Fabric would discard the write set of a failed proposal
anyway; the buffer also gives read-your-writes, which Fabric's ``GetState`` does not.

Keys (all ASCII): ``config``, ``committee`` (the latest epoch), ``epoch/<n>`` (epochs a
rotation touched, with their windows), ``governance`` (issuer and admin organisations,
see ``# ---- admin``), ``proposal/<id>`` (an admin change awaiting approvals),
``parked/<word>/<transfer id>`` (units parked by a commit, see ``# ---- parking``),
``relayer/<identity>``, ``security/<word>``,
``holder/<word>/<address>``, ``out/<transfer id>``, ``in/<transfer id>``, and the index
entries ``escrow/<word>/<transfer id>`` (a Locked outbound leg) and
``prepared/<word>/<transfer id>`` (a Prepared inbound leg), deleted when the leg moves on,
and the permanent entries ``burned/<word>/<transfer id>`` (an outbound leg committed, Burned)
and ``minted/<word>/<transfer id>`` (an inbound leg committed, Minted), written by Commit and
never deleted (hex without 0x). ``Supply`` does not sum those keys (a range read the peer
caps at ``totalQueryLimit`` would be silently short at scale): the per-security counters
``tally/<word>/<nn>`` (sharded, so two transactions of a security rarely conflict) and
``tally/<word>/state`` are kept in step by every write, see ``# ---- exact reads``. A leg
record (``out/``, ``in/``) also stores ``delayed`` (never reported): whether the leg has a
``notbefore/`` record; with it, a leg's index key and delay are known without reading them,
see ``# ---- fewer state reads``.

Error messages are ``"<ErrorName>: <detail>"``; the detail uses the EVM adapter's
``name=value, ...`` form (bytes and addresses as lowercase 0x-hex).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from functools import partial
from itertools import pairwise
from typing import Any, Protocol, cast

from kstb_chaincode.core import batch as _batch
from kstb_chaincode.core import digests as _digests
from kstb_chaincode.core import epochs as _epochs
from kstb_chaincode.core import tally as _tally_core
from kstb_chaincode.core import words as _words
from kstb_chaincode.core.digests import (
    CLAIM_ABORT,
    CLAIM_COMMIT,
    CLAIM_LOCKED,
    ORDER_HALT,
    ORDER_SET_DEPOSITORY,
    PROTOCOL_VERSION,
    WORD_FIELDS,
    claim_digest,
    init_parameters_digest,
    instruction_digest,
    rotation_digest,
    transfer_id,
)
from kstb_chaincode.core.hashing import keccak256
from kstb_chaincode.core.reasons import ErrorReason, ProtocolError
from kstb_chaincode.core.signatures import (
    HALF_CURVE_ORDER,
    SECP256K1_N,
    SIGNATURE_LENGTH,
    check_certificate,
    check_instruction,
    check_order,
)
from kstb_chaincode.core.signatures import recover_signer as _core_recover
from kstb_chaincode.core.words import fabric_bridge_word as bridge_word
from kstb_chaincode.core.words import ledger_word

__all__ = [
    "CLAIM_ABORT",
    "CLAIM_COMMIT",
    "CLAIM_LOCKED",
    "HALF_CURVE_ORDER",
    "PROTOCOL_VERSION",
    "SECP256K1_N",
    "SIGNATURE_LENGTH",
    "ChaincodeError",
    "Context",
    "Endpoint",
    "ErrorReason",
    "KeyValue",
    "MemoryStore",
    "Terms",
    "bridge_word",
    "canonical_json",
    "claim_digest",
    "execute",
    "identity_of",
    "init_parameters_digest",
    "instruction_digest",
    "keccak256",
    "ledger_word",
    "parse_certificate",
    "parse_holder",
    "parse_terms",
    "terms_to_json",
    "recover_signer",
    "security_word",
    "transfer_id",
]

# ----------------------------------------------------------------------------- constants

UINT256_LIMIT = _digests.UINT256_LIMIT
UINT64_LIMIT = _digests.UINT64_LIMIT

LEG_OUT = 0
LEG_IN = 1

# OutState (IBridgeEndpoint.OutState)
OUT_NONE, OUT_LOCKED, OUT_BURNED, OUT_RELEASED = 0, 1, 2, 3
# InState (IBridgeEndpoint.InState)
IN_NONE, IN_PREPARED, IN_REJECTED, IN_EXPIRED, IN_MINTED, IN_ABORTED = 0, 1, 2, 3, 4, 5

# Rejection reasons / receive status codes (SecurityToken.receiveStatus, 1 and 5 endpoint-only).
RECEIVE_OK = 0
REASON_UNKNOWN_SECURITY = 1
RECEIVE_NOT_ELIGIBLE = 2
RECEIVE_FROZEN = 3
RECEIVE_PAUSED = 4
REASON_INVALID_RECIPIENT = 5

EVENT_NAME = "LegStateChanged"

# ---- flow limits (ADR 0010): bucket kinds (as the EVM endpoint's); time is ``_clock``
FLOW_OUT, FLOW_IN, FLOW_LARGE_OUT, FLOW_LARGE_IN = 0, 1, 2, 3
UINT128_LIMIT = 2**128
_FLOW_FIELDS = (
    "out_capacity",
    "in_capacity",
    "window",
    "share_bps",
    "large_threshold",
    "large_delay",
)
MAX_FLOW_PERIOD = 30 * 24 * 3600
"""Longest ``window`` / ``large_delay`` (seconds), as the EVM endpoint's: a limit cannot park
a leg for longer, and ``t + large_delay`` stays far inside uint64 (review finding 3)."""

_HEX_WORD = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_SIGNATURE = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_LEDGER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CHAINCODE_NAME = re.compile(r"[a-zA-Z0-9]+(?:[-_][a-zA-Z0-9]+)*")
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}:[0-9a-f]{64}")
"""``<mspid>:<64 hex>``, the MSP id as ``_MSP_ID``: printable ASCII only (SECURITY: the
identity becomes a state key; a lone surrogate or control character in a key cannot be
stored, and on the CometBFT kind would fail every validator's commit)."""

ZERO_WORD = bytes(32)


# ----------------------------------------------------------------------------- errors


class ChaincodeError(Exception):
    """A refused call. ``name`` is the EVM error name (or InvalidArgument & co.)."""

    def __init__(self, name: str, detail: str, figures: Mapping[str, int] | None = None) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail
        self.figures = dict(figures or {})

    # ---- structured errors (ADR 0015)
    def response_message(self) -> str:
        """The error response's message: ``Name: {"reason", "detail", "figures"}`` (JSON).

        The JSON object is the machine-readable part clients decode; ``reason`` always equals
        the name before the colon (the EVM error name), ``figures`` holds the refusal's
        integer arguments by their EVM ABI names.
        """
        body = {"reason": self.name, "detail": self.detail, "figures": self.figures}
        return f"{self.name}: {json.dumps(body, sort_keys=True, separators=(',', ':'))}"


def _invalid(detail: str) -> ChaincodeError:
    return ChaincodeError("InvalidArgument", detail)


# ----------------------------------------------------------------------------- words

# Digests, words and the certificate rule come from the vendored protocol core
# (``kstb_chaincode.core``, generated from ``bridge/core``): one copy of the arithmetic.


def security_word(isin: str) -> bytes:
    """The ISIN as ASCII right-padded with zero bytes, like ``SecurityId.word``."""
    try:
        return _words.security_word(isin)
    except ValueError:
        raise _invalid(f"security id {isin!r} is not a valid ISIN") from None


def parse_holder(text: str) -> bytes:
    """A Fabric holder account ``0x`` + 40 hex (any case) -> its 20 bytes."""
    if not isinstance(text, str) or not _HEX_ADDRESS.fullmatch(text):
        raise _invalid(f"holder {text!r} is not 0x followed by 40 hex digits")
    return bytes.fromhex(text[2:])


def holder_word(address: bytes) -> bytes:
    """12 zero bytes + the 20-byte account id."""
    return bytes(12) + address


_address_of_word = _words.address_of_word


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


# ----------------------------------------------------------------------------- terms


Terms = _digests.Terms
"""``BridgeTypes.Terms`` (the core's): ``transfer_id`` and ``terms_hash`` are properties."""


def terms_to_json(t: Terms) -> dict[str, Any]:
    """The canonical terms JSON object (lowercase hex, decimal amount)."""
    obj: dict[str, Any] = {name: _hex(getattr(t, name)) for name in _WORD_FIELDS}
    obj["amount"] = str(t.amount)
    obj["deadline"] = t.deadline
    return obj


_WORD_FIELDS = WORD_FIELDS
_TERMS_FIELDS = frozenset((*_WORD_FIELDS, "amount", "deadline"))


def _parse_word(name: str, value: object) -> bytes:
    if not isinstance(value, str) or not _HEX_WORD.fullmatch(value):
        raise _invalid(f"{name} must be 0x followed by 64 hex digits")
    return bytes.fromhex(value[2:])


def _parse_decimal(name: str, value: object, limit: int = UINT256_LIMIT) -> int:
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or len(value) > 80:
        raise _invalid(f"{name} must be a decimal string")
    number = int(value)
    if number >= limit:
        raise _invalid(f"{name} must be below 2**{limit.bit_length() - 1}")
    return number


def _loads(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _invalid(f"{name} is not valid JSON") from None


def parse_terms(text: str) -> Terms:
    """Parse the terms JSON argument (see the module docs of ``kstb_chaincode``)."""
    return _terms_from_obj(_loads("terms", text))


def _terms_from_obj(obj: object) -> Terms:
    """Terms from an already decoded JSON value (InvalidArgument unless exactly the keys)."""
    if not isinstance(obj, dict) or set(obj) != _TERMS_FIELDS:
        raise _invalid(f"terms must be an object with exactly the keys {sorted(_TERMS_FIELDS)}")
    words = {f: _parse_word(f, obj[f]) for f in _WORD_FIELDS}
    deadline = obj["deadline"]
    if type(deadline) is not int or not 0 <= deadline < UINT64_LIMIT:
        raise _invalid("deadline must be an integer in uint64 range")
    return Terms(amount=_parse_decimal("amount", obj["amount"]), deadline=deadline, **words)


@dataclass(frozen=True, slots=True)
class Certificate:
    """``BridgeTypes.Certificate`` with the signatures split (each should be 65 bytes).

    ``signatures`` is None when they were not a list of 0x-hex strings: verification then
    fails with MalformedSignatures, after the epoch check, as on the EVM.
    """

    epoch: int
    signatures: tuple[bytes, ...] | None


def parse_certificate(text: str) -> Certificate:
    """``{"epoch": <int>, "signatures": ["0x<130 hex>", ...]}``.

    A certificate that is not such an object, or whose epoch is not a uint64, is an
    InvalidArgument; signatures that are not a list of 0x-hex byte strings fail verification
    with MalformedSignatures (the EVM's error for a blob that does not split into 65-byte
    parts). A listed signature that is not 65 bytes is InvalidSignature(index).
    """
    obj = _loads("certificate", text)
    if not isinstance(obj, dict) or set(obj) != {"epoch", "signatures"}:
        raise _invalid("certificate must be an object with exactly the keys epoch, signatures")
    epoch = obj["epoch"]
    if type(epoch) is not int or not 0 <= epoch < UINT64_LIMIT:
        raise _invalid("certificate epoch must be an integer in uint64 range")
    return Certificate(epoch=epoch, signatures=_parse_signatures(obj["signatures"]))


def _parse_signatures(sigs: Any) -> tuple[bytes, ...] | None:
    """A certificate's signatures: a list of 0x-hex byte strings, else None (which the
    certificate rule refuses MalformedSignatures, the EVM's error for a blob that does not
    split into 65-byte parts)."""
    if not isinstance(sigs, list) or not all(
        isinstance(s, str) and _HEX_SIGNATURE.fullmatch(s) for s in sigs
    ):
        return None
    return tuple(bytes.fromhex(s[2:]) for s in sigs)


def recover_signer(digest: bytes, signature: bytes) -> bytes | None:
    """The 20-byte address that signed ``digest`` (the core's ``ecrecover`` rules), or None.

    None for: not 65 bytes, v not 27/28, r or s out of range, high s (malleable twin),
    or no recoverable public key.
    """
    try:
        return _core_recover(digest, signature)
    except ProtocolError:
        return None


# ----------------------------------------------------------------------------- store


class KeyValue(Protocol):
    """The world state as the protocol sees it."""

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when absent."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Set ``key`` (values are never empty)."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent keys are fine)."""
        ...

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, ascending by key.

        Only queries scan (a range read in a transaction would be re-checked for phantoms at
        commit and conflict with any concurrent insert into the range).
        """
        ...

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        """At most ``limit`` (key, value) with keys starting with ``prefix`` and greater than
        ``after``, ascending. A store may return FEWER than ``limit`` although more exist
        (Fabric's peer caps a range read at ``totalQueryLimit`` without saying so): only an
        EMPTY answer proves there is nothing after ``after`` (``# ---- exact reads``). Only
        ``CountSupply`` calls it, in a transaction of its own: there the phantom re-check
        at commit is what proves the page (and an empty answer) still holds.
        """
        ...


class MemoryStore:
    """A dict-backed :class:`KeyValue` (tests, simulations)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        """Set ``key``."""
        self.data[key] = bytes(value)

    def delete(self, key: str) -> None:
        """Remove ``key``."""
        self.data.pop(key, None)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        """Keys starting with ``prefix``, ascending."""
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        """At most ``limit`` keys starting with ``prefix`` and greater than ``after``."""
        return [kv for kv in self.scan(prefix) if kv[0] > after][:limit]


class _Buffer:
    """Read-your-writes over a backing store; nothing reaches it before :meth:`flush`."""

    def __init__(self, backing: KeyValue) -> None:
        self._backing = backing
        self._writes: dict[str, bytes | None] = {}  # None: deleted
        # ---- batch: each backing key is read once per call (a batch of n items reads the
        # config, committee, security, halt and counter keys n times). Safe: a call sees one
        # snapshot (Fabric's simulator and the CometBFT overlay), so a second read of a key
        # could only return the same value; the read set is the same.
        self._reads: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        if key not in self._reads:
            value = self._backing.get(key)
            self._reads[key] = value if value else None  # Fabric returns b"" for a missing key
        return self._reads[key]

    def put(self, key: str, value: bytes) -> None:
        if not value:
            raise ValueError("empty values are indistinguishable from absent keys")
        self._writes[key] = value

    def delete(self, key: str) -> None:
        self._writes[key] = None

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        merged = dict(self._backing.scan(prefix))
        for key, value in self._writes.items():
            if key.startswith(prefix):
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        return sorted(merged.items())

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        # The only caller (CountSupply) scans a family before it writes any key of it.
        if any(key.startswith(prefix) for key in self._writes):
            raise AssertionError(f"scan_after over buffered writes under {prefix!r}")
        return self._backing.scan_after(prefix, after, limit)

    def flush(self) -> None:
        for key in sorted(self._writes):
            value = self._writes[key]
            if value is None:
                self._backing.delete(key)
            else:
                self._backing.put(key, value)


def canonical_json(value: object) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact separators, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True, slots=True)
class Context:
    """Who calls, and where.

    ``caller`` is ``"<mspid>:<sha256 hex of the certificate PEM>"``. ``chaincode_name``, when
    known from the proposal, is checked against the name given to ``Init``. ``caller_roles``
    are the Fabric NodeOU roles in the caller's certificate (``admin``, ``client``, ...).
    """

    caller: str
    channel_id: str
    chaincode_name: str | None = None
    caller_roles: frozenset[str] = frozenset()
    init_pin: str | None = None
    """SHA-256 hex of the only ``Init`` arguments this chaincode server accepts
    (``KSTB_INIT_PARAMS_SHA256``, set by the organisation that runs it); None: Init refused."""
    tx_time: int | None = None
    """The transaction's timestamp (unix seconds, from the proposal's channel header): the
    ledger time of committee epochs (ADR 0008). The same on every endorser; None: unknown
    (a rule that needs the time then refuses)."""
    local_time: int | None = None
    """This endorsing peer's own clock (unix seconds), only to refuse a ``tx_time`` more than
    ``MAX_TX_SKEW`` away from it; never written anywhere. None: not checked (tests)."""


def identity_of(mspid: str, cert_pem: bytes) -> str:
    """The identity string of a Fabric creator: ``<mspid>:<sha256 hex of its cert PEM>``."""
    return f"{mspid}:{hashlib.sha256(cert_pem).hexdigest()}"


Emit = Callable[[str, bytes], None]


# ----------------------------------------------------------------------------- the endpoint


@dataclass(frozen=True, slots=True)
class _Config:
    ledger_name: str
    chaincode_name: str
    channel_id: str
    ledger_word: bytes
    bridge_word: bytes
    network_word: bytes


@dataclass(frozen=True, slots=True)
class _Committee:
    epoch: int
    threshold: int
    members: tuple[bytes, ...]


@dataclass(slots=True)
class _Holder:
    balance: int = 0
    eligible: bool = False
    frozen: bool = False


@dataclass(slots=True)
class _Leg:
    state: int = 0
    terms_hash: bytes = ZERO_WORD
    amount: int = 0
    security: bytes = ZERO_WORD
    reason: int = 0
    delayed: bool | None = None
    """Stored, never reported (``# ---- fewer state reads``): whether the leg has a
    ``notbefore`` record; None for a leg whose record predates the field."""


def _parse_bool(name: str, text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise _invalid(f"{name} must be 'true' or 'false'")


def _parse_committee(text: str) -> _Committee:
    """The EVM constructor's rules (plus threshold <= n): InvalidCommittee otherwise."""
    obj = _loads("committee", text)
    if not isinstance(obj, dict) or set(obj) != {"epoch", "threshold", "members"}:
        raise ChaincodeError(
            "InvalidCommittee", "expected an object with exactly epoch, threshold, members"
        )
    epoch, threshold, raw = obj["epoch"], obj["threshold"], obj["members"]
    if type(epoch) is not int or not 1 <= epoch < UINT64_LIMIT:
        raise ChaincodeError("InvalidCommittee", "epoch must be an integer in 1..2**64-1")
    if not isinstance(raw, list) or not all(
        isinstance(m, str) and _HEX_ADDRESS.fullmatch(m) for m in raw
    ):
        raise ChaincodeError("InvalidCommittee", "members must be 0x-prefixed 20-byte addresses")
    members = tuple(bytes.fromhex(m[2:]) for m in raw)
    n = len(members)
    if type(threshold) is not int or not 1 <= threshold <= min(n, 255) or 2 * threshold <= n:
        raise ChaincodeError(
            "InvalidCommittee", f"threshold={threshold!r} needs 1 <= t <= n and 2t > n (n={n})"
        )
    previous = bytes(20)
    for i, member in enumerate(members):
        if member <= previous:  # also refuses the zero address
            raise ChaincodeError(
                "InvalidCommittee", f"members must be nonzero and strictly ascending (index={i})"
            )
        previous = member
    return _Committee(epoch, threshold, members)


# ---- admin

_MSP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ADMIN_KINDS = frozenset({"SetRelayer", "SetInstructor", "SetAdmin"})
_PROPOSAL_TAG = "KSTB/fabric-admin-change/v1"


@dataclass(frozen=True, slots=True)
class _Governance:
    issuer: str
    admin_orgs: tuple[str, ...]
    quorum: int
    seq: int


def _parse_governance(text: str, seq: int) -> _Governance:
    """``{"issuer", "admin_orgs", "quorum"}``: InvalidGovernance unless the issuer and the
    admin organisations are MSP ids, the latter strictly ascending, and 1 <= quorum <= n."""
    obj = _loads("governance", text)
    if not isinstance(obj, dict) or set(obj) != {"issuer", "admin_orgs", "quorum"}:
        raise ChaincodeError(
            "InvalidGovernance", "expected an object with exactly issuer, admin_orgs, quorum"
        )
    issuer, orgs, quorum = obj["issuer"], obj["admin_orgs"], obj["quorum"]
    if not isinstance(issuer, str) or not _MSP_ID.fullmatch(issuer):
        raise ChaincodeError("InvalidGovernance", f"issuer {issuer!r} is not an MSP id")
    if (
        not isinstance(orgs, list)
        or not orgs
        or not all(isinstance(o, str) and _MSP_ID.fullmatch(o) for o in orgs)
        or any(a >= b for a, b in pairwise(orgs))
    ):
        raise ChaincodeError(
            "InvalidGovernance", "admin_orgs must be MSP ids, strictly ascending, at least one"
        )
    if type(quorum) is not int or not 1 <= quorum <= len(orgs):
        raise ChaincodeError(
            "InvalidGovernance", f"quorum={quorum!r} needs 1 <= k <= {len(orgs)} admin orgs"
        )
    return _Governance(issuer, tuple(orgs), quorum, seq)


def _governance_json(g: _Governance, with_seq: bool = True) -> dict[str, Any]:
    obj: dict[str, Any] = {"issuer": g.issuer, "admin_orgs": list(g.admin_orgs), "quorum": g.quorum}
    if with_seq:
        obj["seq"] = g.seq
    return obj


def _proposal_id(kind: str, args: Sequence[str], seq: int) -> str:
    """SHA-256 hex over the tag, the governance sequence, the kind and the canonical args."""
    body = canonical_json({"tag": _PROPOSAL_TAG, "seq": seq, "kind": kind, "args": list(args)})
    return hashlib.sha256(body).hexdigest()


# ---- committee rotation

ROTATION_EVENT_NAME = "CommitteeRotated"
MAX_TX_SKEW = 60
"""Largest difference (seconds) an endorser accepts between a transaction's timestamp and its
own clock when a rule reads the time (ADR 0008)."""
_ROTATION_FIELDS = frozenset(
    {"epoch", "next_epoch", "threshold", "members", "activation", "overlap"}
)


def _parse_rotation(text: str) -> dict[str, Any]:
    """``{"epoch", "next_epoch", "threshold", "members", "activation", "overlap"}``: integers
    in their ABI ranges (uint64, threshold uint8) and 0x 20-byte addresses; InvalidArgument
    otherwise. The committee rules themselves (order, zero, 2t > n) are the core's
    (InvalidCommittee), checked in ``rotate_committee`` in the EVM's order."""
    obj = _loads("rotation", text)
    if not isinstance(obj, dict) or set(obj) != _ROTATION_FIELDS:
        raise _invalid(
            f"rotation must be an object with exactly the keys {sorted(_ROTATION_FIELDS)}"
        )
    out: dict[str, Any] = {}
    for name in ("epoch", "next_epoch", "activation", "overlap", "threshold"):
        value = obj[name]
        limit = 256 if name == "threshold" else UINT64_LIMIT
        if type(value) is not int or not 0 <= value < limit:
            raise _invalid(f"rotation {name} must be an integer below {limit}")
        out[name] = value
    raw = obj["members"]
    if not isinstance(raw, list) or not all(
        isinstance(m, str) and _HEX_ADDRESS.fullmatch(m) for m in raw
    ):
        raise _invalid("rotation members must be 0x-prefixed 20-byte addresses")
    out["members"] = [bytes.fromhex(m[2:]) for m in raw]
    return out


class Endpoint:
    """One call's view of the bridge endpoint and its tokens over a (buffered) store."""

    def __init__(self, store: KeyValue, ctx: Context, emit: Emit) -> None:
        self._tally = _Tallying(store)  # ---- exact reads: counters on every write
        self._kv: KeyValue = self._tally
        self._ctx = ctx
        self._emit = emit
        self._cfg: _Config | None = None

    # ------------------------------------------------------------------ storage helpers

    def _get_json(self, key: str) -> Any:
        raw = self._kv.get(key)
        return None if raw is None else json.loads(raw)

    def _put_json(self, key: str, value: object) -> None:
        self._kv.put(key, canonical_json(value))

    def _total_supply(self, sec: bytes) -> int:
        """Like the EVM token's totalSupply: every holder's units plus the bridge escrow and
        the parked units (which the EVM endpoint holds as a balance); from the counters
        (``# ---- exact reads``), SupplyNotCounted before they are complete."""
        return _tally_figures(self._kv, sec)["total_supply"]

    @property
    def cfg(self) -> _Config:
        if self._cfg is None:
            obj = self._get_json("config")
            if obj is None:
                raise ChaincodeError("NotInitialized", "call Init first")
            self._cfg = _Config(
                ledger_name=obj["ledger_name"],
                chaincode_name=obj["chaincode_name"],
                channel_id=obj["channel_id"],
                ledger_word=bytes.fromhex(obj["ledger_word"][2:]),
                bridge_word=bytes.fromhex(obj["bridge_word"][2:]),
                network_word=bytes.fromhex(obj["network_word"][2:]),
            )
        return self._cfg

    def _committee(self) -> _Committee:
        obj = self._get_json("committee")
        return _Committee(
            obj["epoch"], obj["threshold"], tuple(bytes.fromhex(m[2:]) for m in obj["members"])
        )

    def _is_relayer(self, identity: str) -> bool:
        return self._get_json(f"relayer/{identity}") is True

    def _is_instructor(self, address: bytes) -> bool:
        return self._get_json(f"instructor/{address.hex()}") is True

    def _registered(self, sec: bytes) -> dict[str, Any] | None:
        obj = self._get_json(f"security/{sec.hex()}")
        return obj if isinstance(obj, dict) else None

    def _holder(self, sec: bytes, address: bytes) -> _Holder:
        obj = self._get_json(f"holder/{sec.hex()}/{address.hex()}")
        if obj is None:
            return _Holder()
        return _Holder(int(obj["balance"]), bool(obj["eligible"]), bool(obj["frozen"]))

    def _put_holder(self, sec: bytes, address: bytes, h: _Holder) -> None:
        if not 0 <= h.balance < UINT256_LIMIT:
            raise ChaincodeError("Overflow", f"balance of {_hex(address)} outside uint256")
        self._put_json(
            f"holder/{sec.hex()}/{address.hex()}",
            {"balance": str(h.balance), "eligible": h.eligible, "frozen": h.frozen},
        )

    def _leg(self, direction: str, tid: bytes) -> _Leg:
        obj = self._get_json(f"{direction}/{tid.hex()}")
        if obj is None:
            return _Leg()
        delayed = obj.get("delayed")
        return _Leg(
            state=int(obj["state"]),
            terms_hash=bytes.fromhex(obj["terms_hash"][2:]),
            amount=int(obj["amount"]),
            security=bytes.fromhex(obj["security"][2:]),
            reason=int(obj["reason"]),
            delayed=bool(delayed) if delayed is not None else None,
        )

    # ---- fewer state reads (issue 14): a leg this code recorded (``delayed`` is not None)
    # has its index key (escrow while Locked, prepared while Prepared, burned/minted once
    # committed) written in the same call as every change of its state, so the leg's state
    # and amount say what that key holds: the counters' old value is taken from the leg,
    # not read (one state round trip less per key). A leg recorded by an earlier version
    # (``delayed`` None) has its keys read as before.

    def _index_put_new(self, leg: _Leg, key: str, value: bytes) -> None:
        """Write the index key of ``leg``'s new state, which it never had (absent)."""
        if leg.delayed is None:
            self._kv.put(key, value)
        else:
            self._tally.put_known(key, value, None)

    def _index_delete(self, leg: _Leg, key: str) -> None:
        """Delete the index key of ``leg``'s current state, which holds ``leg.amount``."""
        if leg.delayed is None:
            self._kv.delete(key)
        else:
            self._tally.delete_known(key, str(leg.amount).encode())

    def _put_leg(self, direction: str, tid: bytes, leg: _Leg, terms: Terms | None = None) -> None:
        record = _leg_json(leg)
        stored = record if leg.delayed is None else {**record, "delayed": leg.delayed}
        self._put_json(f"{direction}/{tid.hex()}", stored)
        event: dict[str, Any] = {
            **record,
            "transfer_id": _hex(tid),
            "leg": LEG_OUT if direction == "out" else LEG_IN,
        }
        if terms is not None:
            event["terms"] = terms_to_json(terms)
        self._emit(EVENT_NAME, canonical_json(event))

    # ------------------------------------------------------------------ guards

    def _require_init(self) -> None:
        """NotInitialized before anything else."""
        _ = self.cfg

    def _only_admin(self) -> None:
        """The issuer's administration (tokens, holders, parking): see ``_only_issuer``."""
        self._only_issuer()

    def _only_relayer(self) -> None:
        self._require_init()
        if not self._is_relayer(self._ctx.caller):
            raise ChaincodeError("NotRelayer", f"caller={self._ctx.caller}")

    def _is_source(self, t: Terms) -> bool:
        return t.src_ledger == self.cfg.ledger_word and t.src_bridge == self.cfg.bridge_word

    def _is_target(self, t: Terms) -> bool:
        return t.dst_ledger == self.cfg.ledger_word and t.dst_bridge == self.cfg.bridge_word

    def _token(self, sec: bytes) -> dict[str, Any]:
        token = self._registered(sec)
        if token is None:
            raise ChaincodeError("UnknownSecurity", f"securityId={_hex(sec)}")
        return token

    def _require_compliant(self, address: bytes, h: _Holder) -> None:
        if not h.eligible:
            raise ChaincodeError("HolderNotEligible", f"holder={_hex(address)}")
        if h.frozen:
            raise ChaincodeError("HolderFrozen", f"holder={_hex(address)}")

    @staticmethod
    def _require_nonzero(amount: int) -> None:
        if amount == 0:
            raise ChaincodeError("ZeroAmount", "amount=0")

    @staticmethod
    def _require_balance(address: bytes, h: _Holder, amount: int) -> None:
        if h.balance < amount:
            raise ChaincodeError(
                "InsufficientBalance",
                f"holder={_hex(address)}, balance={h.balance}, needed={amount}",
            )

    def _verify_certificate(self, cert: Certificate, kind: int, tid: bytes, thash: bytes) -> None:
        """``BridgeEndpoint._verifyCertificate``: the epoch must verify now (the core's
        ``epochs.verifying_epoch``), then the core's acceptance rule, in its order."""
        cfg = self.cfg
        try:
            committee = self._verifying_epoch(cert.epoch)
            digest = claim_digest(
                cfg.network_word,
                cfg.ledger_word,
                cfg.bridge_word,
                committee.epoch,
                kind,
                tid,
                thash,
            )
            check_certificate(
                digest,
                cert.epoch,
                committee.epoch,
                committee.threshold,
                committee.members,
                cert.signatures,
            )
        except ProtocolError as exc:
            raise ChaincodeError(exc.reason.value, exc.detail) from None

    def _receive_check(self, t: Terms) -> int:
        token = self._registered(t.security)
        if token is None:
            return REASON_UNKNOWN_SECURITY
        recipient = _address_of_word(t.recipient)
        if recipient is None:
            return REASON_INVALID_RECIPIENT
        return self._receive_status(t.security, token, recipient)

    def _receive_status(self, sec: bytes, token: Mapping[str, Any], address: bytes) -> int:
        """``SecurityToken.receiveStatus``: paused, then eligibility, then freeze."""
        if token["paused"]:
            return RECEIVE_PAUSED
        h = self._holder(sec, address)
        if not h.eligible:
            return RECEIVE_NOT_ELIGIBLE
        if h.frozen:
            return RECEIVE_FROZEN
        return RECEIVE_OK

    # ------------------------------------------------------------------ administration

    def init(
        self,
        ledger_name: str,
        chaincode_name: str,
        committee_json: str,
        network_hex: str,
        governance_json: str,
    ) -> object:
        """Configure the endpoint once; ``governance_json`` (pinned) names who administers it.

        ``governance_json`` is ``{"issuer": <MSP id>, "admin_orgs": [<MSP id>, ...],
        "quorum": k}`` (admin organisations strictly ascending, 1 <= k <= their number): an
        admin (NodeOU ``admin``) of the issuer organisation administers the tokens; relayers,
        instruction keys and the governance itself change only with k admin organisations'
        approvals (see ``# ---- admin``). Admins are bound to an organisation and a role, not
        to a certificate, so a renewed admin certificate keeps working.

        SECURITY: the arguments (ledger, chaincode name, committee, network word = the
        channel's genesis block hash, and the governance) must hash to the pin this chaincode
        server was started with (``Context.init_pin``). Every organisation runs its own server
        with its own pin and the endorsement policy needs all of them, so no single
        organisation's admin can initialise the endpoint with a committee, network or
        governance of its own choosing. The caller must hold the NodeOU ``admin`` role of an
        organisation the pinned governance names (issuer or admin organisation; NotAdmin
        otherwise). Only once.
        """
        if self._kv.get("config") is not None:
            raise ChaincodeError("AlreadyInitialized", f"ledger={self.cfg.ledger_name}")
        if "admin" not in self._ctx.caller_roles:
            raise ChaincodeError("NotAdmin", "Init needs an organisation admin certificate")
        pin = self._ctx.init_pin
        if pin is None:
            raise ChaincodeError(
                "WrongInitParameters", "this chaincode server has no pinned Init parameters"
            )
        digest = init_parameters_digest(
            [ledger_name, chaincode_name, committee_json, network_hex, governance_json]
        )
        if digest != pin:
            raise ChaincodeError("WrongInitParameters", f"sha256={digest}, pinned={pin} (refused)")
        governance = _parse_governance(governance_json, seq=0)
        if self._caller_msp() not in (governance.issuer, *governance.admin_orgs):
            raise ChaincodeError(
                "NotAdmin", f"caller={self._ctx.caller} is no admin of a pinned organisation"
            )
        network = _parse_word("network", network_hex)
        if not any(network):
            raise _invalid("network word must not be zero")
        if not _LEDGER_NAME.fullmatch(ledger_name):
            raise _invalid(f"ledger name {ledger_name!r}: 1-63 lowercase letters, digits or '-'")
        if not _CHAINCODE_NAME.fullmatch(chaincode_name):
            raise _invalid(f"chaincode name {chaincode_name!r} is not a Fabric chaincode name")
        known = self._ctx.chaincode_name
        if known is not None and known != chaincode_name:
            raise _invalid(f"this chaincode is invoked as {known!r}, not {chaincode_name!r}")
        if not self._ctx.channel_id:
            raise _invalid("no channel id")
        committee = _parse_committee(committee_json)
        config = {
            "ledger_name": ledger_name,
            "chaincode_name": chaincode_name,
            "channel_id": self._ctx.channel_id,
            "ledger_word": _hex(ledger_word(ledger_name)),
            "bridge_word": _hex(bridge_word(self._ctx.channel_id, chaincode_name)),
            "network_word": _hex(network),
        }
        self._put_json("config", config)
        self._put_json("committee", _committee_json(committee))
        self._put_json("governance", _governance_json(governance))
        return self.info()

    def set_relayer(self, identity: str, enabled: str) -> object:
        """Approve enabling or disabling a relayer identity (``<mspid>:<sha256 hex>``).

        An admin change (``# ---- admin``): applies once k admin organisations approved it.
        """
        return self._admin_change("SetRelayer", [identity, enabled])

    def _apply_set_relayer(self, identity: str, enabled: str) -> dict[str, Any]:
        on = _parse_bool("enabled", enabled)
        self._put_json(f"relayer/{identity}", on)
        return {"identity": identity, "enabled": on}

    def set_instructor(self, address: str, enabled: str) -> object:
        """Approve registering (or removing) a brokerage instruction key, a 0x EVM address.

        An admin change (``# ---- admin``): applies once k admin organisations approved it.

        SECURITY: ``Lock`` accepts only instructions by a key registered here at the time of
        the lock (UnknownInstructor otherwise), so a relayer cannot name its own key as the
        instructor and escrow a holder's units towards a ledger no member knows.
        """
        return self._admin_change("SetInstructor", [address, enabled])

    def _apply_set_instructor(self, address: str, enabled: str) -> dict[str, Any]:
        on = _parse_bool("enabled", enabled)
        key = bytes.fromhex(address[2:])
        self._put_json(f"instructor/{key.hex()}", on)
        return {"instructor": _hex(key), "enabled": on}

    def register_security(self, isin: str) -> object:
        """Register a security once (its token lives in this chaincode)."""
        self._only_admin()
        sec = security_word(isin)
        if self._registered(sec) is not None:
            raise ChaincodeError("SecurityAlreadyRegistered", f"securityId={_hex(sec)}")
        self._put_json(f"security/{sec.hex()}", {"isin": isin, "paused": False})
        self._put_json(_tally_state_key(sec.hex()), {"done": True})  # ---- exact reads
        return {"isin": isin, "security": _hex(sec)}

    def _admin_holder(self, isin: str, holder: str) -> tuple[bytes, dict[str, Any], bytes]:
        self._only_admin()
        sec = security_word(isin)
        address = parse_holder(holder)
        token = self._token(sec)
        if not any(address):
            raise ChaincodeError("ZeroAddress", "holder=0x" + "00" * 20)
        return sec, token, address

    def set_eligible(self, isin: str, holder: str, value: str) -> object:
        """Add a holder to (or remove it from) the security's eligibility list."""
        sec, _, address = self._admin_holder(isin, holder)
        on = _parse_bool("eligible", value)
        h = self._holder(sec, address)
        h.eligible = on
        self._put_holder(sec, address, h)
        return self.holder_status(isin, holder)

    def set_frozen(self, isin: str, holder: str, value: str) -> object:
        """Freeze (or unfreeze) a holder of the security."""
        sec, _, address = self._admin_holder(isin, holder)
        on = _parse_bool("frozen", value)
        h = self._holder(sec, address)
        h.frozen = on
        self._put_holder(sec, address, h)
        return self.holder_status(isin, holder)

    def set_paused(self, isin: str, value: str) -> object:
        """Pause (or unpause) the security: no issue, no lock; prepares are rejected (4)."""
        self._only_admin()
        sec = security_word(isin)
        token = self._token(sec)
        token["paused"] = _parse_bool("paused", value)
        self._put_json(f"security/{sec.hex()}", token)
        return {"isin": isin, "paused": token["paused"]}

    def issue(self, isin: str, holder: str, amount_text: str) -> object:
        """``SecurityToken.issue``: not paused, holder eligible and not frozen."""
        sec, token, address = self._admin_holder(isin, holder)
        amount = _parse_decimal("amount", amount_text)
        self._require_nonzero(amount)
        if token["paused"]:
            raise ChaincodeError("TokenPaused", f"securityId={_hex(sec)}")
        h = self._holder(sec, address)
        self._require_compliant(address, h)
        h.balance += amount
        self._put_holder(sec, address, h)
        return self.holder_status(isin, holder)

    def redeem(self, isin: str, holder: str, amount_text: str) -> object:
        """``SecurityToken.redeem``: no compliance checks; never touches the bridge escrow."""
        sec, _, address = self._admin_holder(isin, holder)
        amount = _parse_decimal("amount", amount_text)
        self._require_nonzero(amount)
        h = self._holder(sec, address)
        self._require_balance(address, h, amount)
        h.balance -= amount
        self._put_holder(sec, address, h)
        return self.holder_status(isin, holder)

    # ------------------------------------------------------------------ source side

    def lock(self, terms_json: str, instruction_hex: str) -> object:
        """``BridgeEndpoint.lock`` (relayer only).

        SECURITY: as the EVM endpoint, DeadlinePassed once the ledger time (``_clock``: the
        proposal timestamp, which every organisation's server keeps within MAX_TX_SKEW of
        its own clock) has reached the terms' deadline, so an instruction authorises a lock
        only until the deadline its brokerage signed. On Fabric this bounds the endorsement
        (by the deadline plus the skew), not the ordering: an envelope endorsed in time and
        held back still commits later unless a key it read changed (ADR 0008's residual).
        CometBFT runs this at inclusion, by the block time.

        SECURITY: the lock carries the brokerage's instruction, a signature by
        ``t.instructor`` over ``instruction_digest(network, termsHash)``, and
        ``t.instructor`` must be a key the admin registered (``SetInstructor``); without it
        (MissingInstruction), for an unregistered key (UnknownInstructor) or with any other
        signature (InvalidInstruction) nothing is escrowed, so a relayer alone cannot move a
        holder's units.
        """
        self._only_relayer()
        t = parse_terms(terms_json)
        if not isinstance(instruction_hex, str) or not _HEX_SIGNATURE.fullmatch(instruction_hex):
            raise _invalid("instruction must be 0x-prefixed hex")
        return self._lock_terms(t, bytes.fromhex(instruction_hex[2:]))

    def _lock_terms(self, t: Terms, instruction: bytes) -> object:
        """``lock`` after parsing (the relayer is checked): every check, then the escrow."""
        if not instruction:
            raise ChaincodeError("MissingInstruction", "the lock carries no instruction")
        instructor = _address_of_word(t.instructor)
        # SECURITY: only a brokerage key the admin registered instructs a lock (Fabric
        # holders do not instruct their own locks: the committee's rule, is_instructed).
        if instructor is None or not self._is_instructor(instructor):
            raise ChaincodeError("UnknownInstructor", f"instructor={_hex(t.instructor)}")
        try:
            check_instruction(
                instruction_digest(self.cfg.network_word, t.terms_hash),
                t.instructor,
                instruction,
            )
        except ProtocolError as exc:
            raise ChaincodeError(exc.reason.value, exc.detail) from None
        if not self._is_source(t) or t.dst_ledger == self.cfg.ledger_word:
            raise ChaincodeError("WrongLedger", "terms do not name this endpoint as source")
        self._require_nonzero(t.amount)
        now = self._clock()
        if t.deadline <= now:
            raise ChaincodeError(
                "DeadlinePassed",
                f"deadline={t.deadline}, nowTs={now}",
                {"deadline": t.deadline, "nowTs": now},
            )
        sender = _address_of_word(t.sender)
        if sender is None:
            raise ChaincodeError("InvalidSender", f"sender={_hex(t.sender)}")
        token = self._token(t.security)
        tid = t.transfer_id
        self._require_not_halted(t.security)  # ---- depository halt
        if self._leg("out", tid).state != OUT_NONE:
            raise ChaincodeError("TransferExists", f"transferId={_hex(tid)}")
        delayed = self._flow_take(t.security, t.dst_ledger, tid, t.amount, FLOW_OUT)
        # SecurityToken.bridgeEscrow
        if token["paused"]:
            raise ChaincodeError("TokenPaused", f"securityId={_hex(t.security)}")
        h = self._holder(t.security, sender)
        self._require_compliant(sender, h)
        self._require_balance(sender, h, t.amount)
        h.balance -= t.amount
        self._put_holder(t.security, sender, h)
        # A new leg (it was NONE: no record), so its escrow key is absent: not read.
        self._tally.put_known(
            f"escrow/{t.security.hex()}/{tid.hex()}", str(t.amount).encode(), None
        )
        leg = _Leg(OUT_LOCKED, t.terms_hash, t.amount, t.security, delayed=delayed)
        self._put_leg("out", tid, leg, terms=t)
        return {"transfer_id": _hex(tid), **_leg_json(leg)}

    def commit(self, terms_json: str, cert_json: str) -> object:
        """COMMIT: outbound Locked -> Burned, inbound Prepared -> Minted."""
        self._only_relayer()
        t = parse_terms(terms_json)
        cert = parse_certificate(cert_json)
        tid, thash = t.transfer_id, t.terms_hash
        self._verify_certificate(cert, CLAIM_COMMIT, tid, thash)
        return self._commit_terms(t)

    def _commit_terms(self, t: Terms) -> object:
        """``commit`` after its certificate was accepted for ``t``'s COMMIT claim."""
        tid, thash = t.transfer_id, t.terms_hash
        sec = t.security
        if self._is_source(t):
            leg = self._leg("out", tid)
            self._require_state(tid, leg, OUT_LOCKED)
            self._require_hash(tid, leg, thash)
            self._require_delay_over(tid, "out", leg)
            leg.state = OUT_BURNED
            sec = leg.security
            escrow, burned = f"escrow/{sec.hex()}/{tid.hex()}", f"burned/{sec.hex()}/{tid.hex()}"
            self._index_delete(leg, escrow)  # burned
            # The cumulative burned_out term of Supply: one key per transfer, never a counter.
            self._index_put_new(leg, burned, str(leg.amount).encode())
            self._put_leg("out", tid, leg)
        elif self._is_target(t):
            leg = self._leg("in", tid)
            self._require_state(tid, leg, IN_PREPARED)
            self._require_hash(tid, leg, thash)
            self._require_not_halted(leg.security)  # ---- depository halt: the mint waits
            # review finding 9: TooEarly before the pause, as on EVM (bridgeMint comes last)
            self._require_delay_over(tid, "in", leg)
            self._require_not_paused(leg.security)  # ---- depository halt: bridgeMint
            leg.state = IN_MINTED
            sec = leg.security
            self._flow_credit(sec, t.src_ledger, FLOW_OUT, leg.amount)  # inbound offsets outbound
            self._index_delete(leg, f"prepared/{sec.hex()}/{tid.hex()}")
            # The cumulative minted_in term of Supply: one key per transfer, never a counter.
            self._index_put_new(leg, f"minted/{sec.hex()}/{tid.hex()}", str(leg.amount).encode())
            # bridgeMint (the pause is checked above); recipient validated at prepare, its
            # eligibility and freeze re-checked below (parking).
            recipient = _address_of_word(t.recipient)
            assert recipient is not None  # Prepared implies a valid recipient
            h = self._holder(sec, recipient)
            # SECURITY: COMMIT is final and never fails here; a recipient frozen or made
            # ineligible since prepare is not paid, the units are parked (``# ---- parking``).
            if not self._park_if_refused(tid, leg, h):
                h.balance += leg.amount
                self._put_holder(sec, recipient, h)
            self._put_leg("in", tid, leg)
        else:
            raise ChaincodeError("WrongLedger", "terms do not involve this endpoint")
        return {"transfer_id": _hex(tid), **_leg_json(leg)}

    def abort(self, terms_json: str, cert_json: str) -> object:
        """ABORT: outbound Locked -> Released; inbound Prepared|Rejected|Expired|None -> Aborted."""
        self._only_relayer()
        t = parse_terms(terms_json)
        cert = parse_certificate(cert_json)
        tid, thash = t.transfer_id, t.terms_hash
        self._verify_certificate(cert, CLAIM_ABORT, tid, thash)
        return self._abort_terms(t)

    def _abort_terms(self, t: Terms) -> object:
        """``abort`` after its certificate was accepted for ``t``'s ABORT claim."""
        tid, thash = t.transfer_id, t.terms_hash
        if self._is_source(t):
            leg = self._leg("out", tid)
            self._require_state(tid, leg, OUT_LOCKED)
            self._require_hash(tid, leg, thash)
            self._require_not_paused(leg.security)  # ---- depository halt: bridgeRelease
            leg.state = OUT_RELEASED
            sec = leg.security
            self._flow_credit(sec, t.dst_ledger, FLOW_OUT, leg.amount)  # never left
            self._index_delete(leg, f"escrow/{sec.hex()}/{tid.hex()}")
            sender = _address_of_word(t.sender)
            assert sender is not None  # validated at lock
            # bridgeRelease: no eligibility/freeze checks (only the pause, checked above).
            h = self._holder(sec, sender)
            h.balance += leg.amount
            self._put_holder(sec, sender, h)
            self._put_leg("out", tid, leg)
        elif self._is_target(t):
            leg = self._leg("in", tid)
            if leg.state in (IN_MINTED, IN_ABORTED):
                raise ChaincodeError("BadState", f"transferId={_hex(tid)}, state={leg.state}")
            if leg.state == IN_NONE:  # a tombstone: a late prepare can no longer succeed
                leg.terms_hash, leg.amount, leg.security = thash, t.amount, t.security
                leg.delayed = False
            else:
                self._require_hash(tid, leg, thash)
            if leg.state == IN_PREPARED:
                self._index_delete(leg, f"prepared/{leg.security.hex()}/{tid.hex()}")
                self._flow_credit(leg.security, t.src_ledger, FLOW_IN, leg.amount)
            leg.state = IN_ABORTED
            self._put_leg("in", tid, leg)
        else:
            raise ChaincodeError("WrongLedger", "terms do not involve this endpoint")
        return {"transfer_id": _hex(tid), **_leg_json(leg)}

    @staticmethod
    def _require_state(tid: bytes, leg: _Leg, state: int) -> None:
        if leg.state != state:
            raise ChaincodeError("BadState", f"transferId={_hex(tid)}, state={leg.state}")

    @staticmethod
    def _require_hash(tid: bytes, leg: _Leg, thash: bytes) -> None:
        if leg.terms_hash != thash:
            raise ChaincodeError("TermsMismatch", f"transferId={_hex(tid)}")

    # ------------------------------------------------------------------ target side

    def _inbound_start(
        self, terms_json: str, cert_json: str, zero_check: bool
    ) -> tuple[Terms, bytes, _Leg]:
        self._only_relayer()
        t = parse_terms(terms_json)
        cert = parse_certificate(cert_json)
        if not self._is_target(t):
            raise ChaincodeError("WrongLedger", "terms do not name this endpoint as target")
        if zero_check:
            self._require_nonzero(t.amount)
        tid = t.transfer_id
        leg = self._leg("in", tid)
        self._require_state(tid, leg, IN_NONE)
        self._verify_certificate(cert, CLAIM_LOCKED, tid, t.terms_hash)
        return t, tid, leg

    def prepare(self, terms_json: str, cert_json: str) -> object:
        """LOCKED certificate -> Prepared, or Rejected(reason) (a recorded outcome, no error)."""
        t, tid, leg = self._inbound_start(terms_json, cert_json, zero_check=True)
        return self._prepare_terms(t, tid, leg)

    def _prepare_terms(self, t: Terms, tid: bytes, leg: _Leg) -> object:
        """``prepare`` after the target, amount, NONE state and LOCKED certificate checks."""
        self._require_not_halted(t.security)  # ---- depository halt: refused, not Rejected
        reason = self._receive_check(t)
        leg.terms_hash, leg.amount, leg.security, leg.reason = (
            t.terms_hash,
            t.amount,
            t.security,
            reason,
        )
        leg.delayed = False
        if reason == 0:
            leg.delayed = self._flow_take(t.security, t.src_ledger, tid, t.amount, FLOW_IN)
            leg.state = IN_PREPARED
            # A new leg (it was NONE: no record), so its prepared key is absent: not read.
            self._tally.put_known(
                f"prepared/{t.security.hex()}/{tid.hex()}", str(t.amount).encode(), None
            )
        else:
            leg.state = IN_REJECTED
        self._put_leg("in", tid, leg)
        return {"transfer_id": _hex(tid), **_leg_json(leg)}

    def mark_expired(self, terms_json: str, cert_json: str) -> object:
        """LOCKED certificate, no inbound record, deadline passed -> Expired.

        SECURITY (review finding 8): as the EVM endpoint, NotExpired while the ledger time
        (``_clock``: the proposal timestamp, which every organisation's server keeps within
        MAX_TX_SKEW of its own clock) is at or before the deadline, so a relayer cannot end
        a waiting transfer early (by at most the skew). Whichever of Prepare and MarkExpired
        is ordered first wins, the other fails with BadState; verifiers certify ABORT only
        from a finalized Expired/Rejected/Aborted.
        """
        t, tid, leg = self._inbound_start(terms_json, cert_json, zero_check=False)
        now = self._clock()
        if now <= t.deadline:
            raise ChaincodeError("NotExpired", f"deadline={t.deadline}, nowTs={now}")
        leg.terms_hash, leg.amount, leg.security = t.terms_hash, t.amount, t.security
        leg.state, leg.delayed = IN_EXPIRED, False
        self._put_leg("in", tid, leg)
        return {"transfer_id": _hex(tid), **_leg_json(leg)}

    # ---- admin
    # Admins are organisations, not certificates: an admin is a caller holding the NodeOU
    # ``admin`` role of an organisation the governance names. The issuer organisation's
    # admins administer the tokens alone (registration, issue, redeem, eligibility, freeze,
    # pause, parked units: the issuer's own business). Relayers, instruction keys and the
    # governance itself are the consortium's trust roots: a change applies only when admins
    # of k distinct admin organisations approved the same proposal, bound to the governance
    # sequence number, so any applied change makes every open proposal stale.

    def _governance(self) -> _Governance:
        obj = self._get_json("governance")
        return _Governance(obj["issuer"], tuple(obj["admin_orgs"]), obj["quorum"], obj["seq"])

    def _caller_msp(self) -> str:
        """The MSP id of the caller (the identity is ``<mspid>:<sha256 hex>``)."""
        return self._ctx.caller.partition(":")[0]

    def _is_org_admin(self) -> bool:
        return "admin" in self._ctx.caller_roles

    def _only_issuer(self) -> None:
        """NotAdmin unless the caller is an admin (NodeOU role) of the issuer organisation."""
        self._require_init()
        issuer = self._governance().issuer
        if not self._is_org_admin() or self._caller_msp() != issuer:
            raise ChaincodeError("NotAdmin", f"caller={self._ctx.caller}")

    def _only_admin_org(self, g: _Governance) -> str:
        """The caller's organisation; NotAdmin unless it is an admin of an admin organisation."""
        msp = self._caller_msp()
        if not self._is_org_admin() or msp not in g.admin_orgs:
            raise ChaincodeError("NotAdmin", f"caller={self._ctx.caller}")
        return msp

    def _check_change(self, kind: str, args: Sequence[str]) -> list[str]:
        """The canonical arguments of an admin change; InvalidArgument & co. when malformed."""
        if kind not in _ADMIN_KINDS:
            raise _invalid(f"admin change kind {kind!r} is not one of {sorted(_ADMIN_KINDS)}")
        if len(args) != 2 - (kind == "SetAdmin") or not all(isinstance(a, str) for a in args):
            raise _invalid(f"{kind} takes {2 - (kind == 'SetAdmin')} string arguments")
        if kind == "SetRelayer":
            _parse_bool("enabled", args[1])
            if not _IDENTITY.fullmatch(args[0]):
                raise _invalid(f"identity {args[0]!r} is not '<mspid>:<64 lowercase hex>'")
            return list(args)
        if kind == "SetInstructor":
            _parse_bool("enabled", args[1])
            if not _HEX_ADDRESS.fullmatch(args[0]):
                raise _invalid(f"instructor {args[0]!r} is not a 0x-prefixed 20-byte address")
            if not any(bytes.fromhex(args[0][2:])):
                raise ChaincodeError("ZeroAddress", "instructor=0x" + "00" * 20)
            return [args[0].lower(), args[1]]
        g = _parse_governance(args[0], seq=0)
        return [canonical_json(_governance_json(g, with_seq=False)).decode()]

    def _admin_change(self, kind: str, args: Sequence[str]) -> dict[str, Any]:
        """Record the caller's organisation's approval of (kind, args) and apply the change
        when k distinct organisations approved it.

        Guarantees: the caller is an admin of an admin organisation (NotAdmin); the arguments
        are valid before anything is recorded; an organisation approves a proposal once
        (AlreadyApproved); the proposal id binds the kind, the canonical arguments and the
        governance sequence number, so other arguments are another proposal and an applied
        change leaves no half-approved proposal that could still apply.
        """
        self._require_init()
        g = self._governance()
        msp = self._only_admin_org(g)
        canonical = self._check_change(kind, args)
        pid = _proposal_id(kind, canonical, g.seq)
        record = self._get_json(f"proposal/{pid}") or {
            "kind": kind,
            "args": canonical,
            "seq": g.seq,
            "approvals": [],
        }
        return self._approve(pid, record, msp, g)

    def _approve(
        self, pid: str, record: dict[str, Any], msp: str, g: _Governance
    ) -> dict[str, Any]:
        approvals: list[str] = record["approvals"]
        if msp in approvals:
            raise ChaincodeError("AlreadyApproved", f"proposal={pid}, org={msp}")
        approvals = sorted([*approvals, msp])
        kind, args = record["kind"], record["args"]
        out: dict[str, Any] = {
            "proposal": pid,
            "kind": kind,
            "args": args,
            "approvals": approvals,
            "quorum": g.quorum,
        }
        if len(approvals) < g.quorum:
            self._put_json(f"proposal/{pid}", {**record, "approvals": approvals})
            return {**out, "applied": False}
        self._kv.delete(f"proposal/{pid}")
        if kind == "SetRelayer":
            result = self._apply_set_relayer(*args)
        elif kind == "SetInstructor":
            result = self._apply_set_instructor(*args)
        else:
            new = _parse_governance(args[0], seq=g.seq + 1)
            self._put_json("governance", _governance_json(new))
            result = {"governance": _governance_json(new)}
        if kind != "SetAdmin":
            self._put_json("governance", _governance_json(dataclass_replace(g, seq=g.seq + 1)))
        return {**out, **result, "applied": True}

    def set_admin(self, governance_json: str) -> object:
        """Approve replacing the governance (issuer, admin organisations, quorum k): an admin
        change (k approvals of the current admin organisations)."""
        return self._admin_change("SetAdmin", [governance_json])

    def propose_admin_change(self, kind: str, args_json: str) -> object:
        """Approve the admin change ``kind`` (SetRelayer, SetInstructor, SetAdmin) with the
        JSON list of string arguments ``args_json``; the same as calling ``kind`` itself."""
        args = _loads("args", args_json)
        if not isinstance(args, list):
            raise _invalid("args must be a JSON list of strings")
        return self._admin_change(kind, args)

    def approve_admin_change(self, pid: str) -> object:
        """Approve the open proposal ``pid`` (the id a proposing call returned).

        UnknownProposal when there is none (never proposed, or already applied);
        StaleProposal when a change was applied since it was proposed (its approvals no
        longer count: propose again).
        """
        self._require_init()
        g = self._governance()
        msp = self._only_admin_org(g)
        if not isinstance(pid, str) or not re.fullmatch(r"[0-9a-f]{64}", pid):
            raise _invalid("proposal id must be 64 lowercase hex digits")
        record = self._get_json(f"proposal/{pid}")
        if record is None:
            raise ChaincodeError("UnknownProposal", f"proposal={pid}")
        if record["seq"] != g.seq:
            raise ChaincodeError(
                "StaleProposal", f"proposal={pid}, seq={record['seq']}, current={g.seq}"
            )
        return self._approve(pid, record, msp, g)

    def proposal(self, pid: str) -> object:
        """An open proposal: kind, args, seq, approvals, and whether it is stale."""
        self._require_init()
        record = self._get_json(f"proposal/{pid}")
        if record is None:
            raise ChaincodeError("UnknownProposal", f"proposal={pid}")
        return {**record, "proposal": pid, "stale": record["seq"] != self._governance().seq}

    # ---- parking
    # A recipient frozen or made ineligible after its leg was prepared is not paid at commit:
    # the units are recorded under ``parked/<security>/<transfer id>`` (part of the total
    # supply, not escrow) and the Minted leg's reason says why (2 not eligible, 3 frozen). A
    # pause is not a verdict on the recipient and does not park. Only an issuer admin can
    # deliver parked units, to a holder who may receive them now.

    def _park_if_refused(self, tid: bytes, leg: _Leg, h: _Holder) -> bool:
        """Park the Minted leg's units when the recipient ``h`` may not receive; True if so."""
        if h.eligible and not h.frozen:
            return False
        leg.reason = RECEIVE_NOT_ELIGIBLE if not h.eligible else RECEIVE_FROZEN
        self._kv.put(f"parked/{leg.security.hex()}/{tid.hex()}", str(leg.amount).encode())
        return True

    def parked(self, tid_hex: str) -> object:
        """Units parked by transfer ``tid`` and not yet released (``"0"`` when none)."""
        tid = _parse_word("transfer_id", tid_hex)
        self._require_init()
        leg = self._leg("in", tid)
        raw = self._kv.get(f"parked/{leg.security.hex()}/{tid.hex()}") if leg.state else None
        return {
            "transfer_id": _hex(tid),
            "security": _hex(leg.security),
            "amount": raw.decode() if raw else "0",
            "reason": leg.reason if leg.state == IN_MINTED else 0,
        }

    def release_parked(self, tid_hex: str, holder: str) -> object:
        """``BridgeEndpoint.releaseParked``: deliver transfer ``tid``'s parked units to
        ``holder``. Guarantees: an issuer admin (NotAdmin); units parked for the transfer
        (NotParked: also after a release, so never twice); ``holder`` may receive now
        (RecipientRefused with its receive status otherwise). Checked in the EVM endpoint's
        order (review finding 9): NotParked, then the admin, then the holder."""
        tid = _parse_word("transfer_id", tid_hex)
        address = parse_holder(holder)
        self._require_init()
        leg = self._leg("in", tid)
        key = f"parked/{leg.security.hex()}/{tid.hex()}"
        raw = self._kv.get(key) if leg.state == IN_MINTED else None
        if raw is None:
            raise ChaincodeError("NotParked", f"transferId={_hex(tid)}")
        self._only_issuer()
        token = self._token(leg.security)
        status = (
            REASON_INVALID_RECIPIENT
            if not any(address)
            else self._receive_status(leg.security, token, address)
        )
        if status != RECEIVE_OK:
            raise ChaincodeError("RecipientRefused", f"to={_hex(address)}, status={status}")
        amount = int(raw)
        self._kv.delete(key)
        h = self._holder(leg.security, address)
        h.balance += amount
        self._put_holder(leg.security, address, h)
        return {"transfer_id": _hex(tid), "to": _hex(address), "amount": str(amount)}

    # ------------------------------------------------------------------ queries

    def get_leg(self, tid_hex: str, direction: str) -> object:
        """A leg record: ``{"state", "terms_hash", "amount", "security", "reason"}``."""
        tid = _parse_word("transfer_id", tid_hex)
        if direction not in ("outbound", "inbound"):
            raise _invalid("leg must be 'outbound' or 'inbound'")
        self._require_init()
        return _leg_json(self._leg("out" if direction == "outbound" else "in", tid))

    def holder_status(self, isin: str, holder: str) -> object:
        """A holder's standing: registered, balance, receive_status, eligible, frozen, paused."""
        self._require_init()
        sec = security_word(isin)
        address = parse_holder(holder)
        return self._holder_record(sec, self._registered(sec), address)

    def _holder_record(
        self, sec: bytes, token: Mapping[str, Any] | None, address: bytes
    ) -> dict[str, Any]:
        h = self._holder(sec, address)
        if token is None:
            status = REASON_UNKNOWN_SECURITY
        elif not any(address):
            status = REASON_INVALID_RECIPIENT
        else:
            status = self._receive_status(sec, token, address)
        return {
            "registered": token is not None,
            "balance": str(h.balance),
            "receive_status": status,
            "eligible": h.eligible,
            "frozen": h.frozen,
            "paused": bool(token and token["paused"]),
        }

    def supply(self, isin: str) -> object:
        """``BridgeEndpoint.supplyOf``: the supply figures of a registered security.

        ``{"total_supply", "escrowed", "prepared", "burned_out", "minted_in"}`` as decimal
        strings; ``burned_out``/``minted_in`` are cumulative (everything ever burned by a
        committed outbound leg / minted by a committed inbound leg). UnknownSecurity for an
        unregistered security, like the EVM view.

        Cost: O(1), whatever the number of holders and transfers: the figures are the sums
        of the security's TALLY_SHARDS counter records, which every transaction keeps in
        step with the amount keys it writes (``# ---- exact reads``). Exact or refused:
        SupplyNotCounted while the security's counters are not complete (state written
        before the counters existed, until ``CountSupply`` has counted it), never a figure
        from a partial scan.
        """
        self._require_init()
        sec = security_word(isin)
        self._token(sec)
        figures = _tally_figures(self._kv, sec)
        return {name: str(figures[name]) for name in SUPPLY_FIGURES}

    # ---- exact reads (issue 14): see the section of that name below

    def count_supply(self, isin: str, page_text: str) -> object:
        """``CountSupply`` (any organisation admin): one bounded step of counting a security
        registered before the counters existed. Guarantees: at most ``page`` keys read
        (1..MAX_COUNT_PAGE); the counters become ``done`` only after every family's range
        after its cursor read empty; idempotent once done (a no-op answering the state).

        SECURITY (review F16): a step only counts keys that exist and writes nothing but
        the counters and the cursor, so its result does not depend on who runs it; any
        organisation's admin (NodeOU ``admin`` of an MSP of the channel) may advance it, so
        the issuer cannot keep its supply feed dark (and its transfers refused) alone.
        Clients, relayers included, may not (NotAdmin)."""
        self._only_counting_admin()
        sec = security_word(isin)
        self._token(sec)
        page = _parse_decimal("page", page_text, MAX_COUNT_PAGE + 1)
        if page == 0:
            raise _invalid(f"page must be 1..{MAX_COUNT_PAGE}")
        kv = self._kv
        sec_hex = sec.hex()
        raw = kv.get(_tally_state_key(sec_hex))
        state: dict[str, Any] = json.loads(raw) if raw is not None else {"family": 0, "after": ""}
        counted = 0
        if state.get("done") is not True:
            family, field = TALLY_FAMILIES[int(state["family"])]
            rows = kv.scan_after(f"{family}/{sec_hex}/", str(state["after"]), page)
            if rows:
                total = sum(_amount_of(family, value) for _, value in rows)
                counted = len(rows)
                if total:
                    _tally_add(kv, sec_hex, _shard_of(rows[0][0]), field, total)
                state = {"family": state["family"], "after": rows[-1][0]}
            elif int(state["family"]) + 1 < len(TALLY_FAMILIES):
                state = {"family": int(state["family"]) + 1, "after": ""}
            else:
                state = {"done": True}
            kv.put(_tally_state_key(sec_hex), canonical_json(state))
        return {"isin": isin, "counted": counted, **_counting_json(state)}

    def supply_counting(self, isin: str) -> object:
        """``SupplyCounting``: whether the security's counters are complete, and the cursor."""
        self._require_init()
        sec = security_word(isin)
        self._token(sec)
        raw = self._kv.get(_tally_state_key(sec.hex()))
        return {"isin": isin, **_counting_json(json.loads(raw) if raw is not None else None)}

    def _only_counting_admin(self) -> None:
        """NotAdmin unless the caller holds the NodeOU ``admin`` role (of any channel MSP:
        the peer has validated the creator against the channel's MSPs)."""
        self._require_init()
        if not self._is_org_admin():
            raise ChaincodeError("NotAdmin", f"caller={self._ctx.caller}")

    def recount_supply(self, isin: str) -> object:
        """``RecountSupply`` (admin of an admin organisation): forget the security's counters
        so that ``CountSupply`` counts it again from the first key; ``Supply`` is refused
        (SupplyNotCounted) until it has. Guarantees: TALLY_SHARDS + 1 deletes, no amount key
        touched. The operator procedure after the chaincode ran, even briefly, a version
        without counters (a downgrade then re-upgrade), whose writes the counters missed
        (ADR 0024, "Downgrades"; review F12)."""
        self._only_admin_org(self._governance())
        sec = security_word(isin)
        self._token(sec)
        sec_hex = sec.hex()
        for key in [_tally_state_key(sec_hex), *_tally_shard_keys(sec_hex)]:
            if self._kv.get(key) is not None:
                self._kv.delete(key)
        return {"isin": isin, "counted": 0, **_counting_json(None)}

    # ----

    def committee(self) -> object:
        """The current committee: epoch, threshold, members (lowercase 0x addresses)."""
        self._require_init()
        return _committee_json(self._committee())

    def info(self) -> object:
        """The endpoint's identity: ledger and bridge words, names, channel and governance."""
        cfg = self.cfg
        return {
            "ledger_word": _hex(cfg.ledger_word),
            "bridge_word": _hex(cfg.bridge_word),
            "network_word": _hex(cfg.network_word),
            "ledger_name": cfg.ledger_name,
            "chaincode_name": cfg.chaincode_name,
            "channel_id": cfg.channel_id,
            "governance": _governance_json(self._governance()),
        }

    def is_relayer(self, identity: str) -> object:
        """Whether ``identity`` may move legs."""
        self._require_init()
        return {"identity": identity, "relayer": self._is_relayer(identity)}

    def is_instructor(self, address: str) -> object:
        """Whether ``address`` (0x EVM address) is a registered instruction key."""
        self._require_init()
        if not isinstance(address, str) or not _HEX_ADDRESS.fullmatch(address):
            raise _invalid(f"instructor {address!r} is not a 0x-prefixed 20-byte address")
        key = bytes.fromhex(address[2:])
        return {"instructor": _hex(key), "instructor_registered": self._is_instructor(key)}

    def who_am_i(self) -> object:
        """The caller's identity string (what SetRelayer expects)."""
        return {"identity": self._ctx.caller}

    def digests(self, terms_json: str) -> object:
        """``transferIdOf`` and ``termsHashOf`` of a terms JSON (no state needed)."""
        t = parse_terms(terms_json)
        return {"transfer_id": _hex(t.transfer_id), "terms_hash": _hex(t.terms_hash)}

    def instruction_digest_of(self, terms_json: str) -> object:
        """The digest the instructor of ``terms`` signs for a lock on this endpoint."""
        t = parse_terms(terms_json)
        return {"digest": _hex(instruction_digest(self.cfg.network_word, t.terms_hash))}

    def claim_digest_of(self, epoch: str, kind: str, tid_hex: str, thash_hex: str) -> object:
        """``claimDigestOf``: the digest committee members sign for this endpoint."""
        cfg = self.cfg
        digest = claim_digest(
            cfg.network_word,
            cfg.ledger_word,
            cfg.bridge_word,
            _parse_decimal("epoch", epoch, UINT64_LIMIT),
            _parse_decimal("kind", kind, 256),
            _parse_word("transfer_id", tid_hex),
            _parse_word("terms_hash", thash_hex),
        )
        return {"digest": _hex(digest)}

    # ---- committee rotation (ADR 0008)
    #
    # Keys: ``committee`` stays the latest installed epoch (Init writes it; the Committee view
    # reads it); ``epoch/<n>`` holds every epoch a rotation touched with its window and the
    # rotation digest that installed it. An epoch with no ``epoch/<n>`` record is the initial
    # one: active from 0, no end. Every certified step reads ``committee`` and
    # ``epoch/<latest>``, which a rotation writes: a step endorsed before a rotation and
    # committed after it fails MVCC_READ_CONFLICT and is retried (against the new epochs).

    def _clock(self) -> int:
        """The ledger time: the transaction timestamp (seconds).

        SECURITY: the timestamp is chosen by the submitting client; every endorser refuses
        one more than MAX_TX_SKEW from its own clock (TransactionTimeSkewed), so a client
        can shift an epoch boundary by at most that much (ADR 0008).
        """
        now = self._ctx.tx_time
        if now is None:
            raise ChaincodeError("InvalidArgument", "the transaction carries no timestamp")
        local = self._ctx.local_time
        if local is not None and abs(now - local) > MAX_TX_SKEW:
            raise ChaincodeError(
                "TransactionTimeSkewed", f"txTime={now}, peerTime={local}, max={MAX_TX_SKEW}"
            )
        return now

    def _installed(self, epoch: int) -> _epochs.InstalledEpoch | None:
        """What this endpoint holds for ``epoch`` (None: never installed)."""
        obj = self._get_json(f"epoch/{epoch}")
        if obj is not None:
            return _epochs.InstalledEpoch(
                epoch=int(obj["epoch"]),
                threshold=int(obj["threshold"]),
                members=tuple(bytes.fromhex(m[2:]) for m in obj["members"]),
                active_from=int(obj["active_from"]),
                active_until=None if obj["active_until"] is None else int(obj["active_until"]),
                rotation=bytes.fromhex(obj["rotation"][2:]),
            )
        latest = self._committee()
        if epoch != latest.epoch:
            return None
        return _epochs.InstalledEpoch(
            latest.epoch, latest.threshold, latest.members, 0, None, _epochs.NO_ROTATION
        )

    def _latest(self) -> _epochs.InstalledEpoch:
        latest = self._installed(self._committee().epoch)
        assert latest is not None
        return latest

    def _verifying_epoch(self, epoch: int) -> _epochs.InstalledEpoch:
        """The installed epoch a certificate of ``epoch`` verifies against now (the core's
        rule; ProtocolError otherwise). Reads ``epoch/<latest - 1>`` only for that epoch."""
        latest = self._latest()
        previous = self._installed(epoch) if epoch + 1 == latest.epoch else None
        return _epochs.verifying_epoch(epoch, self._clock, latest, previous)

    def _put_epoch(self, e: _epochs.InstalledEpoch) -> None:
        self._put_json(
            f"epoch/{e.epoch}",
            {
                "epoch": e.epoch,
                "threshold": e.threshold,
                "members": [_hex(m) for m in e.members],
                "active_from": e.active_from,
                "active_until": e.active_until,
                "rotation": _hex(e.rotation),
            },
        )

    def rotate_committee(self, rotation_json: str, cert_json: str) -> object:
        """``BridgeEndpoint.rotateCommittee``: install ``next_epoch`` with a certificate of
        the latest, active epoch over the core's ``rotation_digest`` for this endpoint.

        Anyone may call: the certificate is the authority. The checks and their order are
        the core's (``epochs.check_rotation``, then ``check_certificate`` of ``epoch``), so
        the errors are the EVM endpoint's. On success: ``epoch`` verifies until
        max(activation, tx time) + overlap, ``next_epoch`` from ``activation`` on, and the
        epoch before ``epoch`` no longer verifies. Emits ``CommitteeRotated``.
        """
        self._require_init()
        r = _parse_rotation(rotation_json)
        cert = parse_certificate(cert_json)
        cfg = self.cfg
        try:
            digest = rotation_digest(
                cfg.network_word,
                cfg.ledger_word,
                cfg.bridge_word,
                r["epoch"],
                r["next_epoch"],
                r["threshold"],
                r["members"],
                r["activation"],
                r["overlap"],
            )
            latest = self._latest()
            _epochs.check_rotation(
                self._clock,
                latest,
                self._installed(r["next_epoch"]),
                digest,
                r["epoch"],
                r["next_epoch"],
                r["threshold"],
                r["members"],
                r["activation"],
                r["overlap"],
            )
            check_certificate(
                digest,
                cert.epoch,
                r["epoch"],
                latest.threshold,
                latest.members,
                cert.signatures,
            )
        except ProtocolError as exc:
            raise ChaincodeError(exc.reason.value, exc.detail) from None
        until = _epochs.rotated_windows(self._clock(), r["activation"], r["overlap"])
        old = _epochs.InstalledEpoch(
            latest.epoch,
            latest.threshold,
            latest.members,
            latest.active_from,
            until,
            latest.rotation,
        )
        new = _epochs.InstalledEpoch(
            r["next_epoch"],
            r["threshold"],
            tuple(r["members"]),
            r["activation"],
            None,
            digest,
        )
        self._put_epoch(old)
        self._put_epoch(new)
        self._put_json(
            "committee", _committee_json(_Committee(new.epoch, new.threshold, new.members))
        )
        event = {
            "epoch": old.epoch,
            "next_epoch": new.epoch,
            "activation": new.active_from,
            "active_until_old": until,
        }
        self._emit(ROTATION_EVENT_NAME, canonical_json(event))
        return {**event, "rotation": _hex(digest)}

    def committees(self) -> object:
        """``BridgeEndpoint.committees``: the latest installed epoch and, while its window
        lasts at this query's transaction time, the previous one, ascending:
        ``{"committees": [{"epoch", "threshold", "members", "active_from", "active_until"
        (null: no end)}]}``."""
        self._require_init()
        latest = self._latest()
        out = [latest]
        previous = self._installed(latest.epoch - 1) if latest.epoch > 1 else None
        if previous is not None and (
            previous.active_until is None or self._clock() < previous.active_until
        ):
            out.insert(0, previous)
        return {
            "committees": [
                {
                    "epoch": e.epoch,
                    "threshold": e.threshold,
                    "members": [_hex(m) for m in e.members],
                    "active_from": e.active_from,
                    "active_until": e.active_until,
                }
                for e in out
            ]
        }

    # ---- flow limits (ADR 0010)
    #
    # BridgeEndpoint's flow-limit section, key for key: per lane (security, counterpart
    # ledger word) the limit ``flowlimit/<sec>/<lane>``, four buckets
    # ``flowbucket/<sec>/<lane>/<kind>`` ({"level": unit-seconds, "updated": seconds}) and per
    # delayed leg ``notbefore/<out|in>/<transfer id>``. Time is the proposal timestamp, which
    # every endorser sees alike; each organisation's server refuses one more than
    # MAX_TX_SKEW from its own clock (TransactionTimeSkewed, see ``_clock``), so with the
    # all-organisations endorsement policy no single client can move a lane's clock. A
    # lane's buckets are read and written by every lock (or prepare) on it: two in one block
    # conflict (MVCC_READ_CONFLICT) and the relayer's retry lands the second in a later
    # block. That serialisation is the price of a limit, paid only on limited lanes.

    def _flow_limit(self, sec: bytes, lane: bytes) -> dict[str, int]:
        obj = self._get_json(f"flowlimit/{sec.hex()}/{lane.hex()}")
        if obj is None:
            return dict.fromkeys(_FLOW_FIELDS, 0)
        return {k: int(obj[k]) for k in _FLOW_FIELDS}

    @staticmethod
    def _flow_params(f: Mapping[str, int], kind: int) -> tuple[int, int]:
        if kind == FLOW_OUT:
            return f["out_capacity"], f["window"]
        if kind == FLOW_IN:
            return f["in_capacity"], f["window"]
        return f["large_threshold"], f["large_delay"]

    def _level(self, sec: bytes, lane: bytes, kind: int, f: Mapping[str, int], now: int) -> int:
        """The bucket's exact level at ``now`` in unit-seconds (refilled, capped); 0 when
        the bucket is not limited."""
        return self._bucket_at(sec, lane, kind, f, now)[0]

    def _bucket_at(
        self, sec: bytes, lane: bytes, kind: int, f: Mapping[str, int], now: int
    ) -> tuple[int, int]:
        """(level, t): the bucket's level at ``t = max(now, updated)``.

        SECURITY (review finding 2): a bucket's time never goes back. A proposal timestamp
        behind the bucket's last update refills nothing AND is not stored: the caller stores
        ``t``, so alternating timestamps within the allowed skew cannot re-earn a refill."""
        cap, period = self._flow_params(f, kind)
        if cap == 0:
            return 0, now
        obj = self._get_json(f"flowbucket/{sec.hex()}/{lane.hex()}/{kind}") or {}
        level, updated = int(obj.get("level", "0")), int(obj.get("updated", 0))
        t = max(now, updated)
        level += cap * (t - updated)
        return min(level, cap * period), t

    def _available(self, sec: bytes, lane: bytes, kind: int, f: Mapping[str, int], now: int) -> int:
        """Whole units in the bucket at ``now``."""
        _, period = self._flow_params(f, kind)
        level = self._level(sec, lane, kind, f, now)
        return level // period if level else 0

    def _store_bucket(self, sec: bytes, lane: bytes, kind: int, level: int, now: int) -> None:
        self._put_json(
            f"flowbucket/{sec.hex()}/{lane.hex()}/{kind}", {"level": str(level), "updated": now}
        )

    def _flow_take(self, sec: bytes, lane: bytes, tid: bytes, amount: int, kind: int) -> bool:
        """Lock (FLOW_OUT) / prepare (FLOW_IN) hook: consume capacity or FlowLimitExceeded;
        beyond the lane's large allowance the leg gets a not-before (see the EVM twin).
        True when it did (the leg records it: ``_Leg.delayed``)."""
        f = self._flow_limit(sec, lane)
        cap, period = self._flow_params(f, kind)
        large = FLOW_LARGE_OUT if kind == FLOW_OUT else FLOW_LARGE_IN
        delayed = False
        if cap == 0 and f["large_threshold"] == 0:
            return delayed
        now = self._clock()
        if cap:
            level, t = self._bucket_at(sec, lane, kind, f, now)
            if amount * period > level:
                raise ChaincodeError(
                    "FlowLimitExceeded",
                    f"available={level // period}, requested={amount}",
                    {"available": level // period, "requested": amount},
                )
            self._store_bucket(sec, lane, kind, level - amount * period, t)
        if f["large_threshold"]:
            level, t = self._bucket_at(sec, lane, large, f, now)
            need = amount * f["large_delay"]
            # SECURITY: the lane's allowance, refilled by time only: splitting cannot help.
            if need > level:
                direction = "out" if kind == FLOW_OUT else "in"
                # notBefore from the bucket's own (monotonic) time t; the delay record
                # keeps when and on which lane, so a lower delay later shortens it.
                self._put_json(
                    f"notbefore/{direction}/{tid.hex()}",
                    {
                        "at": t + f["large_delay"],
                        "since": t,
                        "sec": sec.hex(),
                        "lane": lane.hex(),
                    },
                )
                delayed = True
                need = level
            self._store_bucket(sec, lane, large, level - need, t)
        return delayed

    def _flow_credit(self, sec: bytes, lane: bytes, kind: int, amount: int) -> None:
        """Give ``amount`` back to a rate bucket, bounded by its capacity."""
        f = self._flow_limit(sec, lane)
        cap, period = self._flow_params(f, kind)
        if cap == 0:
            return
        level, t = self._bucket_at(sec, lane, kind, f, self._clock())
        self._store_bucket(sec, lane, kind, min(level + amount * period, cap * period), t)

    def _not_before(self, tid: bytes, direction: str, leg: _Leg | None = None) -> int:
        """The leg's effective not-before: min(stored, delayed-at + the lane's CURRENT
        large delay), so lowering or removing a lane's delay shortens legs already delayed
        (review finding 3; the EVM endpoint's ``_effectiveNotBefore``). 0: no delay.
        ``leg`` (already read) saves the read of a leg this code recorded as not delayed:
        its ``notbefore`` record is written in the call that writes the leg, or never."""
        if leg is not None and leg.delayed is False:
            if CHECK_ASSUMED and self._kv.get(f"notbefore/{direction}/{tid.hex()}") is not None:
                raise AssertionError(f"{direction}/{tid.hex()} has a delay its leg does not say")
            return 0
        d = self._get_json(f"notbefore/{direction}/{tid.hex()}")
        if d is None:
            return 0
        at, since = int(d["at"]), int(d["since"])
        current = self._flow_limit(bytes.fromhex(d["sec"]), bytes.fromhex(d["lane"]))
        return min(at, since + current["large_delay"])

    def _require_delay_over(self, tid: bytes, direction: str, leg: _Leg) -> None:
        at = self._not_before(tid, direction, leg)
        if at == 0:
            return
        now = self._clock()
        if now < at:
            raise ChaincodeError(
                "TooEarly", f"notBefore={at}, nowTs={now}", {"notBefore": at, "nowTs": now}
            )

    def set_flow_limit(
        self,
        isin: str,
        counterpart: str,
        out_capacity: str,
        in_capacity: str,
        window: str,
        share_bps: str,
        large_threshold: str,
        large_delay: str,
    ) -> object:
        """``setFlowLimit`` (admin only): the EVM endpoint's rules, with the counterpart given
        as a ledger name. ``share_bps`` sizes both capacities from this ledger's registered
        supply now (the counters of ``# ---- exact reads``: SupplyNotCounted before they
        are complete; run it when the security is quiet, or retry on an MVCC conflict)."""
        self._only_admin()
        sec = security_word(isin)
        self._token(sec)
        if not isinstance(counterpart, str) or not _LEDGER_NAME.fullmatch(counterpart):
            raise _invalid(f"counterpart {counterpart!r} is not a ledger name")
        lane = ledger_word(counterpart)
        if lane == self.cfg.ledger_word:
            raise ChaincodeError("WrongLedger", "a lane names another ledger")
        nxt = {
            "out_capacity": _parse_decimal("out_capacity", out_capacity, UINT128_LIMIT),
            "in_capacity": _parse_decimal("in_capacity", in_capacity, UINT128_LIMIT),
            "window": _parse_decimal("window", window, UINT64_LIMIT),
            "share_bps": _parse_decimal("share_bps", share_bps, 2**16),
            "large_threshold": _parse_decimal("large_threshold", large_threshold, UINT128_LIMIT),
            "large_delay": _parse_decimal("large_delay", large_delay, UINT64_LIMIT),
        }
        if nxt["share_bps"]:
            if nxt["share_bps"] > 10_000 or nxt["out_capacity"] or nxt["in_capacity"]:
                raise ChaincodeError("InvalidFlowLimit", "shareBps needs 1..10000, no units")
            sized = self._total_supply(sec) * nxt["share_bps"] // 10_000
            if not 0 < sized < UINT128_LIMIT:
                raise ChaincodeError("InvalidFlowLimit", f"sized capacity={sized}")
            nxt["out_capacity"] = nxt["in_capacity"] = sized
        if nxt["window"] > MAX_FLOW_PERIOD or nxt["large_delay"] > MAX_FLOW_PERIOD:
            raise ChaincodeError("InvalidFlowLimit", f"window/largeDelay > {MAX_FLOW_PERIOD}s")
        rated = bool(nxt["out_capacity"] or nxt["in_capacity"])
        if bool(nxt["window"]) != rated or bool(nxt["large_threshold"]) != bool(nxt["large_delay"]):
            raise ChaincodeError("InvalidFlowLimit", "window/capacity or threshold/delay alone")
        old = self._flow_limit(sec, lane)
        now: int | None = None
        for kind in (FLOW_OUT, FLOW_IN, FLOW_LARGE_OUT, FLOW_LARGE_IN):
            cap, period = self._flow_params(nxt, kind)
            if cap == 0:
                continue
            now = self._clock() if now is None else now
            old_cap, old_period = self._flow_params(old, kind)
            level, t = self._bucket_at(sec, lane, kind, old, now)
            units = cap if old_cap == 0 else (level // old_period if level else 0)
            self._store_bucket(sec, lane, kind, min(units, cap) * period, t)
        self._put_json(f"flowlimit/{sec.hex()}/{lane.hex()}", {k: str(v) for k, v in nxt.items()})
        # SECURITY (CI flake of stop 18): the answer is part of the endorsed proposal
        # response, so it is computed at the transaction time, never at a peer's own clock;
        # two endorsers whose clocks straddle a second would otherwise return different
        # payloads and the transaction would fail "ProposalResponsePayloads do not match".
        return self._flow_status_at(sec, lane, self._clock() if now is None else now)

    def flow_status(self, isin: str, counterpart: str) -> object:
        """``flowStatus``: the lane's limit and bucket levels now, as decimal strings, with
        the time they are computed at (``as_of``: the local clock if known, else the
        proposal's). All zero: the lane is not limited."""
        self._require_init()
        sec = security_word(isin)
        if not isinstance(counterpart, str) or not _LEDGER_NAME.fullmatch(counterpart):
            raise _invalid(f"counterpart {counterpart!r} is not a ledger name")
        lane = ledger_word(counterpart)
        now = self._ctx.local_time if self._ctx.local_time is not None else self._ctx.tx_time
        return self._flow_status_at(sec, lane, now or 0)

    def _flow_status_at(self, sec: bytes, lane: bytes, now: int) -> dict[str, object]:
        """The lane's limit and bucket levels at ``now`` (``flowStatus``'s answer). A
        transaction passes its own timestamp, so every endorser returns the same bytes."""
        f = self._flow_limit(sec, lane)
        return {
            "as_of": now,
            "window": str(f["window"]),
            "outbound_capacity": str(f["out_capacity"]),
            "outbound_available": str(self._available(sec, lane, FLOW_OUT, f, now)),
            "inbound_capacity": str(f["in_capacity"]),
            "inbound_available": str(self._available(sec, lane, FLOW_IN, f, now)),
            "share_bps": str(f["share_bps"]),
            "large_threshold": str(f["large_threshold"]),
            "large_delay": str(f["large_delay"]),
            "large_outbound_available": str(self._available(sec, lane, FLOW_LARGE_OUT, f, now)),
            "large_inbound_available": str(self._available(sec, lane, FLOW_LARGE_IN, f, now)),
        }

    def not_before(self, tid_hex: str) -> object:
        """``notBefore``: when the legs of a transfer may commit here (0: no delay)."""
        self._require_init()
        tid = _parse_word("transfer_id", tid_hex)
        # The effective values (what commit enforces), as members read them.
        return {"outbound": self._not_before(tid, "out"), "inbound": self._not_before(tid, "in")}

    # ---- depository halt
    #
    # Keys: ``depository`` (``{"address": "0x..", "sequence": n}``, the key and the last
    # applied order's sequence) and ``halt/<security word hex>`` (``true``; the zero word
    # halts every security). Transactions only read them, except ApplyOrder, so a halt adds
    # no hot key to the leg transactions (a lock ordered in the same block as a halt of its
    # security fails MVCC validation and is retried, which is what a halt wants anyway).
    # The order's expiry is checked against the ledger time (``_clock``: the transaction
    # timestamp, within MAX_TX_SKEW of the endorsing server's clock); the coordinator and
    # the relayer also refuse to submit an expired order, and the strictly increasing
    # sequence refuses every replay (see ADR 0011).

    def _depository(self) -> tuple[bytes | None, int]:
        obj = self._get_json("depository")
        if obj is None:
            return None, 0
        return bytes.fromhex(obj["address"][2:]), int(obj["sequence"])

    def _is_halted(self, sec: bytes) -> bool:
        return self._get_json(f"halt/{sec.hex()}") is True

    def _require_not_halted(self, sec: bytes) -> None:
        """``BridgeEndpoint._requireNotHalted``: SecurityHalted while sec or the ledger is."""
        if self._is_halted(sec) or self._is_halted(ZERO_WORD):
            raise ChaincodeError("SecurityHalted", f"securityId={_hex(sec)}")

    def _require_not_paused(self, sec: bytes) -> None:
        """``SecurityToken.bridgeMint``/``bridgeRelease``: TokenPaused while paused."""
        token = self._registered(sec)
        if token is not None and token["paused"]:
            raise ChaincodeError("TokenPaused", f"securityId={_hex(sec)}")

    def set_depository(self, address: str) -> object:
        """Set the depository key (a 0x EVM address): admin only, once, while unset.

        SECURITY: the admin cannot replace the key afterwards (it could lift a halt with a
        key of its own); only an order signed by the current key replaces it.
        """
        self._require_init()
        self._only_admin()
        if not isinstance(address, str) or not _HEX_ADDRESS.fullmatch(address):
            raise _invalid(f"depository {address!r} is not a 0x-prefixed 20-byte address")
        key = bytes.fromhex(address[2:])
        if not any(key):
            raise ChaincodeError("ZeroAddress", "depository=0x" + "00" * 20)
        current, _ = self._depository()
        if current is not None:
            raise ChaincodeError("DepositoryAlreadySet", f"depository={_hex(current)}")
        self._put_json("depository", {"address": _hex(key), "sequence": 0})
        return {"depository": _hex(key), "sequence": 0}

    def apply_order(self, order_json: str, signature_hex: str) -> object:
        """``BridgeEndpoint.applyOrder``: anyone may submit; the signature is the authority.

        The core's rule (``check_order``) in its order: NoDepository, InvalidOrder,
        WrongLedger (network, ledger), OrderExpired (against the transaction time, see
        ``_clock``), StaleOrder, InvalidSignature, NotDepository.
        SECURITY: only the depository's signature halts, releases or replaces its key.
        """
        self._require_init()
        order = _parse_order(order_json)
        if not isinstance(signature_hex, str) or not _HEX_SIGNATURE.fullmatch(signature_hex):
            raise _invalid("signature must be 0x-prefixed hex")
        signature = bytes.fromhex(signature_hex[2:])
        current, last = self._depository()
        cfg = self.cfg
        try:
            check_order(
                order, signature, current, cfg.network_word, cfg.ledger_word, last, self._clock()
            )
        except ProtocolError as exc:
            raise ChaincodeError(exc.reason.value, exc.detail) from None
        assert current is not None  # check_order refuses NoDepository
        if order.action == ORDER_SET_DEPOSITORY:
            current = order.key[12:]
        else:
            self._put_json(f"halt/{order.security.hex()}", order.action == ORDER_HALT)
        self._put_json("depository", {"address": _hex(current), "sequence": order.sequence})
        return {
            "depository": _hex(current),
            "sequence": order.sequence,
            "action": order.action,
            "security": _hex(order.security),
        }

    def halt_status(self, security_hex: str) -> object:
        """``haltStatus``: the security's and the ledger's halt flags, the last sequence and
        the depository (null when unset). ``security_hex`` is a 0x security word."""
        self._require_init()
        sec = _parse_word("security", security_hex)
        current, last = self._depository()
        return {
            "security_halted": self._is_halted(sec),
            "ledger_halted": self._is_halted(ZERO_WORD),
            "sequence": last,
            "depository": None if current is None else _hex(current),
        }

    def order_digest_of(self, order_json: str) -> object:
        """``orderDigestOf``: what the depository signs for this order."""
        return {"digest": _hex(_parse_order(order_json).digest)}

    # ---- batch (issue 14 items 2-4): many legs per read, many steps per invocation

    def legs(self, direction: str, ids_json: str) -> object:
        """Many legs in one read: ``{"legs": [...]}``, one record per requested id, in the
        request's order (``GetLeg``'s record plus ``transfer_id`` and the leg's effective
        ``not_before``, 0 when none). Guarantees: exactly the answers that ``GetLeg`` and
        ``NotBefore`` give for each id on the same state; point reads only (no range read,
        so no peer cap can shorten it); at most MAX_LEG_READS ids (InvalidBatch above,
        with the figures ``count`` and ``max``). Duplicated ids are answered twice."""
        if direction not in ("outbound", "inbound"):
            raise _invalid("leg must be 'outbound' or 'inbound'")
        ids = _parse_id_list(ids_json, MAX_LEG_READS)
        self._require_init()
        d = "out" if direction == "outbound" else "in"
        out = []
        for tid in ids:
            leg = self._leg(d, tid)
            nb = self._not_before(tid, d, leg) if leg.state in (OUT_LOCKED, IN_PREPARED) else 0
            out.append({**_leg_json(leg), "transfer_id": _hex(tid), "not_before": nb})
        return {"legs": out}

    def holder_statuses(self, isin: str, holders_json: str) -> object:
        """Many holders of one security in one read: ``{"holders": [...]}``, one record per
        requested holder, in the request's order (``HolderStatus``'s record plus ``holder``,
        lowercase). Guarantees: exactly the answers ``HolderStatus`` gives for each holder
        on the same state; point reads only (no range read, so no peer cap can shorten
        it); at most MAX_HOLDER_READS holders (InvalidBatch above, with the figures
        ``count`` and ``max``), checked before any holder is parsed. Duplicated holders
        are answered twice."""
        obj = _bounded_list(
            "holders", holders_json, MAX_HOLDER_READS, "a JSON list of 0x-prefixed 20-byte accounts"
        )
        self._require_init()
        sec = security_word(isin)
        addresses = [parse_holder(v) for v in obj]
        token = self._registered(sec)
        return {
            "holders": [
                {**self._holder_record(sec, token, a), "holder": _hex(a)} for a in addresses
            ]
        }

    # Batched steps: many items of one step in one invocation (ADR 0025, Fabric notes),
    # checked in the EVM endpoint's order (``BridgeEndpoint._batch``), so both ledgers
    # refuse a batch with the same reason and item.
    # SECURITY: the whole invocation is refused, and nothing is written, when the batch is
    # above MAX_BATCH_ITEMS or empty (InvalidBatch), its certificate does not verify for
    # THIS endpoint and the step's kind (WrongBatchKind, InvalidBatch, WrongEpoch,
    # TooFewSignatures, ...), an item is not proven into the root (InvalidBatchProof), an
    # item repeats an earlier one (DuplicateBatchItem), or the single step refuses an item
    # (its own error); each item-level refusal carries the figure ``item`` (and ``index``
    # where the EVM error has that argument: InvalidBatchProof, DuplicateBatchItem). The relayer
    # simulates first and drops such items. An item whose leg is already where the step puts
    # it is skipped (a replay: never applied twice) and reported ``"skipped": true``; with
    # other terms there it is TermsMismatch. Business outcomes keep the single step's
    # per-item semantics (an ineligible recipient is Rejected at prepare, a refused
    # recipient parked at commit). One LegStatesChanged event lists every applied leg.

    def lock_batch(self, items_json: str) -> object:
        """Many ``Lock``s (each with its instruction) in one invocation; an item whose
        outbound leg is already recorded with the same terms is skipped."""
        self._only_relayer()
        items = _parse_batch_items(items_json, "instruction")
        if not items:
            raise ChaincodeError("InvalidBatch", "count=0", {"count": 0})
        results: list[dict[str, Any]] = []
        seen: set[bytes] = set()
        with self._batch_events():
            for i, (t, extra) in enumerate(items):
                assert isinstance(extra, bytes)
                tid = t.transfer_id
                _mark_seen(seen, tid, i)
                leg = self._leg("out", tid)
                if leg.state != OUT_NONE and leg.terms_hash == t.terms_hash:
                    results.append(_skipped(tid, leg))
                    continue
                results.append(_item(i, partial(self._lock_terms, t, extra)))
        return _batch_result(results)

    def prepare_batch(self, items_json: str, cert_json: str) -> object:
        """Many ``Prepare``s under one LOCKED batch certificate, each Prepared or Rejected
        on its own; an item whose inbound leg is already recorded is skipped."""
        return self._batch(items_json, cert_json, CLAIM_LOCKED)

    def commit_batch(self, items_json: str, cert_json: str) -> object:
        """Many ``Commit``s (either leg) under one COMMIT batch certificate; a leg already
        Burned (source) or Minted (target) is skipped."""
        return self._batch(items_json, cert_json, CLAIM_COMMIT)

    def abort_batch(self, items_json: str, cert_json: str) -> object:
        """Many ``Abort``s (either leg) under one ABORT batch certificate; a leg already
        Released (source) or Aborted (target) is skipped."""
        return self._batch(items_json, cert_json, CLAIM_ABORT)

    def _batch(self, items_json: str, cert_json: str, kind: int) -> object:
        """The batched step of claim ``kind``, in order: the relayer; the items' form and
        bound; the certificate (``batch.check_batch_certificate``: its kind is ``kind``,
        1 <= items <= its count, the epoch verifies now, the committee's signatures over
        the root digest bound to this endpoint); then per item: its claim, computed here
        from this endpoint's own words and the certificate's epoch and kind, proves into
        the root (``batch.check_batch_item``); it is no repeat; a prepare names this
        endpoint as target with a nonzero amount; skipped if already settled by this step,
        otherwise the single step's logic."""
        self._only_relayer()
        items = _parse_batch_items(items_json, "proof")
        cert = _parse_batch_certificate(cert_json)
        cfg = self.cfg
        try:
            _batch.check_batch_shape(cert, kind, len(items))  # before the epoch, as the EVM
            committee = self._verifying_epoch(cert.epoch)
            _batch.check_batch_certificate(
                cert,
                kind,
                len(items),
                cfg.network_word,
                cfg.ledger_word,
                cfg.bridge_word,
                committee.epoch,
                committee.threshold,
                committee.members,
            )
        except ProtocolError as exc:
            figures = (  # the EVM's WrongBatchKind(got, needed)
                {"got": cert.kind, "needed": kind}
                if exc.reason is ErrorReason.WRONG_BATCH_KIND
                else {}
            )
            raise ChaincodeError(exc.reason.value, exc.detail, figures) from None
        results: list[dict[str, Any]] = []
        seen: set[bytes] = set()
        with self._batch_events():
            for i, (t, proof) in enumerate(items):
                if isinstance(proof, int):  # longer than MAX_PROOF_LENGTH, never parsed
                    raise ChaincodeError(
                        "InvalidBatchProof",
                        f"item={i}, proof of {proof} hashes, max={_batch.MAX_PROOF_LENGTH}",
                        {"item": i, "index": i},
                    )
                assert isinstance(proof, tuple)
                tid = t.transfer_id
                try:
                    _batch.check_batch_item(
                        cert,
                        cfg.network_word,
                        cfg.ledger_word,
                        cfg.bridge_word,
                        tid,
                        t.terms_hash,
                        proof,
                    )
                except ProtocolError as exc:  # the EVM's InvalidBatchProof(index)
                    raise ChaincodeError(
                        exc.reason.value, f"item={i}, {exc.detail}", {"item": i, "index": i}
                    ) from None
                _mark_seen(seen, tid, i)
                results.append(_item(i, partial(self._batch_item, t, kind)))
        return _batch_result(results)

    def _batch_item(self, t: Terms, kind: int) -> object:
        """One certified item (its proof accepted): skipped when its leg is already where
        the step of ``kind`` puts it (TermsMismatch with other terms), else the step."""
        tid = t.transfer_id
        if kind == CLAIM_LOCKED:
            if not self._is_target(t):
                raise ChaincodeError("WrongLedger", "terms do not name this endpoint as target")
            self._require_nonzero(t.amount)
        if kind != CLAIM_LOCKED and self._is_source(t):
            leg = self._leg("out", tid)
            done = leg.state == (OUT_BURNED if kind == CLAIM_COMMIT else OUT_RELEASED)
        else:
            leg = self._leg("in", tid)
            settled = {CLAIM_COMMIT: IN_MINTED, CLAIM_ABORT: IN_ABORTED}
            done = leg.state != IN_NONE if kind == CLAIM_LOCKED else leg.state == settled[kind]
        if done:
            self._require_hash(tid, leg, t.terms_hash)
            return {**_skipped(tid, leg), "skipped": True}
        if kind == CLAIM_LOCKED:
            return self._prepare_terms(t, tid, leg)
        return self._commit_terms(t) if kind == CLAIM_COMMIT else self._abort_terms(t)

    @contextmanager
    def _batch_events(self) -> Iterator[None]:
        """Collect the legs the body writes and emit them as ONE ``LegStatesChanged``
        event (Fabric carries one event per transaction), none when every item skipped."""
        legs: list[Any] = []
        emit = self._emit
        self._emit = lambda _name, payload: legs.append(json.loads(payload))
        try:
            yield
        finally:
            self._emit = emit
        if legs:
            emit(BATCH_EVENT_NAME, canonical_json({"legs": legs}))


# ---- batch (issue 14 items 2-4)

MAX_LEG_READS = 200
"""The most transfer ids one ``Legs`` read answers (its cost bound: 2 point reads each)."""

MAX_HOLDER_READS = 200
"""The most holders one ``HolderStatuses`` read answers (its cost bound: one point read
each, and the security's record once)."""


MAX_BATCH_ITEMS = 200
"""The most items one batched step carries (its cost bound); InvalidBatch above it."""

BATCH_EVENT_NAME = "LegStatesChanged"
"""The one event of a batched step: ``{"legs": [...]}``, each element exactly the payload a
single step's ``LegStateChanged`` would carry for that leg, in item order."""

_BATCH_CERT_KEYS = frozenset(("epoch", "kind", "root", "count", "signatures"))
MAX_CERTIFICATE_CHARS = 65_536
"""The longest batch certificate text decoded (InvalidBatch above, before decoding): the
fields and 400 signatures of 65 bytes in hex fit."""


def _parse_batch_items(
    text: str, extra: str
) -> list[tuple[Terms, bytes | tuple[bytes, ...] | int]]:
    """``[{"terms": {...}, "<extra>": ...}, ...]``, at most MAX_BATCH_ITEMS items
    (InvalidBatch above: a Fabric-only cost bound, checked before any item is parsed; an
    empty batch is refused by the certificate rule, or by LockBatch). ``extra`` is
    ``proof`` (a list of 0x words, bottom up; longer than ``batch.MAX_PROOF_LENGTH`` it is
    not parsed and stands as its length, which the step refuses InvalidBatchProof at its
    item, as on the EVM) or ``instruction`` (0x hex)."""
    obj = _bounded_list("items", text, MAX_BATCH_ITEMS, "a JSON list")
    out: list[tuple[Terms, bytes | tuple[bytes, ...] | int]] = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict) or set(item) != {"terms", extra}:
            raise _invalid(f"item {i} must be an object with exactly the keys terms, {extra}")
        t = _terms_from_obj(item["terms"])
        value = item[extra]
        if extra == "instruction":
            if not isinstance(value, str) or not _HEX_SIGNATURE.fullmatch(value):
                raise _invalid(f"item {i}: instruction must be 0x-prefixed hex")
            out.append((t, bytes.fromhex(value[2:])))
            continue
        if not isinstance(value, list):
            raise _invalid(f"item {i}: proof must be a list of 0x-prefixed 32-byte words")
        # SECURITY: an overlong proof's words are never parsed, so a relayer cannot make
        # every endorsing peer (or CometBFT validator) parse a proof as long as a transaction
        # allows; it stands as its length, refused InvalidBatchProof(index) when its item's
        # turn comes, after the certificate and the earlier items, as on the EVM (review
        # helper-108 L3).
        if len(value) > _batch.MAX_PROOF_LENGTH:
            out.append((t, len(value)))
            continue
        out.append((t, tuple(_parse_word("proof", w) for w in value)))
    return out


def _parse_batch_certificate(text: str) -> _batch.BatchCertificate:
    """``{"epoch", "kind", "root", "count", "signatures"}``. Signatures that are not a list
    of 0x hex byte strings fail verification with MalformedSignatures, as in
    :func:`parse_certificate`; any other malformed field is InvalidArgument."""
    _refuse_longer("batch certificate", text, MAX_CERTIFICATE_CHARS)
    obj = _loads("batch certificate", text)
    if not isinstance(obj, dict) or set(obj) != _BATCH_CERT_KEYS:
        raise _invalid(f"batch certificate must have exactly the keys {sorted(_BATCH_CERT_KEYS)}")
    numbers = {}
    for name, bits in (("epoch", 64), ("kind", 8), ("count", 32)):
        value = obj[name]
        if type(value) is not int or not 0 <= value < 2**bits:
            raise _invalid(f"batch certificate {name} must be an integer in uint{bits} range")
        numbers[name] = value
    signatures = _parse_signatures(obj["signatures"])
    cert = _batch.BatchCertificate(root=_parse_word("root", obj["root"]), signatures=(), **numbers)
    # None (did not split) reaches the core's rule, which refuses it MalformedSignatures.
    return dataclass_replace(cert, signatures=cast(tuple[bytes, ...], signatures))


def _mark_seen(seen: set[bytes], tid: bytes, i: int) -> None:
    """DuplicateBatchItem (figures ``item`` and, as the EVM's ``DuplicateBatchItem(index)``,
    ``index``) when item ``i`` repeats an earlier transfer."""
    if tid in seen:
        raise ChaincodeError("DuplicateBatchItem", f"item={i}", {"item": i, "index": i})
    seen.add(tid)


def _skipped(tid: bytes, leg: _Leg) -> dict[str, Any]:
    return {"transfer_id": _hex(tid), "skipped": True, **_leg_json(leg)}


def _item(i: int, step: Callable[[], object]) -> dict[str, Any]:
    """Run one item's step; its refusal names the item (figure ``item``)."""
    try:
        result = step()
    except ChaincodeError as exc:
        raise ChaincodeError(
            exc.name, f"item={i}, {exc.detail}", {**exc.figures, "item": i}
        ) from None
    assert isinstance(result, dict)
    return {"skipped": False, **result}


def _batch_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    skipped = sum(1 for r in results if r["skipped"])
    return {"items": results, "applied": len(results) - skipped, "skipped": skipped}


def _refuse_longer(name: str, text: str, limit: int) -> None:
    """InvalidBatch (figures ``chars`` and ``max``) when ``text`` is longer than ``limit``
    characters: checked before it is decoded (review helper-107)."""
    if len(text) > limit:
        raise ChaincodeError(
            "InvalidBatch",
            f"{name}: {len(text)} characters, max={limit}",
            {"chars": len(text), "max": limit},
        )


MAX_ENTRY_CHARS = 8192
"""The longest JSON text an entry of a bounded list may take on average: a batch item (terms
about 1 KB, a proof of ``MAX_PROOF_LENGTH`` words about 2.2 KB, compact JSON as the relayer
sends it) with room to spare; an id or an account far less."""


def _bounded_list(name: str, text: str, bound: int, expected: str) -> list[Any]:
    """The JSON list ``text`` with at most ``bound`` entries, not parsed further: a read's or
    a batch's cost bound, checked before any entry is. InvalidBatch (figures ``chars`` and
    ``max``) when the text is longer than ``bound`` entries could be, before it is decoded
    (review helper-107: a relayer's text as long as a proposal allows was decoded whole on
    every endorsing peer before the bound applied); InvalidArgument (``<name> must be
    <expected>``) when it is not a list; InvalidBatch above the bound (figures ``count``
    and ``max``)."""
    _refuse_longer(name, text, bound * MAX_ENTRY_CHARS)
    obj = _loads(name, text)
    if not isinstance(obj, list):
        raise _invalid(f"{name} must be {expected}")
    if len(obj) > bound:
        raise ChaincodeError(
            "InvalidBatch", f"count={len(obj)}, max={bound}", {"count": len(obj), "max": bound}
        )
    return obj


def _parse_id_list(text: str, bound: int) -> list[bytes]:
    """A JSON list of at most ``bound`` transfer ids (0x words); InvalidBatch above it."""
    obj = _bounded_list("transfer ids", text, bound, "a JSON list of 0x-prefixed 32-byte words")
    return [_parse_word("transfer_id", v) for v in obj]


_ORDER_KEYS = frozenset(("network", "ledger", "security", "action", "sequence", "expiry", "key"))


def _parse_order(text: str) -> _digests.Order:
    """An order JSON object (``bridge.domain.governance.order_to_json``)."""
    obj = _loads("order", text)
    if not isinstance(obj, dict) or set(obj) != _ORDER_KEYS:
        raise _invalid(f"order must be an object with exactly the keys {sorted(_ORDER_KEYS)}")
    numbers = {}
    for name, bits in (("action", 8), ("sequence", 64), ("expiry", 64)):
        value = obj[name]
        if type(value) is not int or not 0 <= value < 2**bits:
            raise _invalid(f"order {name} must be an integer in uint{bits} range")
        numbers[name] = value
    return _digests.Order(
        network=_parse_word("network", obj["network"]),
        ledger=_parse_word("ledger", obj["ledger"]),
        security=_parse_word("security", obj["security"]),
        key=_parse_word("key", obj["key"]),
        **numbers,
    )


def _leg_json(leg: _Leg) -> dict[str, Any]:
    return {
        "state": leg.state,
        "terms_hash": _hex(leg.terms_hash),
        "amount": str(leg.amount),
        "security": _hex(leg.security),
        "reason": leg.reason,
    }


def _committee_json(c: _Committee) -> dict[str, Any]:
    return {"epoch": c.epoch, "threshold": c.threshold, "members": [_hex(m) for m in c.members]}


# ---- exact reads (issue 14)
# The supply figures are counters, kept in the same transaction as every write of an amount
# key (``holder``'s balance, ``escrow``, ``prepared``, ``parked``, ``burned``, ``minted``),
# so ``Supply`` reads O(1) keys after millions of transfers and never depends on a range
# read that the peer may cut short (``totalQueryLimit``). :class:`_Tallying` wraps the store
# of every call, so no code path (nor a future one) can write an amount key without its
# counter. A counter is a hot key (two transactions writing it in one block would
# MVCC-conflict), so each security has TALLY_SHARDS counter records ``tally/<word>/<nn>``
# and a transaction writes all its deltas to ONE of them, picked by the first amount key it
# changes (a transfer id or a holder address: uniform): two concurrent transactions of a
# security conflict with probability 1/TALLY_SHARDS, and a conflict is retried like any
# other. A shard's fields may be negative (a lock debits a holder and credits escrow in the
# same shard, but an issue credits one shard and the later lock debits another); the sums
# are exact and never negative.
#
# ``tally/<word>/state`` says how far the counters are complete: ``{"done": true}`` for a
# security registered since (counted from zero), absent for one registered before the
# counters existed. Such a security's figures are refused (SupplyNotCounted) until the
# issuer admin has run ``CountSupply`` to completion: each call counts at most ``page``
# more keys of one family, in key order, and records its cursor; a write of a key at or
# before the cursor updates the counters, a later one does not (the scan will see it). A
# family ends only when a range read strictly after the cursor comes back EMPTY (the
# peer's cap can shorten a page silently, never empty it); Fabric re-checks that range
# read at commit, so a key inserted there concurrently invalidates the step (phantom).

TALLY_SHARDS = 64
"""Counter records per security: a Supply read costs this many point reads."""

CHECK_ASSUMED = os.environ.get("KSTB_CHAINCODE_CHECK_ASSUMED", "") == "1"
"""Tests: every value taken from a leg instead of read (``# ---- fewer state reads``) is
read as well and compared; a difference raises. Off in production (it is the read saved);
``KSTB_CHAINCODE_CHECK_ASSUMED=1`` in the environment turns it on (the test suite sets it,
so its chaincode servers and CometBFT nodes inherit it). Every endorser and validator must
run with the same setting (it adds reads to the read set)."""

TALLY_FAMILIES: tuple[tuple[str, str], ...] = (
    ("holder", "holders"),
    ("escrow", "escrowed"),
    ("prepared", "prepared"),
    ("parked", "parked"),
    ("burned", "burned_out"),
    ("minted", "minted_in"),
)
"""(key family, counter field), in the order ``CountSupply`` counts them."""

_TALLY_FIELD = dict(TALLY_FAMILIES)
_FAMILY_INDEX = {family: i for i, (family, _) in enumerate(TALLY_FAMILIES)}

SUPPLY_FIGURES = _tally_core.SUPPLY_FIGURES
"""The ``Supply`` answer's figures (the adapters' codec reads exactly these)."""

if sorted(field for _, field in TALLY_FAMILIES) != sorted(_tally_core.COUNTER_FIELDS):
    raise ImportError("TALLY_FAMILIES and the core's COUNTER_FIELDS name different counters")

MAX_COUNT_PAGE = 10_000
"""The largest ``page`` of one ``CountSupply`` step (its cost bound)."""


def _tally_state_key(sec_hex: str) -> str:
    return f"tally/{sec_hex}/state"


def _amount_of(family: str, raw: bytes | None) -> int:
    """The units an amount key holds (0 when absent)."""
    if raw is None:
        return 0
    if family == "holder":
        return int(json.loads(raw)["balance"])
    return int(raw)


class _Tallying:
    """A :class:`KeyValue` that keeps the supply counters in step with every amount key
    written through it. Guarantees: after any sequence of writes, for every security whose
    counting covers a key, the sum of its shards' field equals the sum of that family's
    keys; all of one call's deltas go to one shard per security.

    SECURITY: :class:`Endpoint` reaches the store only through this wrapper, so no step can
    move units without moving the figures the supply feed certifies."""

    def __init__(self, inner: KeyValue) -> None:
        self._inner = inner
        self._shard: dict[str, str] = {}  # security hex -> the shard this call writes

    def get(self, key: str) -> bytes | None:
        return self._inner.get(key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        return self._inner.scan(prefix)

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        return self._inner.scan_after(prefix, after, limit)

    def put(self, key: str, value: bytes) -> None:
        self._account(key, value, partial(self._inner.get, key))
        self._inner.put(key, value)

    def delete(self, key: str) -> None:
        self._account(key, None, partial(self._inner.get, key))
        self._inner.delete(key)

    def put_known(self, key: str, value: bytes, old: bytes | None) -> None:
        """``put`` of a key whose current value the caller knows to be ``old`` (None:
        absent), without reading it. SECURITY: only for a leg's index keys, whose value the
        leg's own record determines (``Endpoint._index_put_new``); with CHECK_ASSUMED (tests)
        the key is read as well and any other value raises AssertionError."""
        self._check_known(key, old)
        self._account(key, value, lambda: old)
        self._inner.put(key, value)

    def delete_known(self, key: str, old: bytes) -> None:
        """``delete`` of a key known to hold ``old`` (see :meth:`put_known`)."""
        self._check_known(key, old)
        self._account(key, None, lambda: old)
        self._inner.delete(key)

    def _check_known(self, key: str, old: bytes | None) -> None:
        if CHECK_ASSUMED:
            actual = self._inner.get(key)
            if actual != old:
                raise AssertionError(f"{key} holds {actual!r}, its leg says {old!r}")

    def _account(self, key: str, new: bytes | None, old: Callable[[], bytes | None]) -> None:
        """Move the counters by the key's delta; ``old`` (its current value) is asked for
        only when the key is an amount key the counters cover (no read otherwise)."""
        family, _, rest = key.partition("/")
        field = _TALLY_FIELD.get(family)
        sec_hex, _, word = rest.partition("/")
        if field is None or not word:
            return
        if not _counts(self._inner, family, sec_hex, key):
            return
        delta = _amount_of(family, new) - _amount_of(family, old())
        if delta:
            shard = self._shard.setdefault(sec_hex, _shard_of(key))
            _tally_add(self._inner, sec_hex, shard, field, delta)


def _shard_of(key: str) -> str:
    """The counter shard of an amount key: its last word (a transfer id or an address,
    lowercase hex) modulo TALLY_SHARDS, as two hex digits."""
    return f"{int(key.rsplit('/', 1)[1][:2], 16) % TALLY_SHARDS:02x}"


def _counts(kv: KeyValue, family: str, sec_hex: str, key: str) -> bool:
    """True when the counters of ``sec_hex`` include ``key`` (done, or behind the cursor)."""
    raw = kv.get(_tally_state_key(sec_hex))
    if raw is None:
        return False
    state = json.loads(raw)
    if state.get("done") is True:
        return True
    at = int(state["family"])
    return _FAMILY_INDEX[family] < at or (
        _FAMILY_INDEX[family] == at and key <= str(state["after"])
    )


TALLY_SHARD_BOUND = 2**248
"""---- counter bounds (review F12): a shard's field stays strictly within +-2**248, so
every figure (a sum of 64 shards) and total_supply (three such sums) stays below 2**256."""

TALLY_VERSION = 1
"""The counting scheme of this code; a state stamped with another (``"v"``, absent = 1) is
refused (SupplyNotCounted) until recounted: counters kept by another scheme are not trusted."""


def _tally_shard_keys(sec_hex: str) -> list[str]:
    return [f"tally/{sec_hex}/{shard:02x}" for shard in range(TALLY_SHARDS)]


def _tally_add(kv: KeyValue, sec_hex: str, shard: str, field: str, delta: int) -> None:
    """Add ``delta`` to one shard's field. SECURITY (review F12): Overflow, and nothing
    written by the call, when the field would leave +-TALLY_SHARD_BOUND: the counters' sums
    can never reach 2**256, a figure no uint256 supply record could carry."""
    key = f"tally/{sec_hex}/{shard}"
    raw = kv.get(key)
    record: dict[str, str] = json.loads(raw) if raw is not None else {}
    value = int(record.get(field, "0")) + delta
    if not -TALLY_SHARD_BOUND < value < TALLY_SHARD_BOUND:
        raise ChaincodeError(
            "Overflow", f"securityId=0x{sec_hex}, {field} counter outside +-2**248 (refused)"
        )
    record[field] = str(value)
    kv.put(key, canonical_json(record))


def _tally_figures(kv: KeyValue, sec: bytes) -> dict[str, int]:
    """The security's supply figures from its counters (TALLY_SHARDS + 1 point reads).

    SECURITY: exact or refused: SupplyNotCounted unless the counters are complete."""
    sec_hex = sec.hex()
    raw = kv.get(_tally_state_key(sec_hex))
    state = json.loads(raw) if raw is not None else None
    if state is None or state.get("done") is not True:
        where = "not started" if state is None else f"at {state['family']}/{state['after']}"
        raise ChaincodeError(
            "SupplyNotCounted", f"securityId={_hex(sec)}, counting {where}: run CountSupply"
        )
    if state.get("v", 1) != TALLY_VERSION:  # ---- counter bounds: another scheme's counters
        raise ChaincodeError(
            "SupplyNotCounted",
            f"securityId={_hex(sec)}, counted by scheme {state.get('v')}, not"
            f" {TALLY_VERSION}: run RecountSupply, then CountSupply",
        )
    sums = dict.fromkeys(_tally_core.COUNTER_FIELDS, 0)
    for shard in range(TALLY_SHARDS):
        record = kv.get(f"tally/{sec_hex}/{shard:02x}")
        if record is not None:
            for field, value in _tally_core.shard_counters(record).items():
                sums[field] += value
    if any(v < 0 for v in sums.values()):  # a broken invariant, never a figure
        raise AssertionError(f"negative supply counter for {_hex(sec)}: {sums}")
    figures = _tally_core.figures_of(sums)
    if any(v >= UINT256_LIMIT for v in figures.values()):  # ---- counter bounds: never
        raise ChaincodeError("Overflow", f"securityId={_hex(sec)}, a figure >= 2**256")
    return figures


def _counting_json(state: Mapping[str, Any] | None) -> dict[str, Any]:
    if state is None:
        return {"done": False, "family": TALLY_FAMILIES[0][0], "after": ""}
    if state.get("done") is True:
        return {"done": True, "family": "", "after": ""}
    return {
        "done": False,
        "family": TALLY_FAMILIES[int(state["family"])][0],
        "after": str(state["after"]),
    }


# ----------------------------------------------------------------------------- dispatch

# function name -> (method name, number of string arguments, changes state)
FUNCTIONS: Mapping[str, tuple[str, int, bool]] = {
    "Init": ("init", 5, True),
    "SetRelayer": ("set_relayer", 2, True),
    # ---- admin
    "SetAdmin": ("set_admin", 1, True),
    "ProposeAdminChange": ("propose_admin_change", 2, True),
    "ApproveAdminChange": ("approve_admin_change", 1, True),
    "Proposal": ("proposal", 1, False),
    # ---- parking
    "ReleaseParked": ("release_parked", 2, True),
    "Parked": ("parked", 1, False),
    # ----
    "SetInstructor": ("set_instructor", 2, True),
    "RegisterSecurity": ("register_security", 1, True),
    "SetEligible": ("set_eligible", 3, True),
    "SetFrozen": ("set_frozen", 3, True),
    "SetPaused": ("set_paused", 2, True),
    "Issue": ("issue", 3, True),
    "Redeem": ("redeem", 3, True),
    "Lock": ("lock", 2, True),
    "Prepare": ("prepare", 2, True),
    "MarkExpired": ("mark_expired", 2, True),
    "Commit": ("commit", 2, True),
    "Abort": ("abort", 2, True),
    "GetLeg": ("get_leg", 2, False),
    "HolderStatus": ("holder_status", 2, False),
    "Supply": ("supply", 1, False),
    "Committee": ("committee", 0, False),
    "Info": ("info", 0, False),
    "IsRelayer": ("is_relayer", 1, False),
    "IsInstructor": ("is_instructor", 1, False),
    "WhoAmI": ("who_am_i", 0, False),
    "Digests": ("digests", 1, False),
    "ClaimDigest": ("claim_digest_of", 4, False),
    "InstructionDigest": ("instruction_digest_of", 1, False),
    # ---- committee rotation
    "RotateCommittee": ("rotate_committee", 2, True),
    "Committees": ("committees", 0, False),
    # ---- flow limits (ADR 0010)
    "SetFlowLimit": ("set_flow_limit", 8, True),
    "FlowStatus": ("flow_status", 2, False),
    "NotBefore": ("not_before", 1, False),
    # ---- exact reads (issue 14)
    "CountSupply": ("count_supply", 2, True),
    "SupplyCounting": ("supply_counting", 1, False),
    "RecountSupply": ("recount_supply", 1, True),
    # ---- depository halt
    "SetDepository": ("set_depository", 1, True),
    "ApplyOrder": ("apply_order", 2, True),
    "HaltStatus": ("halt_status", 1, False),
    "OrderDigest": ("order_digest_of", 1, False),
    # ---- batch (issue 14 items 2-4)
    "Legs": ("legs", 2, False),
    "HolderStatuses": ("holder_statuses", 2, False),
    "LockBatch": ("lock_batch", 1, True),
    "PrepareBatch": ("prepare_batch", 2, True),
    "CommitBatch": ("commit_batch", 2, True),
    "AbortBatch": ("abort_batch", 2, True),
}


def execute(store: KeyValue, ctx: Context, function: str, args: Sequence[str], emit: Emit) -> bytes:
    """Run one chaincode call; return its JSON result or raise :class:`ChaincodeError`.

    The store is written, and ``emit`` called (at most once: a leg transition or a committee
    rotation), only when the call succeeds.
    """
    entry = FUNCTIONS.get(function)
    if entry is None:
        raise ChaincodeError("UnknownFunction", f"function={function!r}")
    method, arity, _ = entry
    if len(args) != arity:
        raise _invalid(f"{function} takes {arity} arguments, got {len(args)}")
    if not all(isinstance(a, str) for a in args):
        raise _invalid("arguments must be strings")
    buffer = _Buffer(store)
    events: list[tuple[str, bytes]] = []
    endpoint = Endpoint(buffer, ctx, lambda name, payload: events.append((name, payload)))
    result = getattr(endpoint, method)(*args)
    if len(events) > 1:  # Fabric carries one event per transaction
        raise AssertionError(f"{function} produced {len(events)} events")
    buffer.flush()
    for name, payload in events:
        emit(name, payload)
    return canonical_json(result)
