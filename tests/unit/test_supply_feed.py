"""The supply feed's pure logic: canonical parsing, protobuf conversion, the hold policy
and the depository's FeedVerifier."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from bridge.domain.committee import Committee
from bridge.domain.errors import InvalidInput
from bridge.domain.issuance import HoldRelease, Registration
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import (
    GENESIS_HASH,
    Attestation,
    SignedRecord,
    SupplyReading,
    SupplyRecord,
    assess,
    balance,
    make_record,
    record_from_canonical,
    verify_records,
)
from bridge.rpc.supply_convert import (
    attestation_from_pb,
    attestation_to_pb,
    reading_from_pb,
    reading_to_pb,
    record_from_pb,
    record_to_pb,
    registration_from_pb,
    registration_to_pb,
    release_from_pb,
    release_to_pb,
)
from bridge.supply_client import FeedVerifier
from bridge.v1 import supply_pb2

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"
OTHER_ISIN = "US0378331005"
T0 = 1_700_000_000_000


def reading(
    ledger: str,
    total: int,
    escrowed: int = 0,
    burned: int = 0,
    minted: int = 0,
    height: int = 7,
    prepared: int = 0,
) -> SupplyReading:
    return SupplyReading(
        ledger, height, bytes([height % 256]) * 32, total, escrowed, prepared, burned, minted
    )


@pytest.fixture
def committee() -> tuple[Committee, list[LocalKeySigner]]:
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    return Committee(1, 3, tuple(s.address for s in signers)), signers


def sign(record: SupplyRecord, signers: list[LocalKeySigner]) -> SignedRecord:
    return SignedRecord(record, tuple(s.sign_digest(record.digest) for s in signers))


def attest(signed: SignedRecord, feed_sequence: int, alerts: tuple[str, ...] = ()) -> Attestation:
    return Attestation(feed_sequence, signed, alerts, False, "", 1_700_000_000.0)


def rich_record() -> SupplyRecord:
    """Two ledgers mid-transfer, a discrepancy of each sign, a partition and a version."""
    return make_record(
        ISIN,
        5,
        bytes(range(32)),
        2,
        T0 + 5,
        [
            reading("brokerage-b", 260, escrowed=10, burned=0, minted=250, height=99, prepared=3),
            reading("brokerage-a", 740, escrowed=40, burned=250, height=12_345),
        ],
        {"brokerage-a": 1000, "brokerage-b": 0},
        registration_version=3,
        partition="common",
    )


def chain_of(
    signers: list[LocalKeySigner],
    security: str,
    specs: list[tuple[list[SupplyReading], dict[str, int], int]],
    start: int = 1,
    previous: bytes = GENESIS_HASH,
) -> list[SignedRecord]:
    """Properly linked, t-of-n signed records; each spec is (readings, registered, version)."""
    out: list[SignedRecord] = []
    prev = previous
    for i, (cut, registered, version) in enumerate(specs):
        r = make_record(
            security,
            start + i,
            prev,
            1,
            T0 + start + i,
            cut,
            registered,
            registration_version=version,
        )
        out.append(sign(r, signers[:3]))
        prev = r.digest
    return out


def balanced_chain(
    signers: list[LocalKeySigner], n: int, security: str = ISIN
) -> list[SignedRecord]:
    specs = [
        (
            [reading("a", 1000 - seq, burned=seq), reading("b", seq, minted=seq)],
            {"a": 1000, "b": 0},
            1,
        )
        for seq in range(1, n + 1)
    ]
    return chain_of(signers, security, specs)


# -- record_from_canonical ------------------------------------------------------------------


def test_rich_record_has_the_expected_figures() -> None:
    r = rich_record()
    assert [x.ledger for x in r.readings] == ["brokerage-a", "brokerage-b"]
    # a: net 740 + 250 = 990 (-10); b: net 260 - 250 = 10 (+10); the total balances.
    assert r.ledger_discrepancies == (("brokerage-a", -10), ("brokerage-b", 10))
    assert r.discrepancy == 0
    assert r.in_transit == 40 + 250 + 10 - 250


def test_record_from_canonical_round_trips() -> None:
    r = rich_record()
    parsed = record_from_canonical(r.canonical())
    assert parsed == r
    assert parsed.canonical() == r.canonical()
    assert parsed.digest == r.digest
    assert parsed.readings[1].prepared == 3
    assert parsed.registration_version == 3
    assert parsed.partition == "common"


def test_record_from_canonical_round_trips_a_negative_total_discrepancy() -> None:
    r = make_record(ISIN, 1, GENESIS_HASH, 1, T0, [reading("a", 990)], {"a": 1000})
    assert r.discrepancy == -10
    parsed = record_from_canonical(r.canonical())
    assert parsed == r
    assert parsed.discrepancy == -10
    assert parsed.ledger_discrepancies == (("a", -10),)


def _body(r: SupplyRecord) -> dict[str, Any]:
    return json.loads(r.canonical())


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_record_from_canonical_rejects_reordered_keys() -> None:
    body = _body(rich_record())
    reordered = json.dumps(dict(reversed(list(body.items()))), separators=(",", ":")).encode()
    assert json.loads(reordered) == body
    with pytest.raises(InvalidInput, match="not in canonical form"):
        record_from_canonical(reordered)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: json.dumps(json.loads(b), sort_keys=True).encode(),  # ", " and ": "
        lambda b: b + b"\n",
        lambda b: b" " + b,
        lambda b: json.dumps(
            json.loads(b), sort_keys=True, separators=(",", ":"), indent=1
        ).encode(),
    ],
    ids=["default-separators", "trailing-newline", "leading-space", "indented"],
)
def test_record_from_canonical_rejects_extra_whitespace(mangle: Callable[[bytes], bytes]) -> None:
    data = rich_record().canonical()
    altered = mangle(data)
    assert altered != data
    with pytest.raises(InvalidInput, match="not in canonical form"):
        record_from_canonical(altered)


def test_record_from_canonical_rejects_non_canonical_integers() -> None:
    body = _body(rich_record())
    body["ledgers"][0]["total_supply"] = "0740"  # parses to 740, but is not how 740 is written
    body["ledgers"][0]["free"] = "700"
    with pytest.raises(InvalidInput, match="not in canonical form"):
        record_from_canonical(_canonical(body))


def test_record_from_canonical_rejects_a_wrong_free() -> None:
    body = _body(rich_record())
    assert body["ledgers"][0]["free"] == "700"
    body["ledgers"][0]["free"] = "701"
    with pytest.raises(
        InvalidInput, match="ledger brokerage-a: free is not total_supply - escrowed"
    ):
        record_from_canonical(_canonical(body))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("previous_hash",), "0x" + "ab" * 31, "previous_hash must be 0x and 64 hex digits"),
        (("previous_hash",), "ab" * 33, "previous_hash must be 0x and 64 hex digits"),
        (("previous_hash",), "0x" + "zz" * 32, "previous_hash must be 0x and 64 hex digits"),
        (("previous_hash",), None, "previous_hash must be 0x and 64 hex digits"),
        (("ledgers", 0, "block_hash"), "0x" + "00" * 33, "block_hash must be 0x and 64 hex digits"),
        (("ledgers", 1, "block_hash"), "0X" + "00" * 32, "block_hash must be 0x and 64 hex digits"),
        (("ledgers", 0, "total_supply"), 740, "total_supply must be a decimal string"),
        (("ledgers", 0, "escrowed"), "4O", "escrowed must be a decimal string"),
        (("in_transit"), "", "in_transit must be a decimal string"),
        (("registered", "brokerage-a"), "1e3", "registered must be a decimal string"),
        (
            ("ledger_discrepancies", "brokerage-b"),
            10,
            "ledger discrepancy must be a decimal string",
        ),
    ],
)
def test_record_from_canonical_rejects_malformed_fields(
    path: tuple[Any, ...] | str, value: object, message: str
) -> None:
    body = _body(rich_record())
    keys = (path,) if isinstance(path, str) else path
    target: Any = body
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    with pytest.raises(InvalidInput, match=re.escape(message)):
        record_from_canonical(_canonical(body))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"security":"KR5701ES0016"}',
        b"\xff\xfe",
    ],
    ids=["empty", "garbage", "list", "empty-object", "missing-keys", "not-utf8"],
)
def test_record_from_canonical_rejects_non_records(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="not a canonical supply record"):
        record_from_canonical(data)


def test_record_from_canonical_rejects_escrow_above_total() -> None:
    body = _body(rich_record())
    body["ledgers"][0]["escrowed"] = "741"
    body["ledgers"][0]["free"] = "-1"
    with pytest.raises(InvalidInput, match="escrow cannot exceed total supply"):
        record_from_canonical(_canonical(body))


# -- supply_convert ---------------------------------------------------------------------------


def test_reading_round_trip() -> None:
    r = reading("brokerage-a", 10**30, escrowed=7, burned=3, minted=2, height=2**40, prepared=9)
    m = reading_to_pb(r)
    assert m.free == str(10**30 - 7)
    assert m.total_supply == str(10**30)
    assert reading_from_pb(m) == r


def test_record_round_trip() -> None:
    r = rich_record()
    m = record_to_pb(r)
    assert m.digest == r.digest
    assert [x.ledger_id for x in m.ledgers] == ["brokerage-a", "brokerage-b"]
    assert [(u.ledger_id, u.units) for u in m.ledger_discrepancies] == [
        ("brokerage-a", "-10"),
        ("brokerage-b", "10"),
    ]
    back = record_from_pb(m)
    assert back == r
    assert back.digest == r.digest
    # It survives the wire, too.
    again = record_from_pb(supply_pb2.SupplyRecord.FromString(m.SerializeToString()))
    assert again.canonical() == r.canonical()


def test_record_from_pb_recomputes_the_digest_and_sorts() -> None:
    r = rich_record()
    m = record_to_pb(r)
    m.digest = b"\x11" * 32  # informational only
    ledgers = list(m.ledgers)
    del m.ledgers[:]
    m.ledgers.extend(reversed(ledgers))
    registered = list(m.registered)
    del m.registered[:]
    m.registered.extend(reversed(registered))
    back = record_from_pb(m)
    assert back.digest == r.digest
    assert back == r


def test_registration_round_trip() -> None:
    reg = Registration.of(ISIN, 4, {"brokerage-b": 5, "brokerage-a": 10**25}, T0, "note")
    sig = bytes(range(65))
    m = registration_to_pb(reg, sig)
    assert [(u.ledger_id, u.units) for u in m.registration.totals] == [
        ("brokerage-a", str(10**25)),
        ("brokerage-b", "5"),
    ]
    assert registration_from_pb(m) == (reg, sig)
    wire = supply_pb2.SignedRegistration.FromString(m.SerializeToString())
    back, back_sig = registration_from_pb(wire)
    assert back.digest == reg.digest
    assert back_sig == sig


def test_release_round_trip() -> None:
    rel = HoldRelease(ISIN, 12, T0, "reversed the mint")
    sig = b"\x07" * 65
    m = release_to_pb(rel, sig)
    assert m.release.hold_sequence == 12
    assert release_from_pb(m) == (rel, sig)
    assert release_from_pb(m)[0].digest == rel.digest


@pytest.mark.parametrize("published_at", [1_700_000_000.0, 1_700_000_123.5])
def test_attestation_round_trip(published_at: float) -> None:
    signed = SignedRecord(rich_record(), (b"\x01" * 65, b"\x02" * 65))
    a = Attestation(
        42, signed, ("hold: x", "note: y"), True, "held since record #3: x", published_at
    )
    back = attestation_from_pb(attestation_to_pb(a))
    assert back.feed_sequence == 42
    assert back.signed == signed
    assert back.alerts == ("hold: x", "note: y")
    assert back.held is True
    assert back.hold_reason == "held since record #3: x"
    assert back.published_at == pytest.approx(published_at, abs=1e-6)


def _reading_pb(**changes: Any) -> supply_pb2.LedgerSupply:
    m = reading_to_pb(reading("brokerage-a", 1000, escrowed=100))
    for key, value in changes.items():
        setattr(m, key, value)
    return m


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"total_supply": "12a"},
            "ledgers.total_supply must be a decimal integer string, got '12a'",
        ),
        ({"total_supply": ""}, "ledgers.total_supply must be a decimal integer string"),
        ({"total_supply": "1_000"}, "ledgers.total_supply must be a decimal integer string"),
        ({"total_supply": " 1000"}, "ledgers.total_supply must be a decimal integer string"),
        ({"total_supply": "1" * 79}, "ledgers.total_supply must be a decimal integer string"),
        ({"total_supply": "\uff11\uff10"}, "ledgers.total_supply must be a decimal integer string"),
        ({"escrowed": "-1"}, "ledgers.escrowed must be a decimal integer string, got '-1'"),
        ({"prepared": "+1"}, "ledgers.prepared must be a decimal integer string"),
        ({"burned_out": "1.0"}, "ledgers.burned_out must be a decimal integer string"),
        ({"minted_in": "0x10"}, "ledgers.minted_in must be a decimal integer string"),
        ({"free": "x"}, "ledgers.free must be a decimal integer string"),
        ({"block_hash": b"\0" * 31}, "ledgers.block_hash must be 32 bytes"),
        ({"block_hash": b""}, "ledgers.block_hash must be 32 bytes"),
        ({"ledger_id": ""}, "ledgers.ledger_id is required"),
        ({"free": "901"}, "ledger brokerage-a: free is not total_supply - escrowed"),
        ({"escrowed": "1001", "free": ""}, "escrow cannot exceed total supply"),
    ],
)
def test_reading_from_pb_rejects_malformed_fields(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        reading_from_pb(_reading_pb(**changes))


def test_reading_from_pb_accepts_the_longest_units_and_an_absent_free() -> None:
    assert reading_from_pb(_reading_pb(total_supply="9" * 78, free="")).total_supply == int(
        "9" * 78
    )
    # free is derived; when absent it is computed, never taken from the wire.
    assert reading_from_pb(_reading_pb(free="")).free == 900


def _record_pb() -> supply_pb2.SupplyRecord:
    return record_to_pb(rich_record())


def test_record_from_pb_rejects_malformed_fields() -> None:
    m = _record_pb()
    m.previous_hash = b"\0" * 31
    with pytest.raises(InvalidInput, match=re.escape("record.previous_hash must be 32 bytes")):
        record_from_pb(m)

    m = _record_pb()
    m.security_id = ""
    with pytest.raises(InvalidInput, match=re.escape("record.security_id is required")):
        record_from_pb(m)

    m = _record_pb()
    m.in_transit = "forty"
    with pytest.raises(
        InvalidInput, match=re.escape("record.in_transit must be a decimal integer string")
    ):
        record_from_pb(m)

    m = _record_pb()
    m.discrepancy = "--5"
    with pytest.raises(
        InvalidInput, match=re.escape("record.discrepancy must be a decimal integer string")
    ):
        record_from_pb(m)

    m = _record_pb()
    m.registered[0].ledger_id = ""
    with pytest.raises(InvalidInput, match=re.escape("record.registered.ledger_id is required")):
        record_from_pb(m)

    m = _record_pb()
    m.registered[1].units = "many"
    with pytest.raises(
        InvalidInput, match=re.escape("record.registered must be a decimal integer string")
    ):
        record_from_pb(m)

    m = _record_pb()
    m.ledger_discrepancies[0].ledger_id = ""
    with pytest.raises(
        InvalidInput, match=re.escape("record.ledger_discrepancies.ledger_id is required")
    ):
        record_from_pb(m)

    m = _record_pb()
    m.ledgers[1].block_hash = b"\0" * 31
    with pytest.raises(InvalidInput, match=re.escape("ledgers.block_hash must be 32 bytes")):
        record_from_pb(m)

    m = _record_pb()
    m.ledgers[0].free = "1"
    with pytest.raises(
        InvalidInput, match="ledger brokerage-a: free is not total_supply - escrowed"
    ):
        record_from_pb(m)


def test_record_from_pb_accepts_signed_figures() -> None:
    m = _record_pb()
    m.discrepancy = "-0"
    m.in_transit = "-25"
    back = record_from_pb(m)
    assert (back.discrepancy, back.in_transit) == (0, -25)


def test_registration_from_pb_rejects_malformed_fields() -> None:
    with pytest.raises(InvalidInput, match="registration is required"):
        registration_from_pb(supply_pb2.SignedRegistration(signature=b"\0" * 65))

    reg = Registration.of(ISIN, 1, {"a": 1, "b": 2}, T0)
    m = registration_to_pb(reg, b"\0" * 65)
    m.registration.totals[0].units = "1.5"
    with pytest.raises(
        InvalidInput, match=re.escape("registration.totals must be a decimal integer string")
    ):
        registration_from_pb(m)

    m = registration_to_pb(reg, b"\0" * 65)
    m.registration.totals[0].units = "-1"  # registered units are never negative
    with pytest.raises(
        InvalidInput, match=re.escape("registration.totals must be a decimal integer string")
    ):
        registration_from_pb(m)

    m = registration_to_pb(reg, b"\0" * 65)
    m.registration.totals[0].ledger_id = "c"  # unsorted: the decoder does not re-sort
    with pytest.raises(InvalidInput, match="sorted and distinct"):
        registration_from_pb(m)

    m = registration_to_pb(reg, b"\0" * 65)
    m.registration.version = 0
    with pytest.raises(InvalidInput, match="version starts at 1"):
        registration_from_pb(m)

    m = registration_to_pb(reg, b"\0" * 65)
    m.registration.security_id = "KR5701ES0017"
    with pytest.raises(InvalidInput, match="not a valid ISIN"):
        registration_from_pb(m)

    m = registration_to_pb(reg, b"\0" * 65)
    del m.registration.totals[:]
    with pytest.raises(InvalidInput, match="at least one ledger"):
        registration_from_pb(m)


def test_release_and_attestation_from_pb_reject_missing_messages() -> None:
    with pytest.raises(InvalidInput, match="release is required"):
        release_from_pb(supply_pb2.SignedHoldRelease(signature=b"\0" * 65))
    m = release_to_pb(HoldRelease(ISIN, 1, T0), b"")
    m.release.hold_sequence = 0
    with pytest.raises(InvalidInput, match="hold_sequence names the record"):
        release_from_pb(m)
    with pytest.raises(InvalidInput, match=re.escape("attestation.record is required")):
        attestation_from_pb(supply_pb2.Attestation(feed_sequence=1, signatures=[b"\0" * 65]))
    bad = attestation_to_pb(attest(SignedRecord(rich_record(), ()), 1))
    bad.record.previous_hash = b"\0" * 31
    with pytest.raises(InvalidInput, match=re.escape("record.previous_hash must be 32 bytes")):
        attestation_from_pb(bad)


# -- assess ---------------------------------------------------------------------------------


def record_with(readings: list[SupplyReading], registered: dict[str, int]) -> SupplyRecord:
    return make_record(ISIN, 1, GENESIS_HASH, 1, T0, readings, registered, registration_version=2)


def test_assess_balanced_ledgers_are_confirmed() -> None:
    r = record_with(
        [reading("a", 750, escrowed=50, burned=250), reading("b", 250, minted=250)],
        {"a": 1000, "b": 0},
    )
    a = assess(r, {"a": 1000, "b": 0})
    assert a.hold_reasons == ()
    assert a.notes == ()
    assert a.alerts == ()
    assert dict(a.confirmed) == {"a": 1000, "b": 0}


def test_assess_registered_issuance_pending_is_a_note() -> None:
    registered = {"a": 1100, "b": 0}
    confirmed = {"a": 1000, "b": 0}
    halfway = assess(record_with([reading("a", 1050), reading("b", 0)], registered), confirmed)
    assert halfway.hold_reasons == ()
    assert halfway.notes == ("a: registered issuance pending, 50 units still to issue (height 7)",)
    assert dict(halfway.confirmed) == {"b": 0}  # a is not confirmed yet
    assert halfway.alerts == halfway.notes

    # The bounds of [confirmed, registered]: nothing issued yet, and all of it issued.
    nothing = assess(
        record_with([reading("a", 1000, height=8), reading("b", 0)], registered), confirmed
    )
    assert nothing.hold_reasons == ()
    assert nothing.notes == ("a: registered issuance pending, 100 units still to issue (height 8)",)
    done = assess(record_with([reading("a", 1100), reading("b", 0)], registered), confirmed)
    assert (done.hold_reasons, done.notes) == ((), ())
    assert dict(done.confirmed) == {"a": 1100, "b": 0}


def test_assess_issuance_counts_bridge_transfers() -> None:
    """Pending issuance is judged on net issuance, not on the ledger's raw total supply."""
    registered = {"a": 1100, "b": 0}
    r = record_with([reading("a", 800, burned=250), reading("b", 250, minted=250)], registered)
    a = assess(r, {"a": 1000, "b": 0})
    assert a.hold_reasons == ()
    assert a.notes == ("a: registered issuance pending, 50 units still to issue (height 7)",)


def test_assess_registered_redemption_pending_is_a_note() -> None:
    registered = {"a": 900}
    confirmed = {"a": 1000}
    halfway = assess(record_with([reading("a", 950, height=3)], registered), confirmed)
    assert halfway.hold_reasons == ()
    assert halfway.notes == (
        "a: registered redemption pending, 50 units still to redeem (height 3)",
    )
    assert dict(halfway.confirmed) == {}
    nothing = assess(record_with([reading("a", 1000)], registered), confirmed)
    assert nothing.notes == (
        "a: registered redemption pending, 100 units still to redeem (height 7)",
    )
    assert nothing.hold_reasons == ()
    done = assess(record_with([reading("a", 900)], registered), confirmed)
    assert (done.hold_reasons, done.notes, dict(done.confirmed)) == ((), (), {"a": 900})


def test_assess_out_of_band_mint_holds() -> None:
    r = record_with([reading("a", 1000), reading("b", 5, height=11)], {"a": 1000, "b": 0})
    a = assess(r, {"a": 1000, "b": 0})
    assert a.hold_reasons == (
        "supply discrepancy on b: +5 units appeared outside the bridge"
        " (net issued 5, registered 0, height 11)",
    )
    assert a.notes == ()
    assert dict(a.confirmed) == {"a": 1000}


def test_assess_vanished_units_hold() -> None:
    r = record_with(
        [reading("a", 740, burned=250), reading("b", 250, minted=250)], {"a": 1000, "b": 0}
    )
    a = assess(r, {"a": 1000, "b": 0})
    assert a.hold_reasons == (
        "supply discrepancy on a: -10 units vanished outside the bridge"
        " (net issued 990, registered 1000, height 7)",
    )
    assert dict(a.confirmed) == {"b": 0}


@pytest.mark.parametrize(
    ("confirmed", "registered", "net", "reason"),
    [
        (
            1000,
            1100,
            1150,
            "+50 units appeared outside the bridge (net issued 1150, registered 1100",
        ),
        (
            1000,
            1100,
            999,
            "-101 units vanished outside the bridge (net issued 999, registered 1100",
        ),
        (
            1000,
            900,
            1001,
            "+101 units appeared outside the bridge (net issued 1001, registered 900",
        ),
        (1000, 900, 899, "-1 units vanished outside the bridge (net issued 899, registered 900"),
    ],
    ids=["above-issuance", "below-issuance", "above-redemption", "below-redemption"],
)
def test_assess_outside_the_pending_range_holds(
    confirmed: int, registered: int, net: int, reason: str
) -> None:
    a = assess(record_with([reading("a", net)], {"a": registered}), {"a": confirmed})
    assert a.notes == ()
    assert len(a.hold_reasons) == 1
    assert a.hold_reasons[0].startswith("supply discrepancy on a: ")
    assert reason in a.hold_reasons[0]
    assert dict(a.confirmed) == {}


def test_assess_a_ledger_never_confirmed_has_no_pending_range() -> None:
    a = assess(record_with([reading("a", 40)], {"a": 50}), {})
    assert a.notes == ()
    assert a.hold_reasons == (
        "supply discrepancy on a: -10 units vanished outside the bridge"
        " (net issued 40, registered 50, height 7)",
    )


def test_assess_alerts_put_hold_reasons_first() -> None:
    r = record_with([reading("a", 1050), reading("b", 3)], {"a": 1100, "b": 0})
    a = assess(r, {"a": 1000, "b": 0})
    assert len(a.hold_reasons) == 1
    assert len(a.notes) == 1
    assert a.alerts == (a.hold_reasons[0], a.notes[0])
    assert a.alerts[0].startswith("supply discrepancy on b: +3 units appeared")
    assert a.alerts[1].startswith("a: registered issuance pending, 50 units")


# -- verify_records: the registration version -------------------------------------------------


def test_verify_records_flags_a_registration_version_going_backwards(committee) -> None:
    c, signers = committee
    cut = [reading("a", 1000)]
    records = chain_of(signers, ISIN, [(cut, {"a": 1000}, 3), (cut, {"a": 1000}, 2)])
    assert verify_records(records, c) == [
        f"record {ISIN}#2: registration version went back from 3 to 2"
    ]
    # Against an anchor, too.
    assert verify_records(records[1:], c, after=records[0].record) == [
        f"record {ISIN}#2: registration version went back from 3 to 2"
    ]


def test_verify_records_accepts_the_same_or_a_newer_registration_version(committee) -> None:
    c, signers = committee
    cut = [reading("a", 1000)]
    records = chain_of(
        signers, ISIN, [(cut, {"a": 1000}, 1), (cut, {"a": 1000}, 1), (cut, {"a": 1000}, 4)]
    )
    assert verify_records(records, c) == []


# -- FeedVerifier ---------------------------------------------------------------------------


def test_feed_verifier_accepts_a_good_chain(committee) -> None:
    c, signers = committee
    records = balanced_chain(signers, 3)
    v = FeedVerifier(c)
    verdicts = [v.check(attest(s, i + 10)) for i, s in enumerate(records)]
    assert [x.ok for x in verdicts] == [True, True, True]
    assert all(x.failures == () and x.discrepancies == () for x in verdicts)
    assert verdicts[2].attestation.signed is records[2]
    assert v.last == {ISIN: records[2].record}
    assert v.last_feed_sequence == 12


@pytest.mark.governance
@pytest.mark.security
def test_feed_verifier_refuses_a_record_produced_before_the_previous_one(committee) -> None:
    """Review finding 4: a security's feed never goes back in time, even when the record is
    properly linked and t-of-n signed (retired keys re-signing an old height)."""
    c, signers = committee
    first = balanced_chain(signers, 1)[0]
    r = make_record(
        ISIN,
        2,
        first.record.digest,
        1,
        first.record.produced_at_ms - 1,
        [reading("a", 998, burned=2), reading("b", 2, minted=2)],
        {"a": 1000, "b": 0},
        registration_version=1,
    )
    v = FeedVerifier(c)
    assert v.check(attest(first, 1)).ok
    verdict = v.check(attest(sign(r, signers[:3]), 2))
    assert not verdict.ok
    assert any("before the previous record" in f for f in verdict.failures)
    assert v.last == {ISIN: first.record}


def test_feed_verifier_from_genesis_refuses_a_mid_stream_start(committee) -> None:
    c, signers = committee
    records = balanced_chain(signers, 3)
    v = FeedVerifier(c)
    verdict = v.check(attest(records[2], 3))
    assert not verdict.ok
    assert (
        f"record {ISIN}#3: expected sequence 1 (records dropped or reordered)" in verdict.failures
    )
    assert f"record {ISIN}#3: previous_hash does not name the preceding record" in verdict.failures
    assert v.last == {}
    assert v.last_feed_sequence == 0


def test_feed_verifier_anchors_mid_stream_without_from_genesis(committee) -> None:
    c, signers = committee
    records = balanced_chain(signers, 5)
    v = FeedVerifier(c, from_genesis=False)
    first = v.check(attest(records[2], 30))
    assert first.ok, first.failures
    assert v.last == {ISIN: records[2].record}
    assert v.last_feed_sequence == 30
    # Once anchored, the chain rules apply: #5 cannot follow #3.
    skipped = v.check(attest(records[4], 31))
    assert not skipped.ok
    assert (
        f"record {ISIN}#5: expected sequence 4 (records dropped or reordered)" in skipped.failures
    )
    assert f"record {ISIN}#5: previous_hash does not name the preceding record" in skipped.failures
    assert v.last == {ISIN: records[2].record}
    assert v.check(attest(records[3], 32)).ok
    assert v.check(attest(records[4], 33)).ok
    replayed = v.check(attest(records[3], 34))
    assert not replayed.ok
    assert (
        f"record {ISIN}#4: expected sequence 6 (records dropped or reordered)" in replayed.failures
    )
    assert v.last == {ISIN: records[4].record}
    assert v.last_feed_sequence == 33


def test_feed_verifier_without_from_genesis_still_checks_signatures(committee) -> None:
    c, signers = committee
    records = balanced_chain(signers, 3)
    v = FeedVerifier(c, from_genesis=False)
    outsider = LocalKeySigner(secrets.token_bytes(32))
    r = records[1].record
    forged = SignedRecord(r, (*records[1].signatures[:2], outsider.sign_digest(r.digest)))
    verdict = v.check(attest(forged, 2))
    assert not verdict.ok
    assert any(
        f.startswith(
            f"record {ISIN}#2: a signature does not verify (signer 0x{outsider.address.hex()}"
        )
        for f in verdict.failures
    )
    assert f"record {ISIN}#2: 2 valid member signatures, threshold 3" in verdict.failures
    # The filtered chain failures stay filtered: only signature failures are reported.
    assert len(verdict.failures) == 2
    assert v.last == {}
    assert v.last_feed_sequence == 0
    # Signatures over another record do not count either.
    swapped = SignedRecord(r, records[0].signatures)
    assert not v.check(attest(swapped, 3)).ok
    assert v.last == {}
    # The genuine record then anchors the chain.
    assert v.check(attest(records[1], 4)).ok
    assert v.last == {ISIN: r}


def test_feed_verifier_without_from_genesis_still_checks_the_identity(committee) -> None:
    c, signers = committee
    r = balanced_chain(signers, 2)[1].record
    lie = replace(
        r,
        readings=(
            replace(r.readings[0], total_supply=r.readings[0].total_supply + 7),
            r.readings[1],
        ),
    )
    v = FeedVerifier(c, from_genesis=False)
    verdict = v.check(attest(sign(lie, signers[:3]), 1))
    assert verdict.failures == (
        f"record {ISIN}#2: the stated identity does not match its own figures",
    )
    assert v.last == {}


def test_feed_verifier_reports_signed_discrepancies(committee) -> None:
    c, signers = committee
    specs = [
        ([reading("a", 1000), reading("b", 0)], {"a": 1000, "b": 0}, 1),
        ([reading("a", 990), reading("b", 5)], {"a": 1000, "b": 0}, 1),
    ]
    records = chain_of(signers, ISIN, specs)
    v = FeedVerifier(c)
    # The coordinator says nothing (no alerts, not held); the verifier reads the figures.
    clean = v.check(attest(records[0], 1))
    assert clean.ok
    assert clean.discrepancies == ()
    off = v.check(attest(records[1], 2))
    assert off.ok  # verified: the figures are genuine, and they do not balance
    assert off.discrepancies == (f"{ISIN}#2: -10 units on a", f"{ISIN}#2: +5 units on b")
    assert off.attestation.alerts == ()
    assert v.last[ISIN] == records[1].record


def test_feed_verifier_does_not_advance_on_a_failed_record(committee) -> None:
    c, signers = committee
    records = balanced_chain(signers, 3)
    v = FeedVerifier(c)
    assert v.check(attest(records[0], 1)).ok
    outsider = LocalKeySigner(secrets.token_bytes(32))
    r2 = records[1].record
    bad = SignedRecord(r2, (records[1].signatures[0], outsider.sign_digest(r2.digest)))
    verdict = v.check(attest(bad, 2))
    assert not verdict.ok
    assert f"record {ISIN}#2: 1 valid member signatures, threshold 3" in verdict.failures
    assert v.last == {ISIN: records[0].record}
    assert v.last_feed_sequence == 1
    # #3 cannot follow #1, so it fails until the genuine #2 is seen.
    assert not v.check(attest(records[2], 3)).ok
    assert v.last[ISIN] == records[0].record
    assert v.check(attest(records[1], 4)).ok
    assert v.check(attest(records[2], 5)).ok
    assert v.last == {ISIN: records[2].record}
    assert v.last_feed_sequence == 5


def test_feed_verifier_refuses_a_record_under_another_epoch(committee) -> None:
    c, signers = committee
    records = balanced_chain(signers, 1)
    v = FeedVerifier(Committee(2, c.threshold, c.members))
    verdict = v.check(attest(records[0], 1))
    assert verdict.failures == (
        f"record {ISIN}#1: signed under epoch 1, committee epoch is 2 and no verified"
        " rotation chain reaches it",
    )
    assert v.last == {}


def test_feed_verifier_keeps_one_chain_per_security(committee) -> None:
    c, signers = committee
    a = balanced_chain(signers, 2, ISIN)
    b = balanced_chain(signers, 2, OTHER_ISIN)
    v = FeedVerifier(c)
    assert [v.check(attest(s, n)).ok for s, n in ((a[0], 1), (b[0], 2), (b[1], 3), (a[1], 4))] == [
        True,
        True,
        True,
        True,
    ]
    assert v.last == {ISIN: a[1].record, OTHER_ISIN: b[1].record}
    assert v.last_feed_sequence == 4


def test_a_cut_must_read_every_registered_ledger() -> None:
    """A registered ledger left out of the cut could hide its discrepancy: refused when the
    record is built, and a failure for the depository when a record arrives that way."""
    only_a = [SupplyReading("a", 5, b"\1" * 32, 1000, 0, 0, 0, 0)]
    with pytest.raises(InvalidInput, match=r"registered ledgers \['b'\] are not read"):
        balance(only_a, {"a": 1000, "b": 50})
    with pytest.raises(InvalidInput, match="not read in this cut"):
        make_record(ISIN, 1, GENESIS_HASH, 1, 1, only_a, {"a": 1000, "b": 50})


def test_registration_ledger_ids_must_not_be_empty() -> None:
    with pytest.raises(InvalidInput, match="must not be empty"):
        Registration(ISIN, 1, (("", 1), ("a", 2)), 1)
