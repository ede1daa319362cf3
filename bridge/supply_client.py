"""Client side of the supply feed: the depository's verifier and the supply operator's calls.

The depository trusts the committee (its member addresses, threshold and epoch from the
public network file), never the coordinator. :class:`FeedVerifier` checks every record it
is given: t-of-n member signatures over the recomputed digest, the per-security hash chain
and contiguous sequences, and the supply identity recomputed from the signed figures. It
raises its own alert for any signed discrepancy, whatever the coordinator says.
:func:`watch` follows the stream and resumes after a disconnect or a coordinator restart
from the last position it verified, so nothing is skipped or seen twice.

A feed that stops is itself an alarm: with ``max_age`` set, :meth:`FeedVerifier.alarms`
reports a :class:`FeedStale` for every security whose latest verified record was produced
longer ago than that (by the committee-checked ``produced_at_ms``, which a coordinator
cannot refresh by re-sending an old record), and for a feed that delivered no record at
all. :func:`watch_feed` interleaves those alarms with the verdicts, so a stalled stream
never looks healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc

from bridge.aio import stop_task, within
from bridge.config import NetworkConfig
from bridge.domain.committee import Committee, EpochWindow
from bridge.domain.errors import BridgeReason, InvalidCertificate
from bridge.domain.issuance import HoldRelease, Registration, sign_instruction
from bridge.domain.rotation import CertifiedRotation, chain_committees
from bridge.domain.signer import Signer
from bridge.domain.supply import Attestation, SupplyRecord, verify_records
from bridge.logfields import SECURITY, SEQUENCE, get_logger
from bridge.rpc.channels import internal_channel, sync_channel
from bridge.rpc.errors import received_error
from bridge.rpc.failover import TargetRing, parse_targets
from bridge.rpc.rotation_convert import certified_from_pb, window_from_pb
from bridge.rpc.supply_convert import (
    attestation_from_pb,
    registration_from_pb,
    registration_to_pb,
    release_to_pb,
)
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import relayer_pb2, relayer_pb2_grpc, supply_pb2, supply_pb2_grpc


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


@dataclass(frozen=True, slots=True)
class FeedStale:
    """Alarm: a security's latest verified record is older than the allowed age, or no
    record has arrived (``security`` empty: none of any security; ``last_sequence`` 0:
    none of this one).

    While it stands, the depository cannot tell whether units were issued out of band:
    out-of-band issuance is no longer detected although transfers may still be admitted.
    """

    security: str
    last_sequence: int
    age_s: float
    """Seconds since the latest record was produced (or since watching began)."""
    max_age_s: float

    def describe(self) -> str:
        """The alarm in words."""
        if not self.security:
            return f"no supply record received for {self.age_s:.0f}s (max age {self.max_age_s:g}s)"
        if not self.last_sequence:
            return (
                f"{self.security}: no record received for {self.age_s:.0f}s"
                f" (max age {self.max_age_s:g}s)"
            )
        return (
            f"{self.security}: latest record #{self.last_sequence} is {self.age_s:.0f}s old"
            f" (max age {self.max_age_s:g}s)"
        )


def staleness(
    latest: Mapping[str, SupplyRecord],
    max_age: float,
    now: float,
    started_at: float,
    expected: tuple[str, ...] = (),
) -> list[FeedStale]:
    """The alarms for ``latest`` verified records per security at ``now``: each record
    produced more than ``max_age`` seconds ago; each ``expected`` security without one;
    and no record at all (security "") once ``max_age`` has passed since ``started_at``.

    Ages use the record's ``produced_at_ms``, which the members checked against their own
    clocks when they signed; a verified record cannot be made to look fresh.
    """
    out: list[FeedStale] = []
    since_start = now - started_at
    if not latest and since_start > max_age:
        out.append(FeedStale("", 0, since_start, max_age))
    for security in sorted(set(latest) | set(expected)):
        record = latest.get(security)
        if record is None:
            if latest and since_start > max_age:
                out.append(FeedStale(security, 0, since_start, max_age))
            continue
        age = now - record.produced_at_ms / 1000
        if age > max_age:
            out.append(FeedStale(security, record.sequence, age, max_age))
    return out


EPOCH_END_SKEW_S = 120.0
"""Clock allowance when comparing a record's production time with an epoch's end (members
accept a record within 60 s of their clocks)."""


@dataclass
class FeedVerifier:
    """Verifies a feed record by record, keeping each security's last verified record.

    With ``from_genesis`` false, the first record seen of each security is taken as the
    chain's anchor (for a subscriber that starts mid-stream); its signatures and identity
    are still checked.

    With ``max_age`` (seconds) set, :meth:`stale` and :meth:`alarms` report securities
    whose latest verified record is older than that, securities in ``expected`` never
    seen, and a feed with no record at all since ``started_at``.
    """

    committee: Committee
    from_genesis: bool = True
    last: dict[str, SupplyRecord] = field(default_factory=dict)
    last_feed_sequence: int = 0
    max_age: float | None = None
    expected: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.time)
    _raised: dict[str, FeedStale] = field(default_factory=dict, repr=False)
    epochs: dict[int, Committee] = field(default_factory=dict)
    """Every epoch verified from the trust anchor ``committee`` (ADR 0009)."""
    endpoints: frozenset[tuple[bytes, bytes, bytes]] | None = None
    """The (network, ledger, bridge) words of the network file's ledgers (see
    :func:`endpoints_of`): a rotation certified for any other endpoint is refused."""
    epoch_ends: dict[int, float] = field(default_factory=dict)
    """Per epoch superseded by a verified rotation, the latest time (unix s) at which the
    ledgers can still have accepted it: max(activation, when this verifier learned of the
    rotation) + overlap. The rotation was installed before it was learned of, so this is
    never earlier than the true end of the epoch's window."""

    def __post_init__(self) -> None:
        self.epochs.setdefault(self.committee.epoch, self.committee)

    def add_chain(self, rotations: list[CertifiedRotation]) -> list[int]:
        """Accept the epochs ``rotations`` reach from the trust anchor; returns the new ones.

        SECURITY: each rotation must be certified by t members of the epoch before it, that
        epoch itself reached from the anchor (:func:`chain_committees`); a chain that does
        not verify raises InvalidCertificate and adds nothing, and a second, different
        committee for an epoch already accepted is refused the same way.
        """
        if self.endpoints is not None:
            for r in rotations:
                # SECURITY: a member key reused on another deployment (staging) could have
                # certified another committee there; only this network's endpoints count.
                if (r.network, r.ledger, r.bridge) not in self.endpoints:
                    raise InvalidCertificate(
                        f"rotation to epoch {r.proposal.next_epoch} is certified for an"
                        f" endpoint ({r.ledger_id}) that is not in the network file"
                    )
        reached = chain_committees(self.committee, rotations)
        for epoch, committee in reached.items():
            known = self.epochs.get(epoch)
            if known is not None and known != committee:
                raise InvalidCertificate(f"epoch {epoch} is already known with other members")
        added = sorted(set(reached) - set(self.epochs))
        self.epochs.update(reached)
        now = time.time()
        for r in rotations:
            old = r.proposal.certifying_epoch
            if r.proposal.next_epoch in added and old not in self.epoch_ends:
                self.epoch_ends[old] = max(r.proposal.activation, now) + r.proposal.overlap
        return added

    def stale(self, now: float | None = None) -> list[FeedStale]:
        """Every staleness alarm that holds at ``now`` (a ``time.time()``), by security
        (see :func:`staleness`); none without ``max_age``."""
        if self.max_age is None:
            return []
        return staleness(
            self.last,
            self.max_age,
            time.time() if now is None else now,
            self.started_at,
            self.expected,
        )

    def alarms(self, now: float | None = None) -> list[FeedStale]:
        """The alarms of :meth:`stale` raised since the last call (each logged once as an
        error); a security whose feed is fresh again is logged as recovered."""
        current = {a.security: a for a in self.stale(now)}
        log = get_logger()
        for security in sorted(set(self._raised) - set(current)):
            del self._raised[security]
            log.warning("supply feed fresh again", **{SECURITY: security or "*"})
        raised = [a for key, a in current.items() if key not in self._raised]
        for a in raised:
            self._raised[a.security] = a
            log.error(
                "SUPPLY FEED STALE: out-of-band issuance is not being detected",
                **{SECURITY: a.security or "*", SEQUENCE: a.last_sequence},
                age_s=round(a.age_s, 1),
                max_age_s=a.max_age_s,
            )
        return raised

    def check(self, attestation: Attestation) -> Verdict:
        """Verify one attestation; remember it as its security's last record when it passes."""
        record = attestation.signed.record
        previous = self.last.get(record.security)
        committee = self.epochs.get(record.epoch)
        where = f"record {record.security}#{record.sequence}"
        end = self.epoch_ends.get(record.epoch)
        if committee is None:
            failures = [
                f"{where}: signed under epoch {record.epoch}, committee epoch is"
                f" {self.committee.epoch} and no verified rotation chain reaches it"
            ]
        elif previous is not None and record.epoch < previous.epoch:
            # SECURITY: a feed never goes back to an older committee (whose keys a
            # rotation may have retired because they leaked).
            failures = [
                f"{where}: signed under epoch {record.epoch}, after a record of epoch"
                f" {previous.epoch}"
            ]
        elif end is not None and record.produced_at_ms / 1000 > end + EPOCH_END_SKEW_S:
            # SECURITY: an epoch superseded by a rotation signs nothing produced after its
            # window: the retired keys cannot extend the feed.
            failures = [
                f"{where}: signed under epoch {record.epoch}, produced after that epoch's"
                " overlap window ended"
            ]
        else:
            failures = verify_records(
                [attestation.signed], committee, after=previous, from_genesis=self.from_genesis
            )
            if previous is not None and record.produced_at_ms < previous.produced_at_ms:
                # SECURITY (review finding 4): a security's feed never goes back in time
                # (retired keys re-signing an old height are refused here too).
                failures.append(
                    f"{where}: produced at {record.produced_at_ms} ms, before the previous"
                    f" record of this security ({previous.produced_at_ms} ms)"
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

    async def committee_chain(self, from_epoch: int) -> list[CertifiedRotation]:
        """The certified rotations after ``from_epoch`` as the server sends them (not yet
        checked: :meth:`FeedVerifier.add_chain` does)."""
        resp = await self._stub.GetCommitteeChain(
            supply_pb2.GetCommitteeChainRequest(from_epoch=from_epoch), timeout=self._timeout
        )
        return [certified_from_pb(r) for r in resp.rotations]

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


def check_chain_on_ledger(
    anchor: Committee, chain: list[CertifiedRotation], windows: Sequence[EpochWindow]
) -> None:
    """Raise InvalidCertificate unless the newest epoch ``chain`` reaches from ``anchor`` is
    among ``windows`` (a ledger's accepted epochs) and every epoch both name agrees."""
    reached = chain_committees(anchor, chain)
    shown = {w.committee.epoch: w.committee for w in windows}
    for epoch, committee in reached.items():
        if epoch in shown and shown[epoch] != committee:
            raise InvalidCertificate(f"epoch {epoch}: the ledger shows another committee")
    tip = max(reached)
    if tip not in shown:
        raise InvalidCertificate(
            f"the chain's newest epoch {tip} is not one the ledger accepts"
            f" ({sorted(shown)}): a fork, or the ledger moved on"
        )


async def relayer_epochs(
    target: str, identity: ClientIdentity | None, deadline_s: float = 10.0
) -> tuple[EpochWindow, ...]:
    """The epochs a ledger accepts, read from one of its relayers (``GetCommittees``; the
    ``depository`` role may call it): the depository's source other than the coordinator."""
    async with internal_channel(target, identity) as channel:
        m = await relayer_pb2_grpc.RelayerServiceStub(channel).GetCommittees(
            relayer_pb2.GetCommitteesRequest(), timeout=deadline_s
        )
    return tuple(window_from_pb(w) for w in m.epochs)


def endpoints_of(network: NetworkConfig) -> frozenset[tuple[bytes, bytes, bytes]]:
    """The (network, ledger, bridge) words of every ledger in ``network``."""
    from bridge.ledgers.factory import bridge_word_of

    return frozenset(
        (lc.network_word, lc.id.word, bridge_word_of(lc)) for lc in network.ledgers.values()
    )


def verifier_for(network: NetworkConfig, **kw: Any) -> FeedVerifier:
    """A FeedVerifier anchored on ``network``'s committee, accepting rotations certified
    for its endpoints only."""
    return FeedVerifier(network.committee, endpoints=endpoints_of(network), **kw)


EpochSource = Callable[[], Awaitable[Sequence[EpochWindow]]]
"""The epochs one ledger accepts, read through a source other than the coordinator (e.g.
:func:`relayer_epochs`: a relayer of any one ledger)."""


async def follow_epoch(
    feed: SupplyFeed,
    verifier: FeedVerifier,
    attestation: Attestation,
    confirm: EpochSource | None = None,
) -> None:
    """Before ``attestation`` is checked: if it is signed under an epoch the verifier does not
    know yet, fetch the rotation chain from the server and verify it into the verifier. A
    chain that does not verify is logged and ignored: the record then fails verification.

    SECURITY (review finding 4): with ``confirm``, the chain is also checked against a
    ledger's epochs read NOT through the coordinator: the chain's newest epoch must be one
    that ledger accepts, and every epoch both show must have the same committee. A
    coordinator holding t retired keys can fork the chain, not the ledger, so a forked chain
    is refused (one relayer of any one ledger suffices: no node per chain is needed).
    RESIDUAL: that relayer and the coordinator colluding."""
    epoch = attestation.signed.record.epoch
    if epoch in verifier.epochs:
        return
    try:
        chain = await feed.committee_chain(verifier.committee.epoch)
        if confirm is not None:
            check_chain_on_ledger(verifier.committee, chain, await confirm())
        added = verifier.add_chain(chain)
    except InvalidCertificate as exc:
        get_logger().error("committee chain refused", reason=str(exc))
        return
    if added:
        get_logger().warning("committee epochs verified from the trust anchor", epochs=added)


async def watch(
    target: str | Sequence[str],
    verifier: FeedVerifier,
    start: int = 1,
    retry_delay: float = 0.5,
    give_up_after: float | None = None,
    identity: ClientIdentity | None = None,
    confirm: EpochSource | None = None,
) -> AsyncIterator[Verdict]:
    """Follow every security's feed from feed position ``start``, verifying each record.

    Reconnects after a disconnect or a server restart and resumes from the position after
    the last one received, so the caller sees each record exactly once. Gives up (raising
    the last error) when no connection succeeds for ``give_up_after`` seconds.

    ``target`` may list several coordinators (active/passive, ADR 0017): after a failure
    the stream resumes on the next one (or on the leader a standby named, when listed),
    from the same position; positions are database state, the same on every coordinator.
    """
    position = start
    failing_since: float | None = None
    ring = TargetRing(parse_targets(target))
    while True:
        feed = SupplyFeed(ring.current, identity=identity)
        try:
            async for a in feed.stream("", position):
                failing_since = None
                if a.feed_sequence < position:
                    continue  # a duplicate cannot happen by contract; never show one twice
                position = a.feed_sequence + 1
                await follow_epoch(feed, verifier, a, confirm)
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
            ring.after_failure(exc)  # ---- active/passive coordinators: the next one
        finally:
            await feed.close()
        await asyncio.sleep(retry_delay)


async def watch_feed(
    target: str | Sequence[str],
    verifier: FeedVerifier,
    start: int = 1,
    retry_delay: float = 0.5,
    give_up_after: float | None = None,
    check_every: float = 1.0,
    identity: ClientIdentity | None = None,
    confirm: EpochSource | None = None,
) -> AsyncIterator[Verdict | FeedStale]:
    """:func:`watch`, with a :class:`FeedStale` alarm whenever ``verifier.alarms`` raises
    one (``verifier.max_age`` set): also while no record arrives at all, and while the
    coordinator cannot be reached. Staleness is checked every ``check_every`` seconds
    when no received record is waiting to be handed out.
    """
    queue: asyncio.Queue[Verdict | Exception] = asyncio.Queue(maxsize=1024)

    async def pump() -> None:
        try:
            async for v in watch(
                target,
                verifier,
                start,
                retry_delay,
                give_up_after,
                identity=identity,
                confirm=confirm,
            ):
                await queue.put(v)
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)

    task = asyncio.create_task(pump(), name="supply-watch")
    loop = asyncio.get_running_loop()
    next_check = loop.time() + check_every
    try:
        while True:
            item: Verdict | Exception | None = None
            with contextlib.suppress(TimeoutError):
                item = await within(queue.get(), max(0.0, next_check - loop.time()))
            if isinstance(item, Exception):
                raise item
            if item is not None:
                yield item
            if loop.time() >= next_check:
                next_check = loop.time() + check_every
                if queue.empty():
                    for alarm in verifier.alarms():
                        yield alarm
    finally:
        await stop_task(task)  # the caller's own cancel is never swallowed


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
                got = received_error(cast(Any, exc).trailing_metadata())
                if got.reason is not BridgeReason.STALE_VERSION:
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
    endpoints: frozenset[tuple[bytes, bytes, bytes]] | None = None,
) -> tuple[int, list[str]]:
    """Verify the feed from feed position ``start`` up to its current end.

    Returns how many records of ``security`` (all when empty) were checked, and every
    violation: a verification failure, or a signed record that does not balance. The first
    record of each security is taken as its anchor (``from_genesis`` off).
    """
    verifier = FeedVerifier(committee, from_genesis=start <= 1, endpoints=endpoints)
    feed = SupplyFeed(target, identity=identity)
    checked, problems = 0, []
    try:
        end = max((a.feed_sequence for a in await feed.latest()), default=0)
        if end < start:
            return 0, []
        async with asyncio.timeout(limit_s):
            async for a in feed.stream("", start):
                if not security or a.signed.record.security == security:
                    await follow_epoch(feed, verifier, a)
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
