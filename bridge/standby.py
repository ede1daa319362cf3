"""One running instance per durable state: the active/passive rule of relayers and
committee members (ADR 0017).

A relayer's checkpoint store and a member's vote log are SQLite files. The process that
serves them holds an exclusive ``flock`` on ``<file>.daemon.lock`` for its whole life; the kernel
releases it when the process dies, however it dies (SIGKILL included). A second process
with the same file either refuses to start (:class:`StateInUse`, exit status 4) or, as a
declared standby (``standby = true`` in its file), waits for the lock and then starts from
the same durable state: the relayer from its checkpoint, the member from its vote log.

SECURITY: two members with the same key and SEPARATE vote logs could sign two conflicting
votes for one transfer (each log would allow its own first vote), which is equivocation the
committee's threshold does not survive. The lock is what makes a standby member safe: it is
only ever started on the SAME vote log (shared storage), and never while another process
holds it. The lock is a fence only on a local or block volume: a standby on another host
needs that volume moved to it by a fencing cluster manager after the active host is known
dead, or runs cold (started by an operator then). Never a network filesystem (HA review
finding 8): SQLite's WAL does not work there, Linux NFS emulates ``flock`` with POSIX locks
lost when the process closes ANY descriptor of the file, and an NFSv4 client partitioned
past its lease loses the lock while still running.
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import IO

from bridge.domain.errors import PreconditionFailed
from bridge.logfields import get_logger
from bridge.storage.sqlite import daemon_lock_path

EXIT_STATE_IN_USE = 4
"""Exit status of a process whose durable state another process holds."""


class StateInUse(PreconditionFailed):
    """Another process holds this durable state's lock (nothing was opened)."""


_HELD: set[StateLock] = set()
"""Every lock this process holds: a lock lives until :meth:`StateLock.release` or the
process's exit, even when the caller drops its reference (its file would close on GC)."""


class StateLock:
    """The exclusive lock on ``<path>.daemon.lock``. GUARANTEES: while :meth:`acquire` has
    returned and :meth:`release` was not called, no other process holds it (the lock is
    kept referenced here, so it is not released when the caller's object is collected)."""

    def __init__(self, path: Path) -> None:
        self.path = daemon_lock_path(path)
        self._fh: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        _HELD.add(self)
        return True

    async def acquire(self, standby: bool, poll: float = 0.2) -> None:
        """Take the lock: at once, or raise StateInUse; as a ``standby``, wait for it
        (polling, so SIGTERM still stops a waiting standby)."""
        if self.try_acquire():
            return
        if not standby:
            raise StateInUse(
                f"{self.path} is held by another process (run this one with standby = true"
                " to wait for it)"
            )
        get_logger().info("standing by: another process holds the state", lock=str(self.path))
        while not self.try_acquire():  # noqa: ASYNC110 (a file lock has no event to await)
            await asyncio.sleep(poll)
        get_logger().info("taking over: the state lock is free", lock=str(self.path))

    def release(self) -> None:
        """Release the lock (the process's exit does it too)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        _HELD.discard(self)
