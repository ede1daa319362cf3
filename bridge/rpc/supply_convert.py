"""Conversion between the supply feed's protobuf messages and domain dataclasses.

Decoders validate and raise InvalidInput naming the field. A decoded record is rebuilt
from its fields, so its digest is recomputed, never taken from the wire.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.domain.errors import InvalidInput
from bridge.domain.issuance import HoldRelease, Registration
from bridge.domain.supply import Attestation, SignedRecord, SupplyReading, SupplyRecord
from bridge.v1 import supply_pb2

_MAX_UNITS_DIGITS = 78  # 2**256 has 78 decimal digits


def _units(text: str, field: str, signed: bool = False) -> int:
    body = text[1:] if signed and text.startswith("-") else text
    if not body.isdigit() or len(body) > _MAX_UNITS_DIGITS or not body.isascii():
        raise InvalidInput(f"{field} must be a decimal integer string, got {text[:40]!r}")
    return int(text)


def _word(raw: bytes, field: str) -> bytes:
    if len(raw) != 32:
        raise InvalidInput(f"{field} must be 32 bytes")
    return bytes(raw)


def reading_to_pb(r: SupplyReading) -> supply_pb2.LedgerSupply:
    """One ledger's figures as the API message."""
    return supply_pb2.LedgerSupply(
        ledger_id=r.ledger,
        height=r.height,
        block_hash=r.block_hash,
        total_supply=str(r.total_supply),
        free=str(r.free),
        escrowed=str(r.escrowed),
        prepared=str(r.prepared),
        burned_out=str(r.burned_out),
        minted_in=str(r.minted_in),
    )


def reading_from_pb(m: supply_pb2.LedgerSupply) -> SupplyReading:
    """Validated figures; ``free`` must equal ``total_supply - escrowed``."""
    if not m.ledger_id:
        raise InvalidInput("ledgers.ledger_id is required")
    r = SupplyReading(
        ledger=m.ledger_id,
        height=m.height,
        block_hash=_word(m.block_hash, "ledgers.block_hash"),
        total_supply=_units(m.total_supply, "ledgers.total_supply"),
        escrowed=_units(m.escrowed, "ledgers.escrowed"),
        prepared=_units(m.prepared, "ledgers.prepared"),
        burned_out=_units(m.burned_out, "ledgers.burned_out"),
        minted_in=_units(m.minted_in, "ledgers.minted_in"),
    )
    if m.free and _units(m.free, "ledgers.free") != r.free:
        raise InvalidInput(f"ledger {r.ledger}: free is not total_supply - escrowed")
    return r


def _pairs(items: Sequence[supply_pb2.LedgerUnits], field: str) -> tuple[tuple[str, int], ...]:
    out = [(u.ledger_id, _units(u.units, field, signed=True)) for u in items]
    if any(not name for name, _ in out):
        raise InvalidInput(f"{field}.ledger_id is required")
    return tuple(sorted(out))


def _pairs_to_pb(pairs: Sequence[tuple[str, int]]) -> list[supply_pb2.LedgerUnits]:
    return [supply_pb2.LedgerUnits(ledger_id=name, units=str(units)) for name, units in pairs]


def record_to_pb(r: SupplyRecord) -> supply_pb2.SupplyRecord:
    """A record as the API message (with its digest, for information)."""
    return supply_pb2.SupplyRecord(
        security_id=r.security,
        partition=r.partition,
        sequence=r.sequence,
        previous_hash=r.previous_hash,
        epoch=r.epoch,
        produced_at_ms=r.produced_at_ms,
        ledgers=[reading_to_pb(x) for x in r.readings],
        registered=_pairs_to_pb(r.registered),
        registration_version=r.registration_version,
        in_transit=str(r.in_transit),
        discrepancy=str(r.discrepancy),
        ledger_discrepancies=_pairs_to_pb(r.ledger_discrepancies),
        digest=r.digest,
    )


def record_from_pb(m: supply_pb2.SupplyRecord) -> SupplyRecord:
    """A record rebuilt field by field; its digest is recomputed by the caller's checks."""
    if not m.security_id:
        raise InvalidInput("record.security_id is required")
    return SupplyRecord(
        security=m.security_id,
        partition=m.partition,
        sequence=m.sequence,
        previous_hash=_word(m.previous_hash, "record.previous_hash"),
        epoch=m.epoch,
        produced_at_ms=m.produced_at_ms,
        readings=tuple(sorted((reading_from_pb(x) for x in m.ledgers), key=lambda r: r.ledger)),
        registered=_pairs(m.registered, "record.registered"),
        registration_version=m.registration_version,
        in_transit=_units(m.in_transit, "record.in_transit", signed=True),
        discrepancy=_units(m.discrepancy, "record.discrepancy", signed=True),
        ledger_discrepancies=_pairs(m.ledger_discrepancies, "record.ledger_discrepancies"),
    )


def registration_to_pb(r: Registration, signature: bytes) -> supply_pb2.SignedRegistration:
    """A signed registration as the API message."""
    return supply_pb2.SignedRegistration(
        registration=supply_pb2.Registration(
            security_id=r.security,
            version=r.version,
            totals=_pairs_to_pb(r.totals),
            issued_at_ms=r.issued_at_ms,
            note=r.note,
        ),
        signature=signature,
    )


def registration_from_pb(m: supply_pb2.SignedRegistration) -> tuple[Registration, bytes]:
    """A validated registration and its signature (not yet checked against the operators)."""
    if not m.HasField("registration"):
        raise InvalidInput("registration is required")
    reg = m.registration
    totals = [(u.ledger_id, _units(u.units, "registration.totals")) for u in reg.totals]
    return (
        Registration(reg.security_id, reg.version, tuple(totals), reg.issued_at_ms, reg.note),
        bytes(m.signature),
    )


def release_to_pb(r: HoldRelease, signature: bytes) -> supply_pb2.SignedHoldRelease:
    """A signed hold release as the API message."""
    return supply_pb2.SignedHoldRelease(
        release=supply_pb2.HoldRelease(
            security_id=r.security,
            hold_sequence=r.hold_sequence,
            issued_at_ms=r.issued_at_ms,
            note=r.note,
        ),
        signature=signature,
    )


def release_from_pb(m: supply_pb2.SignedHoldRelease) -> tuple[HoldRelease, bytes]:
    """A validated hold release and its signature."""
    if not m.HasField("release"):
        raise InvalidInput("release is required")
    r = m.release
    return HoldRelease(r.security_id, r.hold_sequence, r.issued_at_ms, r.note), bytes(m.signature)


def attestation_to_pb(a: Attestation) -> supply_pb2.Attestation:
    """An attestation as the API message."""
    m = supply_pb2.Attestation(
        feed_sequence=a.feed_sequence,
        record=record_to_pb(a.signed.record),
        signatures=list(a.signed.signatures),
        alerts=list(a.alerts),
        held=a.held,
        hold_reason=a.hold_reason,
    )
    m.published_at.FromNanoseconds(int(a.published_at * 1e9))
    return m


def attestation_from_pb(m: supply_pb2.Attestation) -> Attestation:
    """A received attestation; the record is rebuilt, signatures are not yet checked."""
    if not m.HasField("record"):
        raise InvalidInput("attestation.record is required")
    return Attestation(
        feed_sequence=m.feed_sequence,
        signed=SignedRecord(record_from_pb(m.record), tuple(bytes(s) for s in m.signatures)),
        alerts=tuple(m.alerts),
        held=m.held,
        hold_reason=m.hold_reason,
        published_at=m.published_at.ToNanoseconds() / 1e9,
    )
