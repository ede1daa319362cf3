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
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping

from bridge.config import NetworkConfig
from bridge.coordinator.clients import CommitteeClient, RelayerGateway
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.supply_store import Hold, StoredRegistration, SupplyStore
from bridge.domain.errors import (
    InvalidInput,
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
from bridge.logfields import ELAPSED, ERROR, REASON, SECURITY, SEQUENCE, get_logger

PUBLISH_ATTEMPTS = 12
FEED_PAGE = 500


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
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, bool] = {}
        self._last_published: dict[str, float] = {}
        self._listeners: set[asyncio.Event] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._log = get_logger()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Attest every registered security once, then keep the heartbeat."""
        for security in await self._store.registered_securities():
            latest = await self._store.latest(security)
            self._last_published[security] = latest.published_at if latest else 0.0
            self.touch(security, force=latest is None)
        self._ticker = asyncio.create_task(self._tick(), name="supply-heartbeat")

    async def stop(self) -> None:
        """Cancel publications in flight (an unfinished one is simply redone later)."""
        tasks = [t for t in (self._ticker, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _tick(self) -> None:
        if self._heartbeat <= 0:
            return
        every = max(0.2, self._heartbeat / 4)
        while True:
            await asyncio.sleep(every)
            now = time.time()
            for security, at in list(self._last_published.items()):
                if now - at >= self._heartbeat:
                    self.touch(security, force=True)

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
            except (PreconditionFailed, Unavailable, InvalidInput, NotFound) as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    self._log.warning(
                        "supply record not produced; retried on the next change or heartbeat",
                        **{SECURITY: security, ERROR: str(exc)[:500]},
                    )
                    return
            except Exception:
                self._log.exception("supply publication failed", **{SECURITY: security})
                return
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
        readings = await asyncio.gather(
            *(self._relayers[name].supply(sid) for name, _ in reg.totals)
        )
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
    async def refusal(self, security: str, ledgers: tuple[str, ...]) -> str | None:
        """Why new transfers of ``security`` between ``ledgers`` are refused, or None."""
        stored = await self._store.registration(security)
        if stored is None:
            return (
                f"{security} has no registered issuance; a supply operator must register it"
                " (bridge supply register)"
            )
        named = dict(stored.registration.totals)
        for name in ledgers:
            if name not in named:
                return f"ledger {name} is not in the registered issuance of {security}"
        hold: Hold | None = await self._store.hold(security)
        if hold is not None:
            return (
                f"transfers of {security} are held since supply record #{hold.raised_by}:"
                f" {hold.reason}; a supply operator must release the hold"
            )
        return None

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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=5.0)
        finally:
            self._listeners.discard(changed)

    async def registration(self, security: str) -> StoredRegistration:
        """The registration in force, or NotFound."""
        stored = await self._store.registration(security)
        if stored is None:
            raise NotFound(f"{security} has no registered issuance")
        return stored
