"""``--pin NAME``: one process of the run alone on a core of its own (ADR 0026's measurement).

Once the system is up and before the load, every thread of the named process is bound to
one CPU and every thread of every other process of the run (ledgers, proxies, relayers,
members, the database server, this client) to the others, so the named process's CPU share
is its own core's, not a busy host's. Threads started later inherit their creator's CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PinError", "pin_alone", "plan_pinning"]


class PinError(ValueError):
    """The pinning asked for cannot be made: an unknown process, or fewer than two CPUs."""


def plan_pinning(names: list[str], alone: str, cpus: set[int]) -> dict[str, set[int]]:
    """Per process name, the CPUs it may run on: ``alone`` on the lowest of ``cpus``, every
    other name on the rest. Raises PinError for a name not in ``names`` or fewer than two
    CPUs (the named process could not be alone)."""
    if alone not in names:
        raise PinError(f"--pin {alone}: no such process in the run (one of: {', '.join(names)})")
    if len(cpus) < 2:
        raise PinError(f"--pin needs at least two CPUs, this process may use {sorted(cpus)}")
    own = min(cpus)
    rest = cpus - {own}
    return {name: ({own} if name == alone else set(rest)) for name in names}


def _threads(pid: int, proc: Path) -> list[int]:
    """The thread ids of ``pid`` now (the process itself if its task list cannot be read)."""
    try:
        return [int(t.name) for t in (proc / str(pid) / "task").iterdir()]
    except OSError:
        return [pid]


def pin_alone(
    pids: Mapping[str, int], alone: str, proc: Path = Path("/proc")
) -> dict[str, set[int]]:
    """Bind every thread of ``pids[alone]`` to one CPU and every other process's threads to
    the rest of this process's CPUs (:func:`plan_pinning`); returns the plan. A thread that
    ended meanwhile is skipped."""
    plan = plan_pinning(list(pids), alone, set(os.sched_getaffinity(0)))
    for name, pid in pids.items():
        for tid in _threads(pid, proc):
            try:
                os.sched_setaffinity(tid, plan[name])
            except ProcessLookupError:
                continue
    return plan
