"""Leader lease with a fencing token for active/passive coordinators (ADR 0017).

One row, ``coordinator_lease(id = 1, holder, token, expires_at)``, in the coordinators'
shared database, and one ``coordinator_members(name, address, started_at, seen_at)`` row per
coordinator (its advertised address and last heartbeat). Time is the DATABASE's clock only,
so coordinators' clocks may disagree.

- :meth:`Lease.acquire` takes the lease when it is free or expired (or renews it when held
  by this holder) and then increments ``token``: every new term has a larger token.
- :meth:`Lease.check` (installed on the stores' :class:`~bridge.coordinator.db.Database` by
  :meth:`~bridge.coordinator.db.Database.set_fence`) runs first in every write transaction:
  it reads the lease row with a share lock and refuses (:class:`Fenced`, nothing written)
  unless this process still holds the token it was granted. SECURITY: a takeover must lock
  the row exclusively, so it waits for the old leader's in-flight fenced writes to end, and
  every later write of the old leader fails; a leader deposed while hung (SIGSTOP, GC,
  partition) cannot write when it wakes, whatever its own clock says.
- :class:`LeaseKeeper` is the election loop of one coordinator process.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.coordinator.db import Conn, Database, Dialect
from bridge.domain.errors import BridgeReason, InvalidInput, Unavailable
from bridge.logfields import get_logger

T = TypeVar("T")


class Fenced(Unavailable):
    """This coordinator no longer holds the lease it wrote under (UNAVAILABLE: the client
    should try another coordinator). Nothing was written."""

    kind = BridgeReason.NOT_LEADER

    def __init__(self, holder: str, token: int, current_token: int, current_holder: str) -> None:
        super().__init__(
            f"coordinator {holder!r} is fenced: it holds lease token {token}, the database is"
            f" at token {current_token} held by {current_holder!r}"
        )
        self.token = token
        self.current_token = current_token


def db_now(c: Conn) -> str:
    """SQL for the database's clock, in unix seconds."""
    if c.dialect is Dialect.POSTGRES:
        return "extract(epoch from clock_timestamp())::double precision"
    return "((julianday('now') - 2440587.5) * 86400.0)"


class Lease:
    """One coordinator's view of the shared lease; see the module docstring.

    ``db`` should be a connection of its own (not the stores'), so a slow store call never
    delays a renewal."""

    def __init__(self, db: Database, holder: str, ttl: float, address: str = "") -> None:
        if not holder:
            raise ValueError("a lease holder needs a name")
        self._db = db
        self.holder = holder
        self.ttl = ttl
        self.address = address
        self.token = 0
        """The token of this holder's current term (0: never leader)."""
        self.leader = ""
        """The holder of the current term as last read ('' none or expired)."""
        self.leader_address = ""
        """That holder's advertised address (for standbys' NOT_LEADER replies)."""
        self.fenced = False
        """Set (from the database thread) when :meth:`check` refused a write."""

    async def acquire(self) -> int | None:
        """Become (or stay) leader: the token of this term, or None when another holder's
        lease has not expired. A new term (after another holder, or after this holder's
        own lease expired) always gets a larger token. Also records this coordinator's
        heartbeat in ``coordinator_members`` (operator status)."""
        holder, ttl, address = self.holder, self.ttl, self.address

        def run(c: Conn) -> tuple[int | None, str, str]:
            now = db_now(c)
            c.execute(
                "INSERT INTO coordinator_members (name, address, started_at, seen_at)"  # noqa: S608
                f" VALUES (?, ?, {now}, {now}) ON CONFLICT (name) DO UPDATE"
                " SET address = excluded.address, seen_at = excluded.seen_at",
                (holder, address),
            )
            row = c.execute(
                f"SELECT holder, token, expires_at < {now} FROM coordinator_lease"  # noqa: S608
                " WHERE id = 1" + c.for_update
            ).fetchone()
            current_holder, token, expired = str(row[0]), int(row[1]), bool(row[2])
            if current_holder == holder and not expired and token == self.token:
                c.execute(
                    f"UPDATE coordinator_lease SET expires_at = {now} + ? WHERE id = 1",  # noqa: S608
                    (ttl,),
                )
                return token, holder, address
            if current_holder and not expired and current_holder != holder:
                other = c.execute(
                    "SELECT address FROM coordinator_members WHERE name = ?", (current_holder,)
                ).fetchone()
                return None, current_holder, str(other[0]) if other else ""
            c.execute(
                "UPDATE coordinator_lease SET holder = ?, token = token + 1,"  # noqa: S608
                f" expires_at = {now} + ? WHERE id = 1",
                (holder, ttl),
            )
            return token + 1, holder, address

        got, self.leader, self.leader_address = await self._db.write(run)
        if got is not None:
            self.token = got
        return got

    async def release(self) -> None:
        """Give the lease up at once (clean shutdown), if this holder still has it."""
        holder, token = self.holder, self.token
        await self._db.write(
            lambda c: c.execute(
                "UPDATE coordinator_lease SET expires_at = 0 WHERE id = 1 AND holder = ?"
                " AND token = ?",
                (holder, token),
            )
        )

    def check(self, c: Conn) -> None:
        """Raise :class:`Fenced` (in ``c``'s open transaction, which then rolls back) unless
        this holder's token is the current one. SECURITY: the share lock on PostgreSQL
        holds a takeover back until this transaction ends."""
        holder, token = self.holder, self.token
        lock = " FOR SHARE" if c.dialect is Dialect.POSTGRES else ""
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
    """Clean shutdown (the lease is released)."""
    FENCED = "fenced"
    """A write was refused: another coordinator holds a newer term."""
    TAKEN = "taken"
    """A renewal found another holder or a newer term."""
    EXPIRED = "expired"
    """No renewal succeeded within ``hold_for`` (hung, or cut from the database)."""


class LeaseKeeper:
    """The election loop of one coordinator: wait to be elected, then renew until the term
    is lost. GUARANTEES: :meth:`hold` returns (never later than ``hold_for`` after the last
    successful renewal, plus one renew interval) as soon as this process may no longer be
    the leader; the caller must then stop acting as leader (the coordinator exits,
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
        self._log = get_logger().bind(holder=lease.holder)

    async def elect(self, stop: asyncio.Event) -> int | None:
        """Poll every renew interval until this process holds the lease: its token (None
        when ``stop`` was set first). Database errors are logged and retried."""
        while not stop.is_set():
            try:
                token = await asyncio.wait_for(self.lease.acquire(), self.timing.hold_for)
            except Exception as exc:  # the database is down or unreachable: keep polling
                self._log.warning("lease poll failed", error=repr(exc))
                token = None
            if token is not None:
                self.leading = True
                self._log.info("elected leader", token=token)
                if self._on_change is not None:
                    self._on_change(True, token)
                return token
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.timing.renew_interval)
        return None

    async def hold(self, stop: asyncio.Event) -> LeaderLost:
        """Renew every renew interval until the term is lost or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        token = self.lease.token
        renewed = loop.time()
        why = LeaderLost.STOPPED
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.timing.renew_interval)
            if stop.is_set():
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
                got = await asyncio.wait_for(self.lease.acquire(), remaining)
            except Exception as exc:  # TimeoutError included: retried until the deadline
                self._log.warning("lease renewal failed", token=token, error=repr(exc))
                continue
            if got != token:
                why = LeaderLost.TAKEN
                break
            renewed = started
        self.leading = False
        self._log.warning("leadership ended", token=token, why=why.value)
        if self._on_change is not None:
            self._on_change(False, token)
        if why is LeaderLost.STOPPED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.lease.release(), self.timing.renew_interval)
        return why
