"""Supply accounting across ledgers (DESIGN §5), as pure functions.

For one security, at a cut of finalized heights h_i:

    registered_total = sum_i free_i(h_i) + in_transit

    free_i      = total_supply_i - escrowed_i
    in_transit  = sum_i (escrowed_i + burned_out_i - minted_in_i)

where ``burned_out_i`` is everything the bridge ever burned on ledger i's outbound legs and
``minted_in_i`` everything it ever minted on ledger i's inbound legs. Summing a transfer's
``amount * (debited_src - credited_dst)`` over all transfers gives exactly ``in_transit``:
a source leg debits from its lock until a release (escrowed, then burned), a target leg
credits from its mint. Each ledger's term depends on that ledger alone, so the identity
holds for any cut, even a causally inconsistent one.

Rearranged, each ledger contributes ``net_issued_i = total_supply_i + burned_out_i -
minted_in_i``: what was issued on that ledger outside the bridge. Comparing it with the
issuance registered for that ledger names the ledger where units appeared or vanished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.domain.committee import Committee, verify_vote
from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.hashing import keccak256


@dataclass(frozen=True, slots=True)
class SupplyReading:
    """One ledger's supply figures for one security at one finalized height."""

    ledger: str
    height: int
    block_hash: bytes
    total_supply: int
    escrowed: int
    prepared: int
    burned_out: int
    minted_in: int

    def __post_init__(self) -> None:
        for name in ("height", "total_supply", "escrowed", "prepared", "burned_out", "minted_in"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must not be negative")
        if self.escrowed > self.total_supply:
            raise InvalidInput("escrow cannot exceed total supply")

    @property
    def free(self) -> int:
        """Units held by holders (total supply minus the bridge's escrow)."""
        return self.total_supply - self.escrowed

    @property
    def in_transit(self) -> int:
        """This ledger's share of the in-transit term (may be negative)."""
        return self.escrowed + self.burned_out - self.minted_in

    @property
    def net_issued(self) -> int:
        """Units issued on this ledger outside the bridge (``free + in_transit`` share)."""
        return self.total_supply + self.burned_out - self.minted_in


@dataclass(frozen=True, slots=True)
class SupplyBalance:
    """The identity evaluated at one cut."""

    free: int
    in_transit: int
    registered_total: int
    discrepancy: int
    """``free + in_transit - registered_total``; zero when the identity holds."""
    ledger_discrepancies: Mapping[str, int]
    """Per ledger, ``net_issued - registered`` where non-zero: where units appeared (>0)
    or vanished (<0) outside the bridge."""

    @property
    def holds(self) -> bool:
        """True when the identity holds exactly and no ledger is off."""
        return self.discrepancy == 0 and not self.ledger_discrepancies


def balance(readings: Sequence[SupplyReading], registered: Mapping[str, int]) -> SupplyBalance:
    """Evaluate the identity for one security; ``registered`` is issuance per ledger.

    The cut must read exactly the registered ledgers (0 where nothing was issued), each
    once: a ledger left out could hide a discrepancy.
    """
    names = [r.ledger for r in readings]
    if len(set(names)) != len(names):
        raise InvalidInput("a ledger is read twice in one cut")
    missing = [n for n in names if n not in registered]
    if missing:
        raise InvalidInput(f"no registered issuance for ledgers {missing}")
    unread = sorted(set(registered) - set(names))
    if unread:
        raise InvalidInput(f"registered ledgers {unread} are not read in this cut")
    free = sum(r.free for r in readings)
    in_transit = sum(r.in_transit for r in readings)
    total = sum(registered.values())
    per_ledger = {
        r.ledger: r.net_issued - registered[r.ledger]
        for r in readings
        if r.net_issued != registered[r.ledger]
    }
    return SupplyBalance(free, in_transit, total, free + in_transit - total, per_ledger)


# -- attestation records ------------------------------------------------------------------

SUPPLY_TAG = b"KSTB/supply-record/v1"
GENESIS_HASH = b"\0" * 32


@dataclass(frozen=True, slots=True)
class SupplyRecord:
    """One committee-attested supply snapshot of one security (one link of its hash chain).

    The canonical form is compact JSON with sorted keys; its Keccak-256 under a domain tag
    is both what the committee signs and what the next record's ``previous_hash`` names.
    """

    security: str
    partition: str
    sequence: int
    previous_hash: bytes
    epoch: int
    produced_at_ms: int
    readings: tuple[SupplyReading, ...]
    registered: tuple[tuple[str, int], ...]
    registration_version: int
    """The version of the operator-signed registration ``registered`` comes from."""
    in_transit: int
    discrepancy: int
    ledger_discrepancies: tuple[tuple[str, int], ...]

    def canonical(self) -> bytes:
        """The bytes that are hashed: compact JSON, sorted keys, integers as decimal strings."""
        body = {
            "security": self.security,
            "partition": self.partition,
            "sequence": self.sequence,
            "previous_hash": "0x" + self.previous_hash.hex(),
            "epoch": self.epoch,
            "produced_at_ms": self.produced_at_ms,
            "ledgers": [
                {
                    "ledger": r.ledger,
                    "height": r.height,
                    "block_hash": "0x" + r.block_hash.hex(),
                    "total_supply": str(r.total_supply),
                    "free": str(r.free),
                    "escrowed": str(r.escrowed),
                    "prepared": str(r.prepared),
                    "burned_out": str(r.burned_out),
                    "minted_in": str(r.minted_in),
                }
                for r in self.readings
            ],
            "registered": {name: str(units) for name, units in self.registered},
            "registration_version": self.registration_version,
            "in_transit": str(self.in_transit),
            "discrepancy": str(self.discrepancy),
            "ledger_discrepancies": {name: str(d) for name, d in self.ledger_discrepancies},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @property
    def digest(self) -> bytes:
        """What committee members sign and the next record chains to."""
        return keccak256(SUPPLY_TAG + b"\0" + self.canonical())


def make_record(
    security: str,
    sequence: int,
    previous_hash: bytes,
    epoch: int,
    produced_at_ms: int,
    readings: Sequence[SupplyReading],
    registered: Mapping[str, int],
    registration_version: int = 0,
    partition: str = "",
) -> SupplyRecord:
    """Build the record for one cut; the identity's result is computed here, not supplied."""
    ordered = tuple(sorted(readings, key=lambda r: r.ledger))
    result = balance(ordered, registered)
    return SupplyRecord(
        security=security,
        partition=partition,
        sequence=sequence,
        previous_hash=previous_hash,
        epoch=epoch,
        produced_at_ms=produced_at_ms,
        readings=ordered,
        registered=tuple(sorted(registered.items())),
        registration_version=registration_version,
        in_transit=result.in_transit,
        discrepancy=result.discrepancy,
        ledger_discrepancies=tuple(sorted(result.ledger_discrepancies.items())),
    )


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record with the committee's signatures over its digest."""

    record: SupplyRecord
    signatures: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Attestation:
    """A signed record as the feed delivers it, with the coordinator's view of it
    (alerts and hold: policy, not part of what the committee signs)."""

    feed_sequence: int
    signed: SignedRecord
    alerts: tuple[str, ...]
    held: bool
    hold_reason: str
    published_at: float


def verify_records(
    records: Sequence[SignedRecord],
    committee: Committee,
    after: SupplyRecord | None = None,
    from_genesis: bool = True,
) -> list[str]:
    """Check a stream of one security's records the way the depository must; return every
    failure found, in words (empty: all good).

    Checks: t-of-n valid, distinct member signatures over each digest (epoch = the
    committee's); sequences contiguous from ``after`` (or from 1); each ``previous_hash``
    names the previous record; one security per stream; the identity recomputed from the
    record's own figures equals what it states. With no ``after`` and ``from_genesis``
    off, the first record anchors the chain (its sequence and ``previous_hash`` are taken
    as they are; everything else is still checked).
    """
    failures: list[str] = []
    prev = after
    for i, signed in enumerate(records):
        r = signed.record
        where = f"record {r.security}#{r.sequence}"
        if prev is not None and r.security != prev.security:
            failures.append(f"{where}: belongs to another security than #{prev.sequence}")
        anchor = i == 0 and prev is None and not from_genesis
        expected_seq = prev.sequence + 1 if prev is not None else 1
        if r.sequence != expected_seq and not anchor:
            failures.append(
                f"{where}: expected sequence {expected_seq} (records dropped or reordered)"
            )
        expected_prev = prev.digest if prev is not None else GENESIS_HASH
        if r.previous_hash != expected_prev and not anchor:
            failures.append(f"{where}: previous_hash does not name the preceding record")
        if prev is not None and r.registration_version < prev.registration_version:
            failures.append(
                f"{where}: registration version went back from {prev.registration_version}"
                f" to {r.registration_version}"
            )
        if r.epoch != committee.epoch:
            failures.append(
                f"{where}: signed under epoch {r.epoch}, committee epoch is {committee.epoch}"
            )
        signers: set[bytes] = set()
        for sig in signed.signatures:
            try:
                signers.add(verify_vote(committee, r.digest, sig).signer)
            except InvalidCertificate as exc:
                failures.append(f"{where}: a signature does not verify ({exc})")
        if len(signers) < committee.threshold:
            failures.append(
                f"{where}: {len(signers)} valid member signatures, threshold {committee.threshold}"
            )
        try:
            again = balance(r.readings, dict(r.registered))
        except InvalidInput as exc:
            failures.append(f"{where}: malformed figures ({exc})")
        else:
            stated = (r.in_transit, r.discrepancy, dict(r.ledger_discrepancies))
            if (again.in_transit, again.discrepancy, dict(again.ledger_discrepancies)) != stated:
                failures.append(f"{where}: the stated identity does not match its own figures")
        prev = r
    return failures


def _int(value: object, what: str) -> int:
    if not isinstance(value, str) or not value.lstrip("-").isdigit():
        raise InvalidInput(f"{what} must be a decimal string")
    return int(value)


def _hash32(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 66:
        raise InvalidInput(f"{what} must be 0x and 64 hex digits")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidInput(f"{what} must be 0x and 64 hex digits") from None


def record_from_canonical(data: bytes) -> SupplyRecord:
    """Parse a record's canonical bytes back; the result's ``canonical()`` equals ``data``.

    Raises InvalidInput for anything that is not a canonical record (including a ``free``
    figure that disagrees with ``total_supply - escrowed``).
    """
    try:
        body = json.loads(data)
        readings = []
        for item in body["ledgers"]:
            r = SupplyReading(
                ledger=str(item["ledger"]),
                height=int(item["height"]),
                block_hash=_hash32(item["block_hash"], "block_hash"),
                total_supply=_int(item["total_supply"], "total_supply"),
                escrowed=_int(item["escrowed"], "escrowed"),
                prepared=_int(item["prepared"], "prepared"),
                burned_out=_int(item["burned_out"], "burned_out"),
                minted_in=_int(item["minted_in"], "minted_in"),
            )
            if _int(item["free"], "free") != r.free:
                raise InvalidInput(f"ledger {r.ledger}: free is not total_supply - escrowed")
            readings.append(r)
        record = SupplyRecord(
            security=str(body["security"]),
            partition=str(body["partition"]),
            sequence=int(body["sequence"]),
            previous_hash=_hash32(body["previous_hash"], "previous_hash"),
            epoch=int(body["epoch"]),
            produced_at_ms=int(body["produced_at_ms"]),
            readings=tuple(readings),
            registered=tuple(
                sorted((k, _int(v, "registered")) for k, v in body["registered"].items())
            ),
            registration_version=int(body["registration_version"]),
            in_transit=_int(body["in_transit"], "in_transit"),
            discrepancy=_int(body["discrepancy"], "discrepancy"),
            ledger_discrepancies=tuple(
                sorted(
                    (k, _int(v, "ledger discrepancy"))
                    for k, v in body["ledger_discrepancies"].items()
                )
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise InvalidInput(f"not a canonical supply record: {exc!r}") from None
    if record.canonical() != data:
        raise InvalidInput("supply record bytes are not in canonical form")
    return record


# -- the hold policy ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the coordinator makes of one record (policy, not part of what is signed)."""

    hold_reasons: tuple[str, ...]
    """Discrepancies no registered issuance or redemption explains: the security is held."""
    notes: tuple[str, ...]
    """Registered issuance or redemption not yet seen on its ledger: reported, no hold."""
    confirmed: Mapping[str, int]
    """Per ledger, the registered units the record confirms (where it does)."""

    @property
    def alerts(self) -> tuple[str, ...]:
        """Everything the depository should read about this record, hold reasons first."""
        return self.hold_reasons + self.notes


def assess(record: SupplyRecord, confirmed: Mapping[str, int]) -> Assessment:
    """Judge each ledger of ``record`` against its registration.

    ``confirmed`` is, per ledger, the registered figure an earlier record last matched. A
    ledger whose net issuance equals its registered units is confirmed. One that lies
    between the confirmed and the newly registered figure is an issuance or redemption
    the operator registered and the issuer has not finished: a note, not a hold. Anything
    else means units appeared or vanished outside the bridge: a hold reason naming the
    ledger and the amount.
    """
    registered = dict(record.registered)
    holds: list[str] = []
    notes: list[str] = []
    settled: dict[str, int] = {}
    for r in record.readings:
        reg = registered[r.ledger]
        net = r.net_issued
        if net == reg:
            settled[r.ledger] = reg
            continue
        prior = confirmed.get(r.ledger, reg)
        if min(prior, reg) <= net <= max(prior, reg):
            verb = "issuance" if reg > prior else "redemption"
            notes.append(
                f"{r.ledger}: registered {verb} pending, {abs(reg - net)} units still to"
                f" {'issue' if reg > net else 'redeem'} (height {r.height})"
            )
            continue
        diff = net - reg
        holds.append(
            f"supply discrepancy on {r.ledger}: {diff:+d} units"
            f" {'appeared' if diff > 0 else 'vanished'} outside the bridge"
            f" (net issued {net}, registered {reg}, height {r.height})"
        )
    return Assessment(tuple(holds), tuple(notes), settled)
