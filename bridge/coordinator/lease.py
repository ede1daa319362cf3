"""Leader lease with a fencing token for active/passive coordinators (issue 13 item 2).

NOT YET WIRED into the coordinator's process (ADR 0013, "Next"): this module is the
mechanism and its proof; election loop, stepping down and client failover come next.

One row, ``coordinator_lease(id = 1, holder, token, expires_at)``, in the coordinators'
shared database. Time is the DATABASE's clock only, so coordinators' clocks may disagree.

- :meth:`Lease.acquire` takes the lease when it is free or expired (or renews it when held
  by this holder) and then increments ``token``: every new term has a larger token.
- :meth:`Lease.fenced_write` runs a write transaction that first reads the lease row
  with a share lock and refuses (:class:`Fenced`, nothing written) unless this process
  still holds the token it was granted. SECURITY: a takeover must lock the row exclusively,
  so it waits for the old leader's in-flight fenced writes to end, and every later write of
  the old leader fails; a leader deposed while hung (SIGSTOP, GC, partition) cannot write
  when it wakes, whatever its own clock says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bridge.coordinator.db import Conn, Database, Dialect
from bridge.domain.errors import Unavailable

T = TypeVar("T")


class Fenced(Unavailable):
    """This coordinator no longer holds the lease it wrote under (UNAVAILABLE: the client
    should try another coordinator). Nothing was written."""

    def __init__(self, holder: str, token: int, current_token: int, current_holder: str) -> None:
        super().__init__(
            f"coordinator {holder!r} is fenced: it holds lease token {token}, the database is"
            f" at token {current_token} held by {current_holder!r}"
        )
        self.token = token
        self.current_token = current_token


def _now(c: Conn) -> str:
    """SQL for the database's clock, in unix seconds."""
    if c.dialect is Dialect.POSTGRES:
        return "extract(epoch from clock_timestamp())::double precision"
    return "((julianday('now') - 2440587.5) * 86400.0)"


class Lease:
    """One coordinator's view of the shared lease; see the module docstring."""

    def __init__(self, db: Database, holder: str, ttl: float) -> None:
        if not holder:
            raise ValueError("a lease holder needs a name")
        self._db = db
        self.holder = holder
        self.ttl = ttl
        self.token = 0
        """The token of this holder's current term (0: never leader)."""

    async def acquire(self) -> int | None:
        """Become (or stay) leader: the token of this term, or None when another holder's
        lease has not expired. A new term (after another holder, or after this holder's
        own lease expired) always gets a larger token."""
        holder, ttl = self.holder, self.ttl

        def run(c: Conn) -> int | None:
            now = _now(c)
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
                return token
            if current_holder and not expired and current_holder != holder:
                return None
            c.execute(
                "UPDATE coordinator_lease SET holder = ?, token = token + 1,"  # noqa: S608
                f" expires_at = {now} + ? WHERE id = 1",
                (holder, ttl),
            )
            return token + 1

        got = await self._db.write(run)
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

    async def fenced_write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one write transaction only while this holder's token is current;
        else raise Fenced and write nothing."""
        holder, token = self.holder, self.token

        def run(c: Conn) -> T:
            lock = " FOR SHARE" if c.dialect is Dialect.POSTGRES else ""
            row = c.execute(
                "SELECT holder, token FROM coordinator_lease WHERE id = 1" + lock  # noqa: S608
            ).fetchone()
            if int(row[1]) != token or str(row[0]) != holder or token == 0:
                raise Fenced(holder, token, int(row[1]), str(row[0]))
            return fn(c)

        return await self._db.write(run)
