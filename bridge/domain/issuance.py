"""The depository's operator instructions: registered issuance and releasing a hold.

Registered totals are what the depository says exists; the bridge only reflects them.
Every change is an instruction signed by a supply operator key named in the network file,
over a domain-separated digest, so neither the coordinator nor a verifier can invent one:

- a :class:`Registration` states, per ledger, the units issued there outside the bridge.
  Its version is one more than the version it replaces (compare-and-set), so a replayed or
  stale registration is refused.
- a :class:`HoldRelease` lifts the hold raised by one named record, so it cannot be
  replayed against a later hold.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bridge.domain.committee import recover_signer
from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.hashing import keccak256
from bridge.domain.ids import SecurityId
from bridge.domain.signer import Signer

OPERATOR_TAG = b"KSTB/supply-operator/v1"
MAX_NOTE = 500


def _digest(kind: str, body: Mapping[str, object]) -> bytes:
    data = json.dumps({"kind": kind, **body}, sort_keys=True, separators=(",", ":"))
    return keccak256(OPERATOR_TAG + b"\0" + data.encode("utf-8"))


def _check_common(security: str, issued_at_ms: int, note: str) -> None:
    SecurityId(security)  # raises InvalidInput for a malformed ISIN
    if issued_at_ms <= 0:
        raise InvalidInput("issued_at_ms must be set")
    if len(note) > MAX_NOTE:
        raise InvalidInput(f"note must be at most {MAX_NOTE} characters")


@dataclass(frozen=True, slots=True)
class Registration:
    """Units of one security issued on each ledger, as registered by the depository."""

    security: str
    version: int
    totals: tuple[tuple[str, int], ...]
    issued_at_ms: int
    note: str = ""

    def __post_init__(self) -> None:
        _check_common(self.security, self.issued_at_ms, self.note)
        if self.version < 1:
            raise InvalidInput("registration version starts at 1")
        names = [name for name, _ in self.totals]
        if not names:
            raise InvalidInput("a registration names at least one ledger")
        if any(not name for name in names):
            raise InvalidInput("registration ledger ids must not be empty")
        if names != sorted(set(names)):
            raise InvalidInput("registration ledgers must be sorted and distinct")
        if any(units < 0 for _, units in self.totals):
            raise InvalidInput("registered units must not be negative")

    @classmethod
    def of(
        cls,
        security: str,
        version: int,
        totals: Mapping[str, int],
        issued_at_ms: int,
        note: str = "",
    ) -> Registration:
        """Build one with ``totals`` in canonical (sorted) order."""
        return cls(security, version, tuple(sorted(totals.items())), issued_at_ms, note)

    @property
    def total(self) -> int:
        """Units registered across all ledgers."""
        return sum(units for _, units in self.totals)

    @property
    def digest(self) -> bytes:
        """What the operator signs."""
        return _digest(
            "register",
            {
                "security": self.security,
                "version": self.version,
                "totals": {name: str(units) for name, units in self.totals},
                "issued_at_ms": self.issued_at_ms,
                "note": self.note,
            },
        )


@dataclass(frozen=True, slots=True)
class HoldRelease:
    """Lift the hold on a security that record ``hold_sequence`` raised."""

    security: str
    hold_sequence: int
    issued_at_ms: int
    note: str = ""

    def __post_init__(self) -> None:
        _check_common(self.security, self.issued_at_ms, self.note)
        if self.hold_sequence < 1:
            raise InvalidInput("hold_sequence names the record that raised the hold")

    @property
    def digest(self) -> bytes:
        """What the operator signs."""
        return _digest(
            "release-hold",
            {
                "security": self.security,
                "hold_sequence": self.hold_sequence,
                "issued_at_ms": self.issued_at_ms,
                "note": self.note,
            },
        )


def sign_instruction(signer: Signer, instruction: Registration | HoldRelease) -> bytes:
    """The operator's 65-byte signature over the instruction's digest."""
    return signer.sign_digest(instruction.digest)


def verify_instruction(
    operators: Collection[bytes],
    instruction: Registration | HoldRelease,
    signature: bytes,
) -> bytes:
    """Return the operator address that signed ``instruction``.

    Raises InvalidCertificate when the signature is malformed or its signer is not one of
    ``operators``.
    """
    signer = recover_signer(instruction.digest, signature)
    if signer not in operators:
        raise InvalidCertificate(f"0x{signer.hex()} is not a supply operator of this network")
    return signer


def check_fresh(instruction: Registration | HoldRelease, now_ms: int, max_age_ms: int) -> None:
    """Refuse an instruction issued more than ``max_age_ms`` ago, or dated more than
    ``max_age_ms`` ahead (the same window absorbs clock skew both ways)."""
    age = now_ms - instruction.issued_at_ms
    if age > max_age_ms:
        raise InvalidInput(f"instruction expired: issued {age // 1000} s ago")
    if age < -max_age_ms:
        raise InvalidInput("instruction is dated in the future")
