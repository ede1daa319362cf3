"""The verifier's durable memory of the supply records it signed, per security.

SECURITY: this is what keeps any caller from stalling the depository's feed. A member signs
a security's record only where it extends the chain this member signed:

- the next link: ``sequence = last + 1`` and ``previous_hash`` = the digest it last signed;
- the tip again: ``sequence = last`` with the ``previous_hash`` of the record it last signed
  (the coordinator re-proposes its tip with a fresher cut after a crash);
- the first record of a security it never signed: ``sequence = 1`` over ``GENESIS_HASH``;
- or a record after an *anchor*: a record the committee certified (t of n signatures,
  checked by :func:`verify_anchor`) with ``sequence - 1`` and the digest the proposal
  names, ahead of what this member signed. This is how a member that was down while the
  others signed, or that joined later, catches up. A member restored from a backup is
  quarantined (ADR 0022) and signs no new record until an operator lifts it: its log may
  end before a record it signed, and the next link would then fork the chain.

A jump (sequence 1,000,000,000 over a random hash), a fork of the previous link or a replay
of an older sequence is refused, with a typed reason, and recorded nowhere, so the
coordinator's real next record is still signed. Independently of the chain, it never signs
lower heights on any ledger than it attested, or an older registration version.

What this does not stop: anyone who may call ``SignSupply`` can propose *truthful* records
(members re-read every figure) and so advance the members' chain past the coordinator's.
That is closed by letting only the coordinator call ``SignSupply`` (mutual TLS and the role
interceptor, ``bridge/rpc``), not by the sequencing rule.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.domain.committee import Committee, verify_vote
from bridge.domain.errors import InvalidCertificate, PreconditionFailed
from bridge.domain.supply import GENESIS_HASH, SignedRecord, SupplyRecord
from bridge.storage.sqlite import immediate
from verifiers.store import open_member_store, quarantined


class SupplyRefused(PreconditionFailed):
    """Signing this record would contradict what this member signed before."""


class SupplyRegression(SupplyRefused):
    """A lower sequence, a lower height on some ledger or an older registration version."""


class SupplyOutOfSequence(SupplyRefused):
    """The record does not extend this member's chain (a jump ahead or a first record
    that is not sequence 1) and no certified anchor bridges the gap."""


class SupplyChainBroken(SupplyRefused):
    """The record's ``previous_hash`` is not the digest this member's chain continues from."""


class SupplyAnchorInvalid(SupplyRefused):
    """The anchor sent to bridge a gap is not a committee-certified predecessor."""


class SupplyLogQuarantined(SupplyRefused):
    """The member's store was restored from a backup and is quarantined (ADR 0022): it may
    have signed records of this security after the backup was taken, so it signs nothing
    but the very record its log ends with until an operator lifts the quarantine."""


def verify_anchor(previous: SignedRecord, committee: Committee) -> SupplyRecord:
    """Return ``previous.record`` if at least ``threshold`` distinct members of
    ``committee`` signed its digest under the committee's epoch; else SupplyAnchorInvalid.

    The digest is recomputed from the record's fields, never taken from the wire. The work
    is bounded by the committee, not by the caller: more than n signatures are refused
    outright, byte-identical copies are dropped before any recovery, and recovery stops as
    soon as ``threshold`` distinct members are found.
    """
    record = previous.record
    where = f"anchor {record.security}#{record.sequence}"
    # SECURITY: every signature costs a public-key recovery; a caller that sends tens of
    # thousands of them must be refused before the first one is recovered.
    if len(previous.signatures) > len(committee.members):
        raise SupplyAnchorInvalid(
            f"{where}: {len(previous.signatures)} signatures, the committee has"
            f" {len(committee.members)} members"
        )
    if record.epoch != committee.epoch:
        raise SupplyAnchorInvalid(
            f"{where}: signed under epoch {record.epoch}, committee epoch is {committee.epoch}"
        )
    signers: set[bytes] = set()
    for sig in dict.fromkeys(previous.signatures):  # distinct, in order sent
        try:
            signers.add(verify_vote(committee, record.digest, sig).signer)
        except InvalidCertificate:
            continue  # a bad signature does not count; enough good ones still certify
        if len(signers) >= committee.threshold:
            return record
    raise SupplyAnchorInvalid(
        f"{where}: {len(signers)} valid member signatures, threshold {committee.threshold}"
    )


@dataclass(frozen=True, slots=True)
class PendingAnchor:
    """An anchor as received, not yet checked: :meth:`verify` checks it on first need.

    The log verifies it only when the chain rule needs an anchor (a gap or a diverged
    tip), after the cheap structural checks against the record; the next link never
    depends on it, so an anchor that does not verify cannot block a valid record.
    """

    signed: SignedRecord
    committee: Committee

    @property
    def record(self) -> SupplyRecord:
        """The anchor's record, unverified."""
        return self.signed.record

    def verify(self) -> SupplyRecord:
        """The record if t of n committee members signed it (:func:`verify_anchor`)."""
        return verify_anchor(self.signed, self.committee)


class SupplyLog:
    """Per security: the last sequence, its digest and previous_hash, the heights and the
    registration version signed.

    ``check_and_record`` is one fsync'd SQLite transaction that completes before the
    signature leaves the process; a refusal writes nothing.
    """

    def __init__(self, path: Path) -> None:
        self._db = open_member_store(path)

    def check_and_record(
        self, record: SupplyRecord, anchor: SupplyRecord | PendingAnchor | None = None
    ) -> None:
        """Record ``record`` as signed, or raise a SupplyRefused subclass saying why not.

        ``anchor``, when given, is either a record already verified as committee-certified
        (:func:`verify_anchor`) or a :class:`PendingAnchor`, verified here only if the chain
        rule needs it; it lets this member continue a chain it fell behind on.
        """
        heights = {r.ledger: r.height for r in record.readings}
        with immediate(self._db):
            row = self._db.execute(
                "SELECT sequence, digest, heights, registration_version, previous_hash"
                " FROM supply_signed WHERE security = ?",
                (record.security,),
            ).fetchone()
            # SECURITY (review s17 finding 7): a restored log's tip may be older than what
            # this member signed (it signed #s+1 = D1, the backup ends at #s); the chain
            # rule would then sign another #s+1 = D2, a fork, and no anchor can prove
            # otherwise. While quarantined it re-signs only the exact record it ends with.
            if (row is None or bytes(row[1]) != record.digest) and quarantined(
                self._db
            ) is not None:
                raise SupplyLogQuarantined(
                    f"{record.security}#{record.sequence}: the member store was restored from"
                    " a backup and is quarantined (bridge store lift-quarantine); refusing to"
                    " sign a supply record it does not already hold"
                )
            if row is None:
                self._check_first(record, anchor)
            else:
                last_seq, last_digest, last_heights, last_version, last_prev = row
                before = json.loads(last_heights)
                if bytes(last_digest) != record.digest:
                    self._refuse_regression(record, int(last_seq), before, int(last_version))
                    self._check_chain(
                        record,
                        anchor,
                        int(last_seq),
                        bytes(last_digest),
                        None if last_prev is None else bytes(last_prev),
                    )
                # Remember every ledger ever attested, even one a later record leaves out.
                heights = {**before, **heights}
            self._db.execute(
                "INSERT INTO supply_signed"
                " (security, sequence, digest, heights, registration_version, at, previous_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(security)"
                " DO UPDATE SET sequence = excluded.sequence, digest = excluded.digest,"
                " heights = excluded.heights,"
                " registration_version = excluded.registration_version, at = excluded.at,"
                " previous_hash = excluded.previous_hash",
                (
                    record.security,
                    record.sequence,
                    record.digest,
                    json.dumps(heights, sort_keys=True),
                    record.registration_version,
                    time.time(),
                    record.previous_hash,
                ),
            )

    @staticmethod
    def _anchors(record: SupplyRecord, anchor: SupplyRecord | PendingAnchor | None) -> bool:
        """True if ``anchor`` is the certified record ``record`` directly follows."""
        if anchor is None:
            return False
        prior = anchor.record if isinstance(anchor, PendingAnchor) else anchor
        where = f"{record.security}#{record.sequence}"
        if prior.security != record.security:
            raise SupplyAnchorInvalid(f"{where}: the anchor is a record of another security")
        if prior.sequence + 1 != record.sequence:
            raise SupplyAnchorInvalid(
                f"{where}: the anchor is sequence {prior.sequence}, not {record.sequence - 1}"
            )
        if prior.digest != record.previous_hash:
            raise SupplyAnchorInvalid(f"{where}: previous_hash does not name the anchor")
        if isinstance(anchor, PendingAnchor):
            # SECURITY: the signatures are checked last, only for an anchor the chain rule
            # needs and that fits the record; recovery is bounded by n (verify_anchor).
            anchor.verify()
        return True

    @classmethod
    def _check_first(
        cls, record: SupplyRecord, anchor: SupplyRecord | PendingAnchor | None
    ) -> None:
        where = f"{record.security}#{record.sequence}"
        if record.sequence == 1:
            if record.previous_hash != GENESIS_HASH:
                raise SupplyChainBroken(f"{where}: the first record must chain to GENESIS_HASH")
            return
        if not cls._anchors(record, anchor):
            raise SupplyOutOfSequence(
                f"{where}: this member signed no record of this security; only sequence 1,"
                " or a record after a committee-certified previous record, can start it"
            )

    @classmethod
    def _check_chain(
        cls,
        record: SupplyRecord,
        anchor: SupplyRecord | PendingAnchor | None,
        last_seq: int,
        last_digest: bytes,
        last_prev: bytes | None,
    ) -> None:
        where = f"{record.security}#{record.sequence}"
        if record.sequence == last_seq + 1 and record.previous_hash == last_digest:
            return  # the next link
        if record.sequence == last_seq and last_prev is not None:
            if record.previous_hash == last_prev:
                return  # the tip again, over the same previous record
            raise SupplyChainBroken(
                f"{where}: previous_hash is not that of the record #{last_seq} this member"
                " signed (a fork of the chain)"
            )
        if record.sequence >= last_seq and cls._anchors(record, anchor):
            # A certified predecessor at or beyond this member's tip: others went on while
            # this member was away (sequence = last is only possible for a pre-migration tip).
            return
        if record.sequence == last_seq + 1:
            raise SupplyChainBroken(
                f"{where}: previous_hash is not the digest of record #{last_seq} this member"
                " signed, and no certified previous record was sent"
            )
        raise SupplyOutOfSequence(
            f"{where}: this member's last record of this security is #{last_seq}; the next"
            f" it signs is #{last_seq + 1} (or #{last_seq} again), unless a certified"
            f" previous record is sent"
        )

    @staticmethod
    def _refuse_regression(
        record: SupplyRecord, last_seq: int, last_heights: dict[str, int], last_version: int
    ) -> None:
        where = f"{record.security}#{record.sequence}"
        if record.sequence < last_seq:
            raise SupplyRegression(f"{where}: already signed sequence {last_seq} of this security")
        if record.registration_version < last_version:
            raise SupplyRegression(
                f"{where}: registration version {record.registration_version} is older than"
                f" version {last_version} already attested"
            )
        for r in record.readings:
            before = last_heights.get(r.ledger)
            if before is not None and r.height < before:
                raise SupplyRegression(
                    f"{where}: {r.ledger} height {r.height} is below height {before}"
                    " already attested"
                )

    def last(self, security: str) -> tuple[int, bytes] | None:
        """The sequence and digest of the last record of ``security`` signed (None: none)."""
        row = self._db.execute(
            "SELECT sequence, digest FROM supply_signed WHERE security = ?", (security,)
        ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def registration_version(self, security: str) -> int:
        """The highest registration version this member attested for ``security`` (0: none)."""
        row = self._db.execute(
            "SELECT registration_version FROM supply_signed WHERE security = ?", (security,)
        ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the database."""
        self._db.close()
