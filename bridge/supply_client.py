"""Client side of the supply feed: the depository's verifier and the supply operator's calls.

The depository trusts the committee (its member addresses, threshold and epoch from the
public network file), never the coordinator. :class:`FeedVerifier` checks every record it
is given: t-of-n member signatures over the recomputed digest, the per-security hash chain
and contiguous sequences, and the supply identity recomputed from the signed figures. It
raises its own alert for any signed discrepancy, whatever the coordinator says.
:func:`watch` follows the stream and resumes after a disconnect or a coordinator restart
from the last position it verified, so nothing is skipped or seen twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc

from bridge.domain.committee import Committee
from bridge.domain.issuance import HoldRelease, Registration, sign_instruction
from bridge.domain.signer import Signer
from bridge.domain.supply import Attestation, SupplyRecord, verify_records
from bridge.rpc.channels import internal_channel, sync_channel
from bridge.rpc.supply_convert import (
    attestation_from_pb,
    registration_from_pb,
    registration_to_pb,
    release_to_pb,
)
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import supply_pb2, supply_pb2_grpc


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the depository concludes about one attestation."""

    attestation: Attestation
    failures: tuple[str, ...]
    """Verification failures: the record must not be relied on."""
    discrepancies: tuple[str, ...]
    """Signed, verified figures that do not balance: units created or destroyed outside
    the bridge (or a registered issuance not yet complete)."""

    @property
    def ok(self) -> bool:
        """True when the record verified (its figures may still show a discrepancy)."""
        return not self.failures


@dataclass
class FeedVerifier:
    """Verifies a feed record by record, keeping each security's last verified record.

    With ``from_genesis`` false, the first record seen of each security is taken as the
    chain's anchor (for a subscriber that starts mid-stream); its signatures and identity
    are still checked.
    """

    committee: Committee
    from_genesis: bool = True
    last: dict[str, SupplyRecord] = field(default_factory=dict)
    last_feed_sequence: int = 0

    def check(self, attestation: Attestation) -> Verdict:
        """Verify one attestation; remember it as its security's last record when it passes."""
        record = attestation.signed.record
        previous = self.last.get(record.security)
        failures = verify_records(
            [attestation.signed], self.committee, after=previous, from_genesis=self.from_genesis
        )
        discrepancies = tuple(
            f"{record.security}#{record.sequence}: {units:+d} units on {ledger}"
            for ledger, units in record.ledger_discrepancies
        )
        if not failures:
            self.last[record.security] = record
            self.last_feed_sequence = max(self.last_feed_sequence, attestation.feed_sequence)
        return Verdict(attestation, tuple(failures), discrepancies)


class SupplyFeed:
    """An asyncio client of one coordinator's SupplyService."""

    def __init__(
        self, target: str, timeout: float = 10.0, identity: ClientIdentity | None = None
    ) -> None:
        """``identity``: the depository's mTLS identity toward the coordinator."""
        self._channel = internal_channel(target, identity)
        self._stub = supply_pb2_grpc.SupplyServiceStub(self._channel)
        self._timeout = timeout

    async def latest(self, security: str = "") -> list[Attestation]:
        """The latest attestation of one security or of all (signatures not yet checked)."""
        resp = await self._stub.GetSupply(
            supply_pb2.GetSupplyRequest(security_id=security), timeout=self._timeout
        )
        return [attestation_from_pb(a) for a in resp.attestations]

    async def stream(self, security: str = "", start: int = 1) -> AsyncIterator[Attestation]:
        """Attestations from ``start`` on, as the server sends them (one connection)."""
        call = self._stub.StreamAttestations(
            supply_pb2.StreamAttestationsRequest(security_id=security, from_sequence=start)
        )
        try:
            async for m in call:
                yield attestation_from_pb(m)
        finally:
            call.cancel()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


async def watch(
    target: str,
    verifier: FeedVerifier,
    start: int = 1,
    retry_delay: float = 0.5,
    give_up_after: float | None = None,
    identity: ClientIdentity | None = None,
) -> AsyncIterator[Verdict]:
    """Follow every security's feed from feed position ``start``, verifying each record.

    Reconnects after a disconnect or a server restart and resumes from the position after
    the last one received, so the caller sees each record exactly once. Gives up (raising
    the last error) when no connection succeeds for ``give_up_after`` seconds.
    """
    position = start
    failing_since: float | None = None
    while True:
        feed = SupplyFeed(target, identity=identity)
        try:
            async for a in feed.stream("", position):
                failing_since = None
                if a.feed_sequence < position:
                    continue  # a duplicate cannot happen by contract; never show one twice
                position = a.feed_sequence + 1
                yield verifier.check(a)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.INTERNAL,
            ):
                raise
            failing_since = failing_since or time.monotonic()
            if give_up_after is not None and time.monotonic() - failing_since > give_up_after:
                raise
        finally:
            await feed.close()
        await asyncio.sleep(retry_delay)


# -- supply operator calls (synchronous: used from scripts, the CLI and the devnet) ---------


class SupplyOperator:
    """Signs and sends registrations and hold releases with a supply operator key."""

    def __init__(
        self,
        target: str,
        signer: Signer,
        timeout: float = 15.0,
        identity: ClientIdentity | None = None,
    ) -> None:
        """``identity``: the supply operator's mTLS identity toward the coordinator."""
        self._channel = sync_channel(target, identity)
        self._stub = supply_pb2_grpc.SupplyServiceStub(self._channel)
        self._signer = signer
        self._timeout = timeout

    def registration(self, security: str) -> Registration | None:
        """The registration in force, or None."""
        try:
            m = self._stub.GetRegistration(
                supply_pb2.GetRegistrationRequest(security_id=security), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return registration_from_pb(m)[0]

    def register(self, security: str, totals: Mapping[str, int], note: str = "") -> Registration:
        """Register ``totals`` as the units issued per ledger (superseding the one in force)."""
        current = self.registration(security)
        reg = Registration.of(
            security,
            (current.version if current else 0) + 1,
            totals,
            int(time.time() * 1000),
            note,
        )
        self._stub.RegisterIssuance(
            registration_to_pb(reg, sign_instruction(self._signer, reg)), timeout=self._timeout
        )
        return reg

    def adjust(self, security: str, ledger: str, delta: int, note: str = "") -> Registration:
        """Register ``delta`` more units on ``ledger`` (negative: a redemption); retries when
        another registration lands in between."""
        for _ in range(20):
            current = self.registration(security)
            totals = dict(current.totals) if current else {}
            totals[ledger] = totals.get(ledger, 0) + delta
            try:
                return self.register(security, totals, note)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                if "version" not in (exc.details() or ""):
                    raise
        raise RuntimeError(f"could not register an adjustment of {security}: too much contention")

    def release(self, security: str, hold_sequence: int, note: str = "") -> None:
        """Release the hold that record ``hold_sequence`` raised."""
        release = HoldRelease(security, hold_sequence, int(time.time() * 1000), note)
        self._stub.ReleaseHold(
            release_to_pb(release, sign_instruction(self._signer, release)),
            timeout=self._timeout,
        )

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


async def audit_feed(
    target: str,
    committee: Committee,
    start: int,
    security: str = "",
    limit_s: float = 60.0,
    identity: ClientIdentity | None = None,
) -> tuple[int, list[str]]:
    """Verify the feed from feed position ``start`` up to its current end.

    Returns how many records of ``security`` (all when empty) were checked, and every
    violation: a verification failure, or a signed record that does not balance. The first
    record of each security is taken as its anchor (``from_genesis`` off).
    """
    verifier = FeedVerifier(committee, from_genesis=start <= 1)
    feed = SupplyFeed(target, identity=identity)
    checked, problems = 0, []
    try:
        end = max((a.feed_sequence for a in await feed.latest()), default=0)
        if end < start:
            return 0, []
        async with asyncio.timeout(limit_s):
            async for a in feed.stream("", start):
                if not security or a.signed.record.security == security:
                    verdict = verifier.check(a)
                    checked += 1
                    problems += [f"feed #{a.feed_sequence}: {f}" for f in verdict.failures]
                    problems += [f"feed #{a.feed_sequence}: {d}" for d in verdict.discrepancies]
                if a.feed_sequence >= end:
                    break
    finally:
        await feed.close()
    return checked, problems


async def settled_position(
    target: str,
    security: str,
    after: float,
    limit_s: float,
    identity: ClientIdentity | None = None,
) -> int:
    """The feed position of the first record of ``security`` published after ``after``
    (a ``time.time()``) that shows nothing in escrow or prepared and no discrepancy."""
    feed = SupplyFeed(target, identity=identity)
    try:
        async with asyncio.timeout(limit_s):
            while True:
                try:
                    latest = await feed.latest(security)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                        raise
                    latest = []
                for a in latest:
                    r = a.signed.record
                    quiet = all(x.escrowed == 0 and x.prepared == 0 for x in r.readings)
                    if a.published_at > after and quiet and not r.ledger_discrepancies:
                        return a.feed_sequence
                await asyncio.sleep(0.3)
    finally:
        await feed.close()
