"""The coordinator's side of the depository kill switch (issue 10 item 4, ADR 0011).

The ledgers enforce a halt; the coordinator only (1) records the depository-signed orders
it is given, after checking them against the depository key the ledger itself holds, (2)
delivers each to its ledger through the relayer until the ledger applied it (level
triggered: pending orders are retried until applied, refused or expired), and (3) answers
"is this security halted on that ledger?" for its drivers, so that they queue instead of
sending steps the ledger would refuse, and say why.

Guarantees:

- Nothing here can halt or release anything by itself: an order takes effect only when a
  ledger accepts the depository's signature over it.
- An order is recorded only if the ledger's own depository key signed it, for that ledger's
  network and ledger, unexpired, above the ledger's last applied sequence; refused orders
  are not recorded (the caller gets the endpoint's reason).
- Per ledger, orders are delivered in ascending sequence (a ledger refuses a lower
  sequence after a higher one, so the order of delivery is the order of signing).
- A recorded HALT stops new locks of its scope at once (before the ledger applied it); a
  RELEASE takes effect for the drivers only once the ledger shows it.
- An order is marked APPLIED only when the ledger, read after the delivery, shows its
  sequence reached and (for a HALT) its scope halted (review finding 5). An order the ledger
  refuses as stale because a later order was applied first is SKIPPED: an alarm is logged,
  and a skipped HALT keeps its scope halted for the drivers until its expiry. So does a
  REFUSED HALT (an alarm too; review 2 finding 1): a refusal may be one peer's view.
  RESIDUAL: the confirming read goes through the same relayer that delivered the order (the
  coordinator has no other reader of the ledger); a relayer lying about both is caught by
  the ledger itself (it enforces the halt whatever the coordinator believes) and by the
  depository's own feed/halt status reads from other relayers, not here.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.aio import retrieve, stop_task, wait_event
from bridge.coordinator.clients import LedgerDomain, RelayerGateway
from bridge.coordinator.db import Conn, Database, as_database
from bridge.coordinator.wording import bounded
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    Conflict,
    InvalidInput,
    LedgerRejected,
    PreconditionFailed,
    Unavailable,
    public_text,
)
from bridge.domain.governance import (
    ZERO_WORD,
    HaltStatus,
    OrderAction,
    OrderRefused,
    SignedOrder,
    verify_order,
)
from bridge.domain.ids import SecurityId
from bridge.logfields import LEDGER, REASON, get_logger

__all__ = ["HaltBook", "Halted", "OrderRecord", "OrderState", "SqlHaltStore", "SqliteHaltStore"]


class Halted(PreconditionFailed):
    """A step waits because the depository halted the security on a ledger
    (FAILED_PRECONDITION at an API; a driver keeps the transfer waiting)."""

    kind = BridgeReason.HALTED

    def __init__(self, ledger: str, security: str, what: str) -> None:
        super().__init__(f"HALTED: {security} is halted on {ledger} by the depository; {what}")
        self.ledger = ledger
        self.security = security


class OrderState(enum.IntEnum):
    """``bridge.v1.OrderState``."""

    PENDING = 1
    APPLIED = 2
    REFUSED = 3
    EXPIRED = 4
    SKIPPED = 5
    """A later order of the ledger was applied first (review finding 5); see ``_deliver``."""


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One order as delivered to one ledger."""

    ledger: str
    signed: SignedOrder
    state: OrderState
    refusal: str
    tx_id: str
    received_at: float


_COLS = "ledger, body, state, refusal, tx_id, received_at"


def _row(row: tuple[str, str, int, str, str, float]) -> OrderRecord:
    ledger, body, state, refusal, tx_id, at = row
    return OrderRecord(ledger, SignedOrder.from_json(body), OrderState(state), refusal, tx_id, at)


class SqlHaltStore:
    """Depository orders in the coordinator's database (SQLite or PostgreSQL); every method
    is one transaction in the database's worker thread, never on the event loop."""

    def __init__(self, db: Database | Path) -> None:
        self._db = as_database(db)

    def close(self) -> None:
        """Release the database (closed with its last store)."""
        self._db.close()

    async def add(self, record: OrderRecord) -> tuple[OrderRecord, bool]:
        """Record ``record`` unless (ledger, sequence) is recorded; return the stored one and
        whether it is new. Conflict when that (ledger, sequence) holds another order."""
        body = record.signed.to_json()

        def run(db: Conn) -> tuple[OrderRecord, bool]:
            row = db.execute(
                f"SELECT {_COLS} FROM depository_orders WHERE ledger = ? AND sequence = ?"  # noqa: S608
                + db.for_update,
                (record.ledger, record.signed.order.sequence),
            ).fetchone()
            if row is not None:
                stored = _row(row)
                if stored.signed != record.signed:
                    raise Conflict(
                        f"order sequence {record.signed.order.sequence} on {record.ledger}"
                        " is already recorded with other content"
                    )
                return stored, False
            db.execute(
                "INSERT INTO depository_orders (ledger, sequence, security, body, state,"
                " refusal, tx_id, received_at) VALUES (?, ?, ?, ?, ?, '', '', ?)",
                (
                    record.ledger,
                    record.signed.order.sequence,
                    record.signed.order.security,
                    body,
                    int(record.state),
                    record.received_at,
                ),
            )
            return record, True

        return await self._db.write(run)

    async def set_state(
        self, ledger: str, sequence: int, state: OrderState, refusal: str = "", tx_id: str = ""
    ) -> None:
        """Record the outcome of delivering one order."""
        await self._db.write(
            lambda db: db.execute(
                "UPDATE depository_orders SET state = ?, refusal = ?, tx_id = ?"
                " WHERE ledger = ? AND sequence = ?",
                (int(state), refusal, tx_id, ledger, sequence),
            )
        )

    async def orders(
        self, ledger: str | None = None, pending_only: bool = False, gating: bool = False
    ) -> list[OrderRecord]:
        """Orders by ledger and ascending sequence (optionally one ledger, pending only, or
        ``gating``: pending, skipped or refused, the orders the drivers still obey)."""
        query = f"SELECT {_COLS} FROM depository_orders"  # noqa: S608
        where, args = [], []
        if ledger is not None:
            where.append("ledger = ?")
            args.append(ledger)
        if pending_only:
            where.append(f"state = {int(OrderState.PENDING)}")
        elif gating:
            gates = (OrderState.PENDING, OrderState.SKIPPED, OrderState.REFUSED)
            where.append(f"state IN ({', '.join(str(int(g)) for g in gates)})")
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = await self._db.read(
            lambda db: db.execute(query + " ORDER BY ledger, sequence", args).fetchall()
        )
        return [_row(tuple(r)) for r in rows]


class SqliteHaltStore(SqlHaltStore):
    """The halt store on a SQLite file (the embedded default)."""


# Refusals that mean the order lacks authority (PERMISSION_DENIED at the API); any other
# refusal is about its validity here and now (FAILED_PRECONDITION).
_NO_AUTHORITY = frozenset({ErrorReason.NOT_DEPOSITORY, ErrorReason.INVALID_SIGNATURE})


class HaltBook:
    """Records, delivers and reports depository orders; see the module docstring."""

    def __init__(
        self,
        store: SqlHaltStore,
        relayers: Mapping[str, RelayerGateway],
        domains: Mapping[str, LedgerDomain],
        on_change: Callable[[], None] = lambda: None,
        cache_s: float = 2.0,
        retry_s: float = 2.0,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._leading = leading  # ---- HA (ADR 0017): LeaseKeeper.holds_now
        self._relayers = dict(relayers)
        self._domains = dict(domains)
        self._on_change = on_change
        self._cache_s = cache_s
        self._retry_s = retry_s
        self._cache: dict[tuple[str, str | None], tuple[float, HaltStatus]] = {}
        # Reads in flight, shared by every caller that misses the cache meanwhile (issue 14:
        # one GetHaltStatus per key at a time, not one per driver), tagged with the
        # generation they started in; see ``_forget`` for what starts a new one.
        self._generation = 0
        self._reading: dict[tuple[str, str | None], tuple[int, asyncio.Task[HaltStatus]]] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._log = get_logger()
        # ---- the orders that gate, per ledger (issue 14): read once while this book runs,
        # read again after any write of its own (see ``_gating_orders``).
        self._gating: dict[str, tuple[OrderRecord, ...]] = {}
        self._orders_generation = 0
        self._keep_gating = False

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start delivering pending orders (those recorded before a restart included)."""
        self._forget_orders()
        self._keep_gating = True
        self._stopping = False
        self._task = asyncio.create_task(self._deliver_forever(), name="depository-orders")

    async def stop(self) -> None:
        """Stop delivering (pending orders stay recorded and resume on the next start)."""
        self._stopping = True
        self._keep_gating = False
        self._forget_orders()
        for _, read in self._reading.values():
            read.cancel()
        self._reading.clear()  # a read cancelled before it ran never removes itself
        if self._task is not None:
            await stop_task(self._task)  # the caller's own cancel is never swallowed

    # -- the depository API --------------------------------------------------------------
    def ledgers_of(self, signed: SignedOrder) -> list[str]:
        """The ledgers an order is for: its ledger, or (ledger word zero) every ledger of its
        network. InvalidInput when none of this network's ledgers matches."""
        o = signed.order
        names = [
            name
            for name, d in self._domains.items()
            if d.network_word == o.network and (o.ledger in (ZERO_WORD, d.ledger_word))
        ]
        if not names:
            raise InvalidInput("the order names no ledger of this bridge (network and ledger)")
        return sorted(names)

    async def submit(self, signed: SignedOrder) -> list[OrderRecord]:
        """Check and record a depository order for every ledger it is for; start delivery.

        SECURITY: checked against the depository key each ledger holds (read through its
        relayer at finality), with the ledgers' own rule: OrderRefused (PERMISSION_DENIED)
        without that key's signature; PreconditionFailed when expired, stale (at or below
        the ledger's sequence and not recorded here) or the ledger has no depository key.
        Idempotent: an order already recorded is returned as it stands.
        """
        out = []
        for ledger in self.ledgers_of(signed):
            known = [
                r
                for r in await self._store.orders(ledger)
                if r.signed.order.sequence == signed.order.sequence
            ]
            if known and known[0].signed == signed:
                out.append(known[0])
                continue
            status = await self._relayers[ledger].halt_status(None)
            d = self._domains[ledger]
            try:
                verify_order(
                    signed,
                    status.depository,
                    d.network_word,
                    d.ledger_word,
                    status.sequence,
                    int(time.time()),
                )
            except OrderRefused as exc:
                if exc.reason in _NO_AUTHORITY:
                    raise
                raise PreconditionFailed(f"{exc} (ledger {ledger})") from None
            record = OrderRecord(ledger, signed, OrderState.PENDING, "", "", time.time())
            try:
                stored, created = await self._store.add(record)
            finally:
                self._forget_orders()  # SECURITY: a recorded HALT gates from the next read
            if created:
                self._log.info(
                    "depository order recorded",
                    **{LEDGER: ledger, REASON: _describe(signed)},
                )
            out.append(stored)
        self._kick.set()
        self._on_change()
        return out

    async def orders(self, security: SecurityId | None = None) -> list[OrderRecord]:
        """Every recorded order (of ``security``, including ledger-wide ones)."""
        records = await self._store.orders()
        if security is None:
            return records
        return [r for r in records if r.signed.order.security in (ZERO_WORD, security.word)]

    async def ledger_status(self, ledger: str, security: SecurityId | None) -> HaltStatus:
        """What ``ledger`` enforces now (read through its relayer, cached ``cache_s``).

        Callers that miss the cache while a read of the same key is in flight share that
        read (one ``GetHaltStatus`` per key at a time however many drivers ask); a failed
        read fails each of them alike, and a caller cancelled while waiting does not cancel
        it for the others.

        SECURITY: an order marked APPLIED (and the end of every delivery pass that settled
        one) clears the cache and starts a new generation. A read that started before
        cannot answer a caller that arrives after (it would be the pre-HALT status), and its
        answer is not cached: only a read started in the current generation is shared or
        kept.
        """
        key = (ledger, None if security is None else security.isin)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._cache_s:
            return hit[1]
        reading = self._reading.get(key)
        if reading is None or reading[0] != self._generation or reading[1].done():
            read = asyncio.create_task(self._read(key, self._generation))
            read.add_done_callback(retrieve)  # every caller may have gone
            reading = (self._generation, read)
            self._reading[key] = reading
        try:
            return await asyncio.shield(reading[1])
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if reading[1].cancelled() and (me is None or not me.cancelling()):
                # The shared read was stopped, not this caller: a typed, retryable answer.
                raise Unavailable(f"halt status of {ledger}: the read was stopped") from None
            raise

    def _forget(self) -> None:
        """Start a new generation: drop every cached status, and let no read already in
        flight answer a later caller or be cached."""
        self._generation += 1
        self._cache.clear()

    async def _read(self, key: tuple[str, str | None], generation: int) -> HaltStatus:
        started = time.monotonic()
        try:
            status = await self._relayers[key[0]].halt_status(key[1])
        finally:
            mine = self._reading.get(key)
            if mine is not None and mine[1] is asyncio.current_task():
                del self._reading[key]
        if generation == self._generation:
            self._cache[key] = (started, status)
        return status

    async def halted(self, ledger: str, security: SecurityId) -> bool:
        """True while ``security`` may not move on ``ledger``: the ledger shows it halted,
        or a HALT order for it (or for the whole ledger) is recorded and not yet applied.
        A ledger that cannot be read counts as not halted (the ledger still enforces).
        SECURITY: a SKIPPED HALT gates like a pending one until its expiry (review finding 5);
        so does a REFUSED one (review 2 finding 1: the refusal may be one peer's view, and a
        depository HALT errs on the side of stopping)."""
        for r in await self._gating_orders(ledger):
            o = r.signed.order
            if (
                o.action == OrderAction.HALT
                and o.security in (ZERO_WORD, security.word)
                and o.expiry > time.time()
            ):
                return True
        try:
            return (await self.ledger_status(ledger, security)).halted
        except BridgeError:
            return False

    # -- delivery ------------------------------------------------------------------------
    async def _deliver_forever(self) -> None:
        while not self._stopping:
            self._kick.clear()
            try:
                await self.deliver_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("depository order delivery failed")
            await wait_event(self._kick, self._retry_s)  # never loses stop()'s cancel

    async def deliver_pending(self) -> int:
        """One pass: per ledger, deliver pending orders in ascending sequence until one
        cannot be delivered now. Returns how many reached a final state."""
        done = 0
        by_ledger: dict[str, list[OrderRecord]] = {}
        for r in await self._store.orders(pending_only=True):
            by_ledger.setdefault(r.ledger, []).append(r)
        for records in by_ledger.values():
            for r in records:
                state = await self._deliver(r)
                if state is OrderState.PENDING:
                    break  # keep the sequence order: retry this one first
                done += 1
        if done:
            self._forget()
            self._on_change()
        return done

    async def _deliver(self, r: OrderRecord) -> OrderState:
        seq = r.signed.order.sequence
        log = self._log.bind(**{LEDGER: r.ledger})
        try:
            out = await self._relayers[r.ledger].apply_order(r.signed)
        except Unavailable as exc:
            log.warning("depository order not delivered yet", **{REASON: str(exc)[:300]})
            return OrderState.PENDING
        except LedgerRejected as exc:
            if exc.reason == ErrorReason.STALE_ORDER:
                return await self._settle(r, "")
            # SECURITY: the refusal is returned to the depository: its public text.
            state, refusal = OrderState.REFUSED, bounded(public_text(exc))
            if exc.reason == ErrorReason.ORDER_EXPIRED:
                state = OrderState.EXPIRED
            await self._set_state(r.ledger, seq, state, refusal)
            if state is OrderState.REFUSED:
                # SECURITY: a refused HALT keeps gating until its expiry (see ``halted``).
                log.error(
                    "ALARM depository order refused by the ledger",
                    **{REASON: f"{_describe(r.signed)}: {refusal}"[:300]},
                )
            else:
                log.warning("depository order refused by the ledger", **{REASON: refusal})
            return state
        except BridgeError as exc:
            log.warning("depository order not delivered yet", **{REASON: str(exc)[:300]})
            return OrderState.PENDING
        return await self._settle(r, out.tx_id)

    async def _settle(self, r: OrderRecord, tx_id: str) -> OrderState:
        """After a delivery that the relayer reports done (or already done, or stale): mark
        ``r`` APPLIED only if the ledger shows it; SKIPPED (an alarm; a HALT keeps gating)
        if the ledger's sequence passed it without showing it; else leave it PENDING.

        SECURITY (review finding 5): "already applied" from the adapter only means the
        ledger's sequence is at or above the order's; a later order may have superseded a
        HALT that never took effect, so that is never reported as APPLIED."""
        seq = r.signed.order.sequence
        log = self._log.bind(**{LEDGER: r.ledger})
        try:
            shown = await self._shows(r)
        except BridgeError as exc:
            log.warning("depository order not confirmed yet", **{REASON: str(exc)[:300]})
            return OrderState.PENDING
        if shown is None:  # the read lags the ledger: confirm on the next pass
            return OrderState.PENDING
        if shown:
            # SECURITY (review s21): once APPLIED the order stops gating and ``halted`` rests
            # on the ledger's status alone; no status read before this point may answer it.
            self._forget()
            await self._set_state(r.ledger, seq, OrderState.APPLIED, "", tx_id)
            log.info("depository order applied", **{REASON: _describe(r.signed)})
            return OrderState.APPLIED
        refusal = "skipped: the ledger's sequence passed this order without its effect"
        await self._set_state(r.ledger, seq, OrderState.SKIPPED, refusal, tx_id)
        log.error("ALARM depository order skipped", **{REASON: _describe(r.signed)})
        return OrderState.SKIPPED

    async def _set_state(
        self, ledger: str, sequence: int, state: OrderState, refusal: str = "", tx_id: str = ""
    ) -> None:
        """The store's ``set_state``; the gating orders are read again after it."""
        try:
            await self._store.set_state(ledger, sequence, state, refusal, tx_id)
        finally:
            self._forget_orders()

    def _forget_orders(self) -> None:
        """Start a new generation of the gating orders: none kept, and no read already in
        flight is kept when it returns."""
        self._orders_generation += 1
        self._gating.clear()

    async def _gating_orders(self, ledger: str) -> tuple[OrderRecord, ...]:
        """The orders of ``ledger`` the drivers still obey (pending, skipped or refused), as
        the store holds them: read once while this book runs, then kept until this book
        writes an order again (a lock, prepare and mint each ask; issue 14).

        SECURITY: kept, not cached for a while, and exact while this coordinator leads: a
        standby refuses the DepositoryService (the HA gate) and the database refuses any
        other term's writes (the fence), so the leader is the only writer of depository
        orders. The kept orders are used only while ``leading()`` says so (with HA,
        ``LeaseKeeper.holds_now``: within ``hold_for`` of the last successful renewal,
        before any standby can be elected); a leader stalled past its term, or stopping,
        reads the store again, where a new leader's HALT is (attacker review: reads are not
        fenced, so a deposed leader must not answer from memory). Every write of this book
        starts a new generation once it returns or fails, so a HALT gates from the first
        read after ``submit`` recorded it; a read that began before a write answers its
        caller (as an uncached read racing the write would) but is not kept. Before
        ``start`` and after ``stop`` every call reads the store. RESIDUAL: a migration run
        by a newer standby on the shared database (ADR 0017 point 3) must not change
        ``depository_orders`` rows; none does."""
        keep = self._keep_gating and self._leading()
        if keep:
            kept = self._gating.get(ledger)
            if kept is not None:
                return kept
        generation = self._orders_generation
        records = tuple(await self._store.orders(ledger, gating=True))
        if keep and generation == self._orders_generation:
            self._gating[ledger] = records
        return records

    async def _shows(self, r: OrderRecord) -> bool | None:
        """Whether ``r.ledger`` shows ``r``'s effect now: True when its sequence is exactly
        the order's and (a HALT) the scope is halted / (a RELEASE) not halted by the scope;
        None when the ledger's sequence has not reached it; False otherwise (a later order
        passed it, or the ledger shows the other flag). Reads afresh (not the drivers'
        cache), through the relayer of that ledger (the residual in the module docstring)."""
        o = r.signed.order
        relayer = self._relayers[r.ledger]
        isin = None if o.security == ZERO_WORD else o.security.rstrip(b"\0").decode()
        status = await relayer.halt_status(isin)
        if status.sequence < o.sequence:
            return None
        if status.sequence > o.sequence:
            return False
        scope_halted = status.ledger_halted if isin is None else status.security_halted
        return scope_halted == (o.action == OrderAction.HALT)


def _describe(signed: SignedOrder) -> str:
    o = signed.order
    scope = "every security" if o.security == ZERO_WORD else o.security.rstrip(b"\0").decode()
    return f"{OrderAction(o.action).name} {scope} (sequence {o.sequence})"
