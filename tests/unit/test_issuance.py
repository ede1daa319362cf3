"""The supply operator's instructions: digests, signatures, validation and freshness."""

from __future__ import annotations

import json
import secrets
from dataclasses import replace

import pytest

from bridge.domain.committee import SECP256K1_N
from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.hashing import keccak256
from bridge.domain.issuance import (
    MAX_NOTE,
    OPERATOR_TAG,
    HoldRelease,
    Registration,
    check_fresh,
    sign_instruction,
    verify_instruction,
)
from bridge.domain.signer import LocalKeySigner

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"
OTHER_ISIN = "KR7005930003"
T0 = 1_700_000_000_000


def new_signer() -> LocalKeySigner:
    return LocalKeySigner(secrets.token_bytes(32))


@pytest.fixture
def operator() -> LocalKeySigner:
    return new_signer()


def registration(**changes: object) -> Registration:
    base = Registration(ISIN, 3, (("brokerage-a", 1000), ("brokerage-b", 250)), T0, "q3")
    return replace(base, **changes) if changes else base


def release(**changes: object) -> HoldRelease:
    base = HoldRelease(ISIN, 7, T0, "reconciled")
    return replace(base, **changes) if changes else base


# -- digests -------------------------------------------------------------------------------


def test_registration_digest_is_the_tagged_canonical_json() -> None:
    reg = registration()
    body = {
        "kind": "register",
        "security": ISIN,
        "version": 3,
        "totals": {"brokerage-a": "1000", "brokerage-b": "250"},
        "issued_at_ms": T0,
        "note": "q3",
    }
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert reg.digest == keccak256(OPERATOR_TAG + b"\0" + data)
    assert len(reg.digest) == 32


def test_release_digest_is_the_tagged_canonical_json() -> None:
    rel = release()
    body = {
        "kind": "release-hold",
        "security": ISIN,
        "hold_sequence": 7,
        "issued_at_ms": T0,
        "note": "reconciled",
    }
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert rel.digest == keccak256(OPERATOR_TAG + b"\0" + data)


def test_register_and_release_digests_are_domain_separated() -> None:
    """Same security, same number, same time, same note: the kinds still differ."""
    reg = Registration(ISIN, 5, (("a", 5),), T0, "n")
    rel = HoldRelease(ISIN, 5, T0, "n")
    assert reg.digest != rel.digest
    # The operator tag separates instructions from every other digest the bridge signs.
    untagged = json.dumps(
        {
            "kind": "release-hold",
            "security": ISIN,
            "hold_sequence": 5,
            "issued_at_ms": T0,
            "note": "n",
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert rel.digest != keccak256(untagged)
    assert rel.digest == keccak256(OPERATOR_TAG + b"\0" + untagged)


def test_digest_is_deterministic() -> None:
    assert registration().digest == registration().digest
    assert release().digest == release().digest


@pytest.mark.parametrize(
    "changes",
    [
        {"security": OTHER_ISIN},
        {"version": 4},
        {"totals": (("brokerage-a", 1001), ("brokerage-b", 250))},
        {"totals": (("brokerage-a", 1000), ("brokerage-c", 250))},
        {"totals": (("brokerage-a", 1000),)},
        {"totals": (("brokerage-a", 1000), ("brokerage-b", 250), ("brokerage-c", 0))},
        {"issued_at_ms": T0 + 1},
        {"note": "q4"},
        {"note": ""},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_registration_field_changes_the_digest(changes: dict[str, object]) -> None:
    assert registration(**changes).digest != registration().digest


@pytest.mark.parametrize(
    "changes",
    [
        {"security": OTHER_ISIN},
        {"hold_sequence": 8},
        {"issued_at_ms": T0 + 1},
        {"note": "other"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_release_field_changes_the_digest(changes: dict[str, object]) -> None:
    assert release(**changes).digest != release().digest


# -- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [registration, release], ids=["registration", "release"])
def test_sign_and_verify_round_trip(operator: LocalKeySigner, make) -> None:
    instruction = make()
    sig = sign_instruction(operator, instruction)
    assert len(sig) == 65
    assert sig[64] in (27, 28)
    other_operator = new_signer()
    assert (
        verify_instruction({other_operator.address, operator.address}, instruction, sig)
        == operator.address
    )


def test_a_key_that_is_not_an_operator_is_refused(operator: LocalKeySigner) -> None:
    outsider = new_signer()
    reg = registration()
    sig = sign_instruction(outsider, reg)
    with pytest.raises(InvalidCertificate, match="is not a supply operator") as info:
        verify_instruction({operator.address}, reg, sig)
    assert outsider.address.hex() in str(info.value)


def test_no_operators_refuses_everything(operator: LocalKeySigner) -> None:
    reg = registration()
    with pytest.raises(InvalidCertificate, match="is not a supply operator"):
        verify_instruction((), reg, sign_instruction(operator, reg))


@pytest.mark.parametrize(
    ("signed", "presented"),
    [
        (registration(), registration(version=4)),
        (registration(), registration(totals=(("brokerage-a", 9999), ("brokerage-b", 250)))),
        (release(), release(hold_sequence=8)),
        (registration(version=7), release(hold_sequence=7)),
    ],
    ids=["other-version", "other-totals", "other-hold", "registration-as-release"],
)
def test_a_signature_over_another_instruction_is_refused(
    operator: LocalKeySigner, signed, presented
) -> None:
    sig = sign_instruction(operator, signed)
    assert verify_instruction({operator.address}, signed, sig) == operator.address
    with pytest.raises(InvalidCertificate, match="is not a supply operator"):
        verify_instruction({operator.address}, presented, sig)


def test_a_high_s_signature_is_refused(operator: LocalKeySigner) -> None:
    reg = registration()
    sig = sign_instruction(operator, reg)
    s = int.from_bytes(sig[32:64], "big")
    # The malleated twin (n - s, flipped v) is a valid ECDSA signature by the same key.
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(InvalidCertificate, match="high-s"):
        verify_instruction({operator.address}, reg, high)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda sig: sig[:64], "65 bytes"),
        (lambda sig: sig + b"\0", "65 bytes"),
        (lambda sig: b"", "65 bytes"),
        (lambda sig: sig[:64] + bytes([29]), "v must be 27 or 28"),
        (lambda sig: sig[:64] + bytes([0]), "v must be 27 or 28"),
        (lambda sig: b"\0" * 32 + sig[32:], "out of range"),
        (lambda sig: sig[:32] + b"\0" * 32 + sig[64:], "out of range"),
    ],
    ids=["short", "long", "empty", "v29", "v0", "r0", "s0"],
)
def test_malformed_signatures_are_refused(operator: LocalKeySigner, mangle, message) -> None:
    reg = registration()
    sig = sign_instruction(operator, reg)
    with pytest.raises(InvalidCertificate, match=message):
        verify_instruction({operator.address}, reg, mangle(sig))


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 0}, "version starts at 1"),
        ({"version": -1}, "version starts at 1"),
        ({"totals": ()}, "at least one ledger"),
        ({"totals": (("b", 1), ("a", 1))}, "sorted and distinct"),
        ({"totals": (("a", 1), ("a", 2))}, "sorted and distinct"),
        ({"totals": (("a", 1), ("b", -1))}, "must not be negative"),
        ({"security": "KR5701ES0017"}, "not a valid ISIN"),
        ({"security": "kr5701es0016"}, "not a valid ISIN"),
        ({"security": ""}, "not a valid ISIN"),
        ({"issued_at_ms": 0}, "issued_at_ms must be set"),
        ({"note": "x" * (MAX_NOTE + 1)}, f"at most {MAX_NOTE} characters"),
    ],
    ids=[
        "version0",
        "version-negative",
        "empty-totals",
        "unsorted",
        "duplicate",
        "negative-units",
        "bad-check-digit",
        "lowercase-isin",
        "empty-isin",
        "no-time",
        "note-too-long",
    ],
)
def test_registration_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "security": ISIN,
        "version": 1,
        "totals": (("a", 1), ("b", 0)),
        "issued_at_ms": T0,
        "note": "",
    }
    args.update(kwargs)
    with pytest.raises(InvalidInput, match=message):
        Registration(**args)  # type: ignore[arg-type]


def test_registration_limits_that_are_allowed() -> None:
    reg = Registration(ISIN, 1, (("a", 0),), T0, "x" * MAX_NOTE)
    assert reg.total == 0
    assert len(reg.note) == MAX_NOTE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hold_sequence": 0}, "hold_sequence names the record"),
        ({"security": "US0378331006"}, "not a valid ISIN"),
        ({"issued_at_ms": -5}, "issued_at_ms must be set"),
        ({"note": "y" * (MAX_NOTE + 1)}, "at most"),
    ],
    ids=["hold0", "bad-isin", "negative-time", "note-too-long"],
)
def test_release_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "security": ISIN,
        "hold_sequence": 1,
        "issued_at_ms": T0,
        "note": "",
    }
    args.update(kwargs)
    with pytest.raises(InvalidInput, match=message):
        HoldRelease(**args)  # type: ignore[arg-type]


def test_registration_of_sorts_the_totals() -> None:
    reg = Registration.of(ISIN, 2, {"zeta": 5, "alpha": 7, "mid": 0}, T0, "n")
    assert reg.totals == (("alpha", 7), ("mid", 0), ("zeta", 5))
    assert reg.total == 12
    assert reg.version == 2
    assert reg.note == "n"
    assert reg == Registration(ISIN, 2, (("alpha", 7), ("mid", 0), ("zeta", 5)), T0, "n")
    assert reg.digest == Registration.of(ISIN, 2, {"mid": 0, "zeta": 5, "alpha": 7}, T0, "n").digest


def test_registration_of_still_validates() -> None:
    with pytest.raises(InvalidInput, match="must not be negative"):
        Registration.of(ISIN, 1, {"a": -1}, T0)
    with pytest.raises(InvalidInput, match="at least one ledger"):
        Registration.of(ISIN, 1, {}, T0)


# -- freshness -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [registration, release], ids=["registration", "release"])
def test_check_fresh_accepts_within_the_window(make) -> None:
    instruction = make()
    for now in (T0, T0 + 60_000, T0 - 60_000):
        assert check_fresh(instruction, now, 60_000) is None


def test_check_fresh_rejects_expired() -> None:
    with pytest.raises(InvalidInput, match=r"instruction expired: issued 60 s ago"):
        check_fresh(registration(), T0 + 60_001, 60_000)
    with pytest.raises(InvalidInput, match=r"issued 3600 s ago"):
        check_fresh(release(), T0 + 3_600_000, 60_000)


def test_check_fresh_rejects_future_dated() -> None:
    with pytest.raises(InvalidInput, match="dated in the future"):
        check_fresh(registration(), T0 - 60_001, 60_000)
    with pytest.raises(InvalidInput, match="dated in the future"):
        check_fresh(release(), T0 - 10**9, 60_000)
