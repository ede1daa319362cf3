"""The supply publisher: turns ledger changes into committee-signed supply records.

A security is *touched* when a relayer delivers a finalized bridge event for one of its
transfers, when its registration changes, when a hold is released, and when its heartbeat
falls due. Each touch runs one publication for that security (never two at once): read
every registered ledger at its finalized height through the relayers, build the record,
have t of n members re-read and sign it, assess it, append it durably, wake subscribers.
The work per record depends on the number of ledgers and members, not on how many
securities are registered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from bridge.aio import stop_tasks, wait_event
from bridge.config import NetworkConfig
from bridge.coordinator.clients import CommitteeClient, RelayerGateway
from bridge.coordinator.coalesce import Coalescer
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.supply_store import Gate, StoredRegistration, SupplyStore
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.ids import SecurityId
from bridge.domain.issuance import (
    HoldRelease,
    Registration,
    check_fresh,
    verify_instruction,
)
from bridge.domain.supply import (
    GENESIS_HASH,
    Attestation,
    SignedRecord,
    SupplyReading,
    assess,
    make_record,
)
from bridge.logfields import ELAPSED, ERROR, LEDGER, REASON, SECURITY, SEQUENCE, get_logger

PUBLISH_ATTEMPTS = 12
FEED_PAGE = 500
GATE_READS_IN_FLIGHT = 2
"""---- batch: at most this many gate reads (registration and hold) of one security at
once; admissions arriving meanwhile share the next one (issue 14)."""
FIRST_CHECK_WAIT = 10.0
"""---- supply not counted: how long admission waits for a security's first reading round
since start before refusing as Unavailable (it is normally well under a second)."""


# ---- supply not counted (review F16)
def not_counted(exc: BaseException) -> bool:
    """True when ``exc`` is a ledger's definitive, typed SupplyNotCounted refusal.

    SECURITY: decided on the typed reason only (the relayer's ErrorInfo, rebuilt by
    ``clients.translate`` into a LedgerRejected), never on a message; a transport fault
    (Unavailable) or any other refusal is never taken for it.
    """
    return (
        isinstance(exc, LedgerRejected | PreconditionFailed)
        and exc.reason is ErrorReason.SUPPLY_NOT_COUNTED
    )


def _figures(readings: tuple[SupplyReading, ...]) -> tuple[tuple[object, ...], ...]:
    """What a record says about supply, without where it was read (heights, hashes)."""
    return tuple(
        (r.ledger, r.total_supply, r.escrowed, r.prepared, r.burned_out, r.minted_in)
        for r in readings
    )


class SupplyPublisher:
    """Produces each registered security's hash-chained, committee-signed supply records."""

    def __init__(
        self,
        network: NetworkConfig,
        store: SupplyStore,
        relayers: Mapping[str, RelayerGateway],
        committee: CommitteeClient,
        heartbeat: float,
        instruction_max_age: float = 600.0,
        concurrency: int = 8,
        epochs: EpochTracker | None = None,
    ) -> None:
        self._network = network
        # Committee rotation (ADR 0009): records are signed under the newest epoch every
        # ledger accepts (None: the network file's committee).
        self._epochs = epochs
        self._store = store
        self._relayers = dict(relayers)
        self._committee = committee
        self._heartbeat = heartbeat
        self._max_age_ms = int(instruction_max_age * 1000)
        self._slots = asyncio.Semaphore(concurrency)
        # ---- batch (issue 14): admission's per-transfer registration and hold reads,
        # coalesced per security (a lone admission's read goes out at once).
        self._gates: Coalescer[str, None, Gate] = Coalescer(
            self._read_gates, max_items=10_000, max_in_flight=GATE_READS_IN_FLIGHT
        )
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, bool] = {}
        self._last_published: dict[str, float] = {}
        self._listeners: set[asyncio.Event] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._log = get_logger()
        # ---- supply not counted (review F16): security -> ledgers whose last reading was
        # a typed SupplyNotCounted refusal (admission refuses the security while non-empty),
        # and, per security registered at start, whether its first reading round is done.
        self._uncounted: dict[str, frozenset[str]] = {}
        self._first_round: dict[str, asyncio.Event] = {}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Attest every registered security once, then keep the heartbeat."""
        for security in await self._store.registered_securities():
            # SECURITY (review F16): nothing about counting survives a restart in memory;
            # admission waits for this first round to re-detect it (see ``refusal``).
            self._first_round.setdefault(security, asyncio.Event())
            latest = await self._store.latest(security)
            self._last_published[security] = latest.published_at if latest else 0.0
            self.touch(security, force=latest is None)
        self._ticker = asyncio.create_task(self._tick(), name="supply-heartbeat")

    async def stop(self) -> None:
        """Cancel publications in flight (an unfinished one is simply redone later) and
        the admissions' gate reads."""
        tasks = [t for t in (self._ticker, *self._running.values()) if t is not None]
        try:
            await stop_tasks(tasks)  # the caller's own cancel is never swallowed
        finally:
            await self._gates.close()

    async def _tick(self) -> None:
        every = max(0.2, self._heartbeat / 4) if self._heartbeat > 0 else 1.0
        while True:
            await asyncio.sleep(every)
            now = time.time()
            for security, at in list(self._last_published.items()):
                if self._heartbeat > 0 and now - at >= self._heartbeat:
                    self.touch(security, force=True)
            for security in list(self._uncounted):  # ---- supply not counted: re-read
                self.touch(security)  # soon, so admission resumes once it is counted

    # -- triggers ------------------------------------------------------------------------
    def touch(self, security: str, force: bool = False) -> None:
        """Publish a record of ``security`` soon (``force``: even if nothing changed)."""
        if security in self._running:
            self._again[security] = self._again.get(security, False) or force
            return
        self._running[security] = asyncio.create_task(
            self._publish_loop(security, force), name=f"supply-{security}"
        )

    async def _publish_loop(self, security: str, force: bool) -> None:
        try:
            while True:
                async with self._slots:
                    await self._publish_with_retries(security, force)
                if security not in self._again:
                    return
                force = self._again.pop(security)
        finally:
            self._running.pop(security, None)

    async def _publish_with_retries(self, security: str, force: bool) -> None:
        delay = 0.05
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self.publish(security, force)
                return
            except asyncio.CancelledError:
                raise
            except (LedgerRejected, PreconditionFailed, Unavailable, InvalidInput, NotFound) as exc:
                if not_counted(exc):
                    return  # definitive, logged by _note_counting; re-read on every tick
                if isinstance(exc, LedgerRejected):
                    self._log.exception("supply publication failed", **{SECURITY: security})
                    return
                if attempt == PUBLISH_ATTEMPTS:
                    self._log.warning(
                        "supply record not produced; retried on the next change or heartbeat",
                        **{SECURITY: security, ERROR: str(exc)[:500]},
                    )
                    return
            except Exception:
                self._log.exception("supply publication failed", **{SECURITY: security})
                return
            finally:
                first = self._first_round.get(security)
                if first is not None:
                    first.set()  # one attempt made, whatever its outcome
            # Jittered: a Fabric ledger that commits a block between the proposal and a
            # member's read refuses the cut; the next attempt proposes a fresh one.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(0.5, delay * 2)

    # -- one record ----------------------------------------------------------------------
    async def publish(self, security: str, force: bool = True) -> Attestation | None:
        """Produce, sign and append the next record of ``security``; None when nothing
        changed since the last record and ``force`` is off, or it is not registered."""
        began = time.monotonic()
        stored = await self._store.registration(security)
        if stored is None:
            return None
        reg = stored.registration
        sid = SecurityId(security)
        names = [name for name, _ in reg.totals]
        outcomes = await asyncio.gather(
            *(self._relayers[name].supply(sid) for name in names), return_exceptions=True
        )
        self._note_counting(security, dict(zip(names, outcomes, strict=True)))
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:  # a definitive SupplyNotCounted first: it ends the retries
            raise next((f for f in failures if not_counted(f)), failures[0])
        readings = [o for o in outcomes if isinstance(o, SupplyReading)]
        latest = await self._store.latest(security)
        ordered = tuple(sorted(readings, key=lambda r: r.ledger))
        if (
            not force
            and latest is not None
            and latest.signed.record.registration_version == reg.version
            and _figures(latest.signed.record.readings) == _figures(ordered)
        ):
            return None
        committee = (
            await self._epochs.common() if self._epochs is not None else self._committee.committee
        )
        record = make_record(
            security=security,
            sequence=latest.signed.record.sequence + 1 if latest else 1,
            previous_hash=latest.signed.record.digest if latest else GENESIS_HASH,
            epoch=committee.epoch,
            produced_at_ms=int(time.time() * 1000),
            readings=ordered,
            registered=dict(reg.totals),
            registration_version=reg.version,
        )
        signatures = await self._committee.sign_supply(
            record, reg, stored.signature, latest.signed if latest else None, committee
        )
        assessment = assess(record, await self._store.confirmed(security))
        attestation = await self._store.append(
            SignedRecord(record, signatures), assessment, time.time()
        )
        self._last_published[security] = attestation.published_at
        self._log.info(
            "supply record published",
            **{
                SECURITY: security,
                SEQUENCE: record.sequence,
                ELAPSED: round(time.monotonic() - began, 4),
            },
        )
        if assessment.hold_reasons:
            self._log.error(
                "SUPPLY DISCREPANCY: transfers of this security are held",
                **{
                    SECURITY: security,
                    REASON: "; ".join(assessment.hold_reasons),
                    SEQUENCE: record.sequence,
                },
            )
        elif assessment.notes:
            self._log.warning(
                "registered issuance pending",
                **{SECURITY: security, REASON: "; ".join(assessment.notes)},
            )
        for listener in self._listeners:
            listener.set()
        return attestation

    # -- operator instructions -------------------------------------------------------------
    async def register(self, registration: Registration, signature: bytes) -> bool:
        """Apply an operator-signed registration; returns False for an exact repeat.

        Refuses an unknown security or ledger, a ledger where the security is not
        issued, and a ledger left out where it is.
        """
        operator = verify_instruction(self._network.supply_operators, registration, signature)
        current = await self._store.registration(registration.security)
        if current is not None and current.registration.digest == registration.digest:
            return False
        check_fresh(registration, int(time.time() * 1000), self._max_age_ms)
        if registration.security not in self._network.securities:
            raise NotFound(f"security {registration.security} is not in this network")
        named = dict(registration.totals)
        for name in named:
            if name not in self._network.ledgers:
                raise NotFound(f"ledger {name!r} is not connected")
        await asyncio.gather(
            *(self._check_presence(registration.security, n, n in named) for n in self._relayers)
        )
        applied = await self._store.register(StoredRegistration(registration, signature, operator))
        if applied:
            self._log.info(
                "issuance registered",
                **{SECURITY: registration.security},
                version=registration.version,
                total=registration.total,
                operator="0x" + operator.hex(),
            )
            self._last_published.setdefault(registration.security, 0.0)
            self.touch(registration.security, force=True)
        return applied

    async def _check_presence(self, security: str, ledger: str, named: bool) -> None:
        try:
            await self._relayers[ledger].supply(SecurityId(security))
        except NotFound:
            if named:
                raise PreconditionFailed(f"{security} is not issued on ledger {ledger}") from None
            return
        except (LedgerRejected, PreconditionFailed) as exc:
            # ---- supply not counted: the security IS issued there, its figure is refused;
            # admission refuses it from now on (before the registration applies).
            if not not_counted(exc):
                raise
            self._note_counting(security, {ledger: exc})
        if not named:
            raise PreconditionFailed(
                f"{security} is issued on ledger {ledger}; the registration must name it"
            )

    async def release(self, release: HoldRelease, signature: bytes) -> None:
        """Apply an operator-signed hold release (see SupplyStore.release)."""
        operator = verify_instruction(self._network.supply_operators, release, signature)
        check_fresh(release, int(time.time() * 1000), self._max_age_ms)
        await self._store.release(release, operator)
        self._log.warning(
            "supply hold released",
            **{SECURITY: release.security},
            hold=release.hold_sequence,
            operator="0x" + operator.hex(),
        )
        self.touch(release.security, force=True)

    # -- what the coordinator and subscribers ask -------------------------------------------
    async def refusal(self, security: str, ledgers: tuple[str, ...]) -> PreconditionFailed | None:
        """Why new transfers of ``security`` between ``ledgers`` are refused, or None.

        GUARANTEES: refused while the security has no registration, a ledger of the
        transfer is not in it, a hold is raised, or (review F16, fail closed) some
        registered ledger's last reading was the typed SupplyNotCounted refusal: reason
        ``SUPPLY_NOT_COUNTED`` naming that ledger, lifted by itself by the first reading
        round in which that ledger answers a figure. After a start, a security registered
        then is answered only once its first reading round is done (at most
        ``FIRST_CHECK_WAIT`` s, then Unavailable): the condition is re-detected, never
        forgotten by a restart. Transient read failures never refuse.
        """
        # One read of the registration and the hold, started after this call, shared with
        # the admissions of the same security waiting at once (never an earlier read).
        gate = await self._gates.call(security, None)
        stored = gate.registration
        if stored is None:
            return PreconditionFailed(
                f"{security} has no registered issuance; a supply operator must register it"
                " (bridge supply register)"
            )
        named = dict(stored.registration.totals)
        for name in ledgers:
            if name not in named:
                return PreconditionFailed(
                    f"ledger {name} is not in the registered issuance of {security}"
                )
        hold = gate.hold
        if hold is not None:
            return PreconditionFailed(
                f"transfers of {security} are held since supply record #{hold.raised_by}:"
                f" {hold.reason}; a supply operator must release the hold"
            )
        return await self._counting_refusal(security)

    async def _read_gates(self, security: str, waiting: Sequence[None]) -> list[Gate]:
        """One gate read answers every admission of ``security`` that waited for it."""
        gate = await self._store.gate(security)
        return [gate] * len(waiting)

    # ---- supply not counted (review F16)
    async def _counting_refusal(self, security: str) -> PreconditionFailed | None:
        first = self._first_round.get(security)
        if first is not None and not await wait_event(first, FIRST_CHECK_WAIT):
            raise Unavailable(
                f"the supply of {security} has not been read since the coordinator"
                " started; retry shortly"
            )
        uncounted = self._uncounted.get(security)
        if not uncounted:
            return None
        ledger = min(uncounted)
        return PreconditionFailed(
            f"the supply of {security} cannot be counted exactly on ledger {ledger}"
            " (its counters are not complete: the ledger's admins run CountSupply to"
            " completion); transfers of it resume by themselves once it is counted",
            ErrorReason.SUPPLY_NOT_COUNTED,
            ledger,
        )

    def _note_counting(self, security: str, outcomes: Mapping[str, object]) -> None:
        """Record which ledgers answered SupplyNotCounted in a reading round; log a change.

        SECURITY: a ledger is marked by its typed refusal only and unmarked only by a
        figure it answered; any other failure (transient or not) leaves its mark as it was.
        The ledger named is the one whose relayer was asked, never the refusal's claim.
        """
        before = self._uncounted.get(security, frozenset())
        now = set(before)
        for ledger, outcome in outcomes.items():
            if isinstance(outcome, SupplyReading):
                now.discard(ledger)
            elif isinstance(outcome, BaseException) and not_counted(outcome):
                now.add(ledger)
        after = frozenset(now)
        if after:
            self._uncounted[security] = after
        else:
            self._uncounted.pop(security, None)
        first = self._first_round.get(security)
        if first is not None:
            first.set()
        for ledger in sorted(after - before):
            self._log.error(
                "SUPPLY NOT COUNTED: new transfers of this security are refused",
                **{
                    SECURITY: security,
                    LEDGER: ledger,
                    REASON: ErrorReason.SUPPLY_NOT_COUNTED.value,
                },
            )
        for ledger in sorted(before - after):
            self._log.warning(
                "supply counted again: transfers of this security resume",
                **{SECURITY: security, LEDGER: ledger},
            )

    async def latest(self, security: str | None) -> list[Attestation]:
        """The latest record of one security, or of every registered security."""
        names = [security] if security else sorted(await self._store.registered_securities())
        out = []
        for name in names:
            a = await self._store.latest(name)
            if a is not None:
                hold = await self._store.hold(name)
                out.append(
                    Attestation(
                        a.feed_sequence,
                        a.signed,
                        a.alerts,
                        hold is not None,
                        f"held since record #{hold.raised_by}: {hold.reason}" if hold else "",
                        a.published_at,
                    )
                )
        if security and not out:
            raise NotFound(f"no supply record of {security} yet")
        return out

    async def stream(self, security: str | None, start: int) -> AsyncIterator[Attestation]:
        """Records from position ``start`` (feed position, or the security's sequence when
        ``security`` is set), then every new one; never a gap or a duplicate."""
        changed = asyncio.Event()
        self._listeners.add(changed)
        try:
            after = max(0, start - 1)
            while True:
                changed.clear()
                if security:
                    page = await self._store.security_feed(security, after, FEED_PAGE)
                else:
                    page = await self._store.feed(after, FEED_PAGE)
                for a in page:
                    after = a.signed.record.sequence if security else a.feed_sequence
                    yield a
                if len(page) == FEED_PAGE:
                    continue
                await wait_event(changed, 5.0)
        finally:
            self._listeners.discard(changed)

    async def registration(self, security: str) -> StoredRegistration:
        """The registration in force, or NotFound."""
        stored = await self._store.registration(security)
        if stored is None:
            raise NotFound(f"{security} has no registered issuance")
        return stored
