"""Leader lease with a fencing token for active/passive coordinators (ADR 0017).

One row, ``coordinator_lease(id = 1, holder, instance, token, expires_at)`` (``instance``:
a random id per process, HA review finding 4), in the coordinators'
shared database, and one ``coordinator_members(name, address, started_at, seen_at)`` row per
coordinator (its advertised address and last heartbeat). Time is the DATABASE's clock only,
so coordinators' clocks may disagree.

- :meth:`Lease.acquire` takes the lease when it is free or expired (or renews it when held
  by this holder) and then increments ``token``: every new term has a larger token.
- :meth:`Lease.check` (installed on the stores' :class:`~bridge.coordinator.db.Database` by
  :meth:`~bridge.coordinator.db.Database.set_fence`) runs first in every write transaction:
  it reads the lease row ``FOR KEY SHARE`` and refuses (:class:`Fenced`, nothing written)
  unless this process still holds the token it was granted. SECURITY: a takeover must lock
  the row ``FOR UPDATE``, so it waits for the old leader's in-flight fenced writes to end,
  and every later write of the old leader fails, while a renewal (a plain UPDATE of the
  non-key ``expires_at``) never waits for them (HA review finding 2); a leader deposed
  while hung (SIGSTOP, GC, partition) cannot write when it wakes, whatever its own clock
  says.
- A takeover that still meets the row locked once the term has been expired for longer than
  ``ttl`` ends that term's process's sessions of the coordinators' own role and database
  (:meth:`Lease.end_stale_term`): every bound on a fenced
  write (its statement and idle timeouts) has passed by then, so a session still holding the
  row is one the server cannot time out (a process frozen mid-message, or while the server
  writes it a large answer), which would otherwise hold every takeover back until it died.
- :class:`LeaseKeeper` is the election loop of one coordinator process.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.aio import wait_event, within
from bridge.coordinator.db import Conn, Database, Dialect, coordinator_session_name
from bridge.domain.errors import BridgeReason, InvalidInput, Unavailable
from bridge.logfields import COUNT, get_logger

T = TypeVar("T")


class Fenced(Unavailable):
    """This coordinator no longer holds the lease it wrote under (UNAVAILABLE: the client
    should try another coordinator). Nothing was written."""

    kind = BridgeReason.NOT_LEADER

    def __init__(self, holder: str, token: int, current_token: int, current_holder: str) -> None:
        # The message reaches clients (a brokerage's batch answer): lease tokens only, no
        # coordinator names; those stay on the exception for this process's own logs.
        super().__init__(
            f"this coordinator no longer holds the lease (it wrote under token {token}, the"
            f" store is at token {current_token}); try another coordinator"
        )
        self.holder = holder
        self.current_holder = current_holder
        self.token = token
        self.current_token = current_token


def db_now(c: Conn) -> str:
    """SQL for the database's clock, in unix seconds."""
    if c.dialect is Dialect.POSTGRES:
        return "extract(epoch from clock_timestamp())::double precision"
    return "((julianday('now') - 2440587.5) * 86400.0)"


class _LeaseBusy(Exception):
    """The lease row is locked by another coordinator's takeover or by an old term's
    write still in flight (lock_timeout): not acquired this time."""


def _set_local(c: Conn, **seconds: float) -> None:
    """PostgreSQL: set each named timeout for the current transaction only (``SET LOCAL``),
    in whole milliseconds (at least 1), in one round trip."""
    names = sorted(seconds)
    calls = ", ".join("set_config(?, ?, true)" for _ in names)
    args: list[object] = []
    for name in names:
        args += [name, f"{max(1, int(seconds[name] * 1000))}ms"]
    c.execute(f"SELECT {calls}", args)


class Lease:
    """One coordinator PROCESS's view of the shared lease; see the module docstring.

    The holder is this process: its ``holder`` name AND a random ``instance`` id drawn at
    construction (HA review finding 4), so a second process started with the same name
    (a cloned configuration, two replicas) never renews nor takes over this one's term
    while it is unexpired: it stands by like any other coordinator.

    PostgreSQL locking (HA review finding 2): a fenced store write holds the lease row
    ``FOR KEY SHARE`` only, which a renewal's plain ``UPDATE`` of ``expires_at`` (a
    non-key column) never waits for, so a slow store write does not delay a renewal. A
    poll reads without a lock and locks the row ``FOR UPDATE`` only when the term looks
    free or expired (a takeover), which DOES wait for the old term's in-flight fenced
    writes. Every lease transaction is bounded by ``timeout`` (lock wait, statement and
    idle-in-transaction), so a frozen standby cannot hold the row for long; a takeover
    that meets a locked row returns None (not acquired) and is retried at the next poll.

    ``db`` should be a connection of its own (not the stores')."""

    def __init__(
        self,
        db: Database,
        holder: str,
        ttl: float,
        address: str = "",
        *,
        timeout: float | None = None,
        write_timeout: float | None = None,
        instance: str | None = None,
    ) -> None:
        if not holder:
            raise ValueError("a lease holder needs a name")
        self._db = db
        self.holder = holder
        self.instance = instance if instance is not None else secrets.token_hex(8)
        """This process's random id (the lease row's ``instance`` while it leads; its
        PostgreSQL sessions are named :func:`coordinator_session_name` of it)."""
        self.ttl = ttl
        self.address = address
        self.timeout = timeout if timeout is not None else ttl / 4
        """Bound of each lease transaction on PostgreSQL (lock wait, statement, idle)."""
        self.write_timeout = write_timeout
        """Bound of each fenced store transaction on PostgreSQL (statement and idle in
        transaction; None: the session's): a leader frozen mid-transaction holds a
        takeover back for at most this long."""
        self.token = 0
        """The token of this holder's current term (0: never leader)."""
        self.leader = ""
        """The holder of the current term as last read ('' none or expired)."""
        self.leader_address = ""
        """That holder's advertised address (for standbys' NOT_LEADER replies)."""
        self.fenced = False
        """Set (from the database thread) when :meth:`check` refused a write."""

    async def acquire(self) -> int | None:
        """Become (or stay) leader: the token of this term, or None when another process's
        lease has not expired (or its row is locked by a takeover or an old term's write in
        flight). A new term (after another process, or after this one's own lease expired)
        always gets a larger token; a renewal extends only this process's own term. Also
        records this coordinator's heartbeat in ``coordinator_members`` (operator
        status)."""
        holder, ttl, address, instance = self.holder, self.ttl, self.address, self.instance
        mine, bound = self.token, self.timeout
        busy = False  # set once the takeover's FOR UPDATE is attempted

        def run(c: Conn) -> tuple[int | None, str, str]:
            now = db_now(c)
            if c.dialect is Dialect.POSTGRES:
                _set_local(
                    c,
                    lock_timeout=bound,
                    statement_timeout=bound * 2,
                    idle_in_transaction_session_timeout=bound,
                )
            # The heartbeat row of this name is this process's unless another process of
            # the same name was seen within the ttl (finding 4: it keeps its address).
            seen = c.execute(
                "INSERT INTO coordinator_members (name, address, started_at, seen_at,"  # noqa: S608
                f" instance) VALUES (?, ?, {now}, {now}, ?) ON CONFLICT (name) DO UPDATE"
                " SET address = excluded.address, seen_at = excluded.seen_at,"
                " started_at = CASE WHEN coordinator_members.instance = excluded.instance"
                " THEN coordinator_members.started_at ELSE excluded.started_at END,"
                " instance = excluded.instance"
                " WHERE coordinator_members.instance = excluded.instance"
                " OR coordinator_members.seen_at < excluded.seen_at - ?",
                (holder, address, instance, ttl),
            )
            if seen.rowcount == 0:
                get_logger().warning(
                    "another process wrote this coordinator's heartbeat within the lease ttl"
                    " (its previous run, or a second process with the same [ha].name)",
                    holder=holder,
                )
            if mine:
                # Renewal: a plain UPDATE of a non-key column, never blocked by the
                # FOR KEY SHARE of this leader's own store writes (finding 2).
                renewed = c.execute(
                    f"UPDATE coordinator_lease SET expires_at = {now} + ?"  # noqa: S608
                    f" WHERE id = 1 AND holder = ? AND instance = ? AND token = ?"
                    f" AND expires_at >= {now}",
                    (ttl, holder, instance, mine),
                )
                if renewed.rowcount == 1:
                    return mine, holder, address
            nonlocal busy
            lock = ""
            while True:
                row = c.execute(
                    f"SELECT holder, instance, token, expires_at < {now}"  # noqa: S608
                    " FROM coordinator_lease WHERE id = 1" + lock
                ).fetchone()
                current, current_instance = str(row[0]), str(row[1])
                token, expired = int(row[2]), bool(row[3])
                if current and not expired and current_instance != instance:
                    other = c.execute(
                        "SELECT address FROM coordinator_members WHERE name = ?", (current,)
                    ).fetchone()
                    return None, current, str(other[0]) if other else ""
                if lock or c.dialect is not Dialect.POSTGRES:
                    break
                # Free or expired: lock the row (waits for the old term's fenced writes).
                lock = " FOR UPDATE"
                busy = True
            c.execute(
                "UPDATE coordinator_lease SET holder = ?, instance = ?, token = token + 1,"  # noqa: S608
                f" expires_at = {now} + ? WHERE id = 1",
                (holder, instance, ttl),
            )
            return token + 1, holder, address

        def guarded(c: Conn) -> tuple[int | None, str, str]:
            if c.dialect is not Dialect.POSTGRES:
                return run(c)
            import psycopg.errors

            try:
                return run(c)
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                # Only a TAKEOVER that meets a locked row is "not acquired"; a renewal that
                # times out raises (the keeper retries it until its deadline).
                if busy:
                    raise _LeaseBusy from exc
                raise

        try:
            got, self.leader, self.leader_address = await self._db.write(guarded)
        except _LeaseBusy:
            await self.end_stale_term()
            return None
        if got is not None:
            self.token = got
        return got

    async def end_stale_term(self) -> int:
        """PostgreSQL: when the lease row is still locked although its term expired more
        than ``ttl`` ago (by the database's clock), end every session of that term's
        process (``pg_terminate_backend`` on the sessions named after its instance); the
        number ended. The next :meth:`acquire` then takes the row.

        SECURITY: only client sessions of the EXPIRED term's own process are ended: named
        after its instance AND logged in with this coordinator's own role to this same
        database (review helper-95: a session of any other login may carry that name; it is
        neither ended nor able to make the ending fail, and a session with the
        coordinators' role can take the lease anyway). By then that process has stopped
        renewing by its own rule (no renewal within ``hold_for`` < ``ttl``); a write it
        still has in flight is rolled back whole, or, ended at its COMMIT, committed before
        its session ends (its callers see DatabaseUnavailable: every step is idempotent).
        Needs the coordinators to share one database role: sessions of another role are not
        ended (the takeover then waits for the frozen process to die, as before)."""
        if self._db.dialect is not Dialect.POSTGRES:
            return 0
        ttl, bound, mine = self.ttl, self.timeout, self.instance

        def run(c: Conn) -> tuple[str, int]:
            _set_local(c, statement_timeout=bound, idle_in_transaction_session_timeout=bound)
            # No lock: the committed row (the locker holds it FOR KEY SHARE or FOR UPDATE).
            row = c.execute(
                f"SELECT holder, instance, expires_at < {db_now(c)} - ?"  # noqa: S608
                " FROM coordinator_lease WHERE id = 1",
                (ttl,),
            ).fetchone()
            if row is None or not bool(row[2]) or not str(row[1]) or str(row[1]) == mine:
                return "", 0
            # The sessions are chosen first (MATERIALIZED), so the terminating call never
            # runs on a row another condition would have excluded.
            ended = c.execute(
                "WITH victims AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                " WHERE application_name = ? AND usename = current_user"
                " AND datname = current_database() AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid())"
                " SELECT pg_terminate_backend(pid) FROM victims",
                (coordinator_session_name(str(row[1])),),
            ).fetchall()
            return str(row[0]), sum(1 for (done,) in ended if done)

        import psycopg.errors

        try:
            holder, ended = await self._db.write(run)
        except psycopg.errors.InsufficientPrivilege as exc:
            get_logger().error(
                "cannot end the sessions of an expired term that still hold the lease row",
                error=str(exc)[:200],
            )
            return 0
        if ended:
            get_logger().warning(
                "ended the sessions of an expired term that still held the lease row",
                holder=holder,
                **{COUNT: ended},
            )
        return ended

    async def release(self) -> None:
        """Give the lease up at once (clean shutdown), if this process still has it.

        Matched on this process's holder name and random ``instance``, not on
        :attr:`token`: a term this process won but whose answer it never saw (its
        :meth:`acquire` cancelled as the database answered; review helper-124) is released
        too, instead of making a standby wait out the ttl. No other process has this
        instance, so no one else's term is ever released."""
        holder, instance = self.holder, self.instance
        await self._db.write(
            lambda c: c.execute(
                "UPDATE coordinator_lease SET expires_at = 0 WHERE id = 1 AND holder = ?"
                " AND instance = ?",
                (holder, instance),
            )
        )

    def check(self, c: Conn) -> None:
        """Raise :class:`Fenced` (in ``c``'s open transaction, which then rolls back) unless
        this holder's token is the current one. SECURITY: the ``FOR KEY SHARE`` lock on
        PostgreSQL holds a takeover (``FOR UPDATE``) back until this transaction ends,
        while a renewal (a non-key UPDATE) never waits for it; with ``write_timeout`` the
        transaction is bounded, so a leader frozen inside it cannot hold a takeover back
        for longer."""
        holder, token = self.holder, self.token
        lock = ""
        if c.dialect is Dialect.POSTGRES:
            lock = " FOR KEY SHARE"
            if self.write_timeout is not None:
                bound = self.write_timeout
                _set_local(c, statement_timeout=bound, idle_in_transaction_session_timeout=bound)
        row = c.execute(
            "SELECT holder, token FROM coordinator_lease WHERE id = 1" + lock  # noqa: S608
        ).fetchone()
        if int(row[1]) != token or str(row[0]) != holder or token == 0:
            self.fenced = True
            raise Fenced(holder, token, int(row[1]), str(row[0]))

    async def fenced_write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one write transaction only while this holder's token is current;
        else raise Fenced and write nothing."""

        def run(c: Conn) -> T:
            self.check(c)
            return fn(c)

        return await self._db.write(run)


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long a term lasts without renewal and how often the leader renews it (and a
    standby polls). GUARANTEES: ``0 < renew_interval <= ttl / 3``, so a leader misses two
    renewals before its term can expire."""

    ttl: float = 10.0
    renew_interval: float = 2.0

    def __post_init__(self) -> None:
        if not (self.ttl > 0 and 0 < self.renew_interval <= self.ttl / 3):
            raise InvalidInput(
                f"lease timing needs 0 < renew_interval <= lease_ttl / 3"
                f" (got lease_ttl={self.ttl}, renew_interval={self.renew_interval})"
            )

    @property
    def hold_for(self) -> float:
        """Seconds (local monotonic clock) after the start of its last successful renewal
        during which a leader keeps acting: 80% of the term, so it stops before any
        standby can take over even with a slightly fast database clock."""
        return self.ttl * 0.8


class LeaderLost(enum.Enum):
    """Why a leader stopped leading."""

    STOPPED = "stopped"
    """Clean shutdown (the caller releases the lease once the leader has stopped)."""
    FENCED = "fenced"
    """A write was refused: another coordinator holds a newer term."""
    TAKEN = "taken"
    """A renewal found another holder or a newer term."""
    EXPIRED = "expired"
    """No renewal succeeded within ``hold_for`` (hung, or cut from the database)."""


class LeaseKeeper:
    """The election loop of one coordinator: wait to be elected, then renew until the term
    is lost. GUARANTEES: :meth:`hold` returns (never later than ``hold_for`` after the start
    of the last successful renewal, plus scheduling) as soon as this process may no longer
    be the leader; the caller must then stop acting as leader (the coordinator exits,
    fail-stop). ``on_change(leader, token)`` is called on every transition."""

    def __init__(
        self,
        lease: Lease,
        timing: LeaseTiming,
        on_change: Callable[[bool, int], None] | None = None,
    ) -> None:
        self.lease = lease
        self.timing = timing
        self._on_change = on_change
        self.leading = False
        self._renewed: float | None = None
        """Local monotonic time of the start of the last successful renewal (or election)."""
        self._log = get_logger().bind(holder=lease.holder)

    def holds_now(self) -> bool:
        """Whether this process may still act on what it learnt while leading: it was
        elected, has not lost the term, and the last successful renewal started less than
        ``hold_for`` ago (the window in which :meth:`hold` guarantees no standby can take
        over). False the moment that window has passed, even before :meth:`hold` returns
        (a process stalled past its term answers False when it wakes)."""
        if not self.leading or self._renewed is None or self.lease.fenced:
            return False
        loop = asyncio.get_running_loop()
        return loop.time() - self._renewed < self.timing.hold_for

    async def elect(self, stop: asyncio.Event) -> int | None:
        """Poll every renew interval until this process holds the lease: its token (None
        when ``stop`` was set first). Database errors are logged and retried."""
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                token = await within(self.lease.acquire(), self.timing.hold_for)
            except Exception as exc:  # the database is down or unreachable: keep polling
                self._log.warning("lease poll failed", error=repr(exc))
                token = None
            if token is not None:
                self._renewed = started
                self.leading = True
                self._log.info("elected leader", token=token)
                if self._on_change is not None:
                    self._on_change(True, token)
                return token
            await wait_event(stop, self.timing.renew_interval)
        return None

    async def hold(self, stop: asyncio.Event) -> LeaderLost:
        """Renew every renew interval until the term is lost or ``stop`` is set.

        GUARANTEES (HA review finding 5): the wait before each renewal is never longer than
        what is left of ``hold_for``, so :meth:`hold` returns at most ``hold_for`` (plus
        scheduling) after the start of the last successful renewal, before any standby can
        take over. On STOPPED the lease is NOT released here: the caller stops every
        leader activity first and then calls :meth:`release` (no planned-switchover
        overlap). However it ends once it has started, a cancellation included, the keeper
        has stepped down: ``leading`` is False and ``on_change(False, token)`` was called
        (a task cancelled before its first step never runs this; ``holds_now`` still ends
        ``hold_for`` after the last renewal)."""
        loop = asyncio.get_running_loop()
        token = self.lease.token
        renewed = loop.time()
        why = LeaderLost.STOPPED
        ended = ""
        try:
            while True:
                left = renewed + self.timing.hold_for - loop.time()
                if await wait_event(stop, max(0.0, min(self.timing.renew_interval, left))):
                    break
                if self.lease.fenced:
                    why = LeaderLost.FENCED
                    break
                started = loop.time()
                remaining = renewed + self.timing.hold_for - started
                if remaining <= 0:
                    why = LeaderLost.EXPIRED
                    break
                try:
                    got = await within(self.lease.acquire(), remaining)
                except Exception as exc:  # TimeoutError included: retried until the deadline
                    self._log.warning("lease renewal failed", token=token, error=repr(exc))
                    continue
                if got != token:
                    why = LeaderLost.TAKEN
                    break
                renewed = self._renewed = started
        except asyncio.CancelledError:
            ended = "cancelled"  # not a clean stop: the log says so
            raise
        finally:
            # Review helper-124: a cancelled hold() steps down too, so `leading` and the
            # leader gauge never outlive the renewals.
            self.leading = False
            self._log.warning("leadership ended", token=token, why=ended or why.value)
            if self._on_change is not None:
                self._on_change(False, token)
        return why

    async def release(self) -> None:
        """After a clean stop (:meth:`hold` returned STOPPED and every leader activity has
        stopped): give the lease up so a standby takes over at once. Errors are logged
        (the term then simply expires)."""
        try:
            await within(self.lease.release(), self.timing.renew_interval)
        except Exception as exc:
            self._log.warning("lease release failed", error=repr(exc))
