"""Fault injection for a LocalSystem: SIGKILL and restart components, stall ledgers.

Used by the bounded chaos test and the soak script. Faults are drawn from a seeded RNG and
injected one at a time (each undone before the next), so at most one verifier is down at
once: within ``n - t`` for any committee with ``t < n``, and the committee keeps a quorum.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from bridge.devnet.system import LocalSystem


@dataclass
class FaultLog:
    """What was injected, and how long each component took to listen again."""

    kills: Counter[str] = field(default_factory=Counter)
    stalls: Counter[str] = field(default_factory=Counter)
    restart_seconds: dict[str, float] = field(default_factory=dict)
    """Per component kind, the longest time from restart to listening."""
    last_fault_at: float = 0.0


class ChaosScheduler(threading.Thread):
    """Injects one fault every ``every`` seconds (jittered) until :meth:`stop` is called.

    Faults: SIGKILL of the coordinator, a relayer or a verifier followed by a restart after
    ``down`` seconds; with ``stall_ledgers``, every outage each ledger's kind offers
    (:meth:`bridge.devnet.ledger.DevLedger.faults`: an anvil ledger that stops producing
    blocks, a Fabric peer, orderer or chaincode server SIGKILLed and restarted), undone
    after ``down`` seconds.
    Every fault is undone before the next one starts.
    """

    def __init__(
        self,
        system: LocalSystem,
        seed: int,
        every: tuple[float, float] = (1.5, 3.0),
        down: tuple[float, float] = (0.5, 2.0),
        stall_ledgers: bool = False,
    ) -> None:
        super().__init__(daemon=True, name="chaos")
        self.system = system
        self.rng = random.Random(seed)
        self.every = every
        self.down = down
        self.stall_ledgers = stall_ledgers
        self.log = FaultLog()
        self._halt = threading.Event()

    def stop(self, timeout: float = 60.0) -> FaultLog:
        """Stop injecting, wait until the last fault is undone, and return the log."""
        self._halt.set()
        self.join(timeout)
        return self.log

    def _targets(self) -> list[str]:
        names = ["coordinator", *(f"relayer-{n}" for n in self.system.all_ledgers)]
        names += [f"verifier-{i}" for i in range(len(self.system.verifier_keys))]
        if self.stall_ledgers:
            for ledger, handle in self.system.dev_ledgers.items():
                names += [f"{fault}@{ledger}" for fault in handle.faults()]
        return names

    def run(self) -> None:
        """The injection loop (runs in this thread)."""
        targets = self._targets()
        while not self._halt.wait(self.rng.uniform(*self.every)):
            name = self.rng.choice(targets)
            pause = self.rng.uniform(*self.down)
            self.log.last_fault_at = time.monotonic()
            fault, at, ledger = name.partition("@")
            if at:
                # A ledger outage of the ledger's own kind (DevLedger.faults).
                kill, restart = self.system.handle(ledger).faults()[fault]
                self.log.stalls[f"{fault}-{ledger}"] += 1
                kind = fault
            else:
                kind = name.partition("-")[0]
                kill = self.system.processes[name].kill9
                restart = partial(self.system.start_process, name)
                self.log.kills[kind] += 1
            kill()
            time.sleep(pause)
            started = time.monotonic()
            restart()
            took = time.monotonic() - started
            self.log.restart_seconds[kind] = max(self.log.restart_seconds.get(kind, 0.0), took)
