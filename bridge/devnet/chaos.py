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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from bridge.devnet.system import LocalSystem

FABRIC_NODES = ("peer", "orderer", "chaincode")
"""The Fabric processes the scheduler takes down (with ``stall_ledgers``)."""


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
    ``down`` seconds; with ``stall_ledgers``, an EVM ledger that stops producing blocks for
    ``down`` seconds, and real Fabric node outages: Org1's peer (the one in network.toml,
    used by the relayer and half the members) or the orderer SIGKILLed and restarted on its
    data, or the chaincode server SIGKILLed and served again, each after ``down`` seconds.
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
            names += [f"ledger-{n}" for n in self.system.ledgers]
            for kind in FABRIC_NODES:
                names += [f"{kind}-{n}" for n in self.system.fabric]
        return names

    def run(self) -> None:
        """The injection loop (runs in this thread)."""
        targets = self._targets()
        while not self._halt.wait(self.rng.uniform(*self.every)):
            name = self.rng.choice(targets)
            pause = self.rng.uniform(*self.down)
            self.log.last_fault_at = time.monotonic()
            if name.startswith("ledger-"):
                node = self.system.ledgers[name.removeprefix("ledger-")].node
                node.rpc("evm_setIntervalMining", [0])
                self.log.stalls[name] += 1
                time.sleep(pause)
                # anvil takes whole seconds here; sub-second ledgers resume at 1 s blocks
                node.rpc("evm_setIntervalMining", [max(1, round(self.system.block_time))])
                continue
            kind, _, target = name.partition("-")
            if kind in FABRIC_NODES:
                kill, restart = self._fabric_node(kind, target)
                self.log.stalls[name] += 1
            else:
                kill = self.system.processes[name].kill9
                restart = partial(self.system.start_process, name)
                self.log.kills[kind] += 1
            kill()
            time.sleep(pause)
            started = time.monotonic()
            restart()
            took = time.monotonic() - started
            self.log.restart_seconds[kind] = max(self.log.restart_seconds.get(kind, 0.0), took)

    def _fabric_node(
        self, kind: str, ledger: str
    ) -> tuple[Callable[[], object], Callable[[], object]]:
        """How to take ``kind`` of ``ledger``'s Fabric network down, and bring it back."""
        fabric = self.system.fabric[ledger]
        net = fabric.net
        org = next(iter(net.orgs))  # Org1: the peer in network.toml
        if kind == "peer":
            return partial(net.kill_peer, org), partial(net.restart_peer, org)
        if kind == "orderer":
            return net.kill_orderer, net.restart_orderer
        return fabric.kill_chaincode, fabric.restart_chaincode
