"""Fault injection for a LocalSystem: SIGKILL and restart components, stall ledgers, and
(with a :class:`GovernancePlan`) rotate the committee and halt and release the security.

Used by the bounded chaos test and the soak script. Faults are drawn from a seeded RNG and
injected one at a time (each undone before the next), so at most one verifier is down at
once: within ``n - t`` for any committee with ``t < n``, and the committee keeps a quorum.
Governance steps take a fault's slot: they run through the real ``bridge`` CLI (a
subprocess, the operator's and depository's own certificates and keys), and kills go on
while the rotation's overlap runs and while the security is halted.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import grpc

from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.v1 import depository_pb2, depository_pb2_grpc, operator_pb2, operator_pb2_grpc

FAILOVER = "leader-"
"""Fault names ``leader-kill``, ``leader-hang``, ``leader-cut`` (several coordinators)."""


@dataclass
class FaultLog:
    """What was injected, and how long each component took to listen again."""

    kills: Counter[str] = field(default_factory=Counter)
    stalls: Counter[str] = field(default_factory=Counter)
    restart_seconds: dict[str, float] = field(default_factory=dict)
    """Per component kind, the longest time from restart to listening."""
    last_fault_at: float = 0.0
    governance: dict[str, float] = field(default_factory=dict)
    """Per governance step done (``rotation``, ``halt``, ``release``), the seconds from the
    CLI call until every ledger applied it."""
    governance_errors: list[str] = field(default_factory=list)
    """Governance steps that failed (the CLI exited non-zero or a ledger never applied it)."""


@dataclass(frozen=True)
class GovernancePlan:
    """Which fault slots the governance steps take (ADRs 0009, 0011).

    Slot ``halt_at``: the depository halts ``security`` on every ledger; ``hold`` fault
    slots later (kills go on meanwhile, transfers queue) it releases it. Slot ``rotate_at``:
    the bridge operator rotates the committee to the next epoch without the last genesis
    member and with spare member 0 (same size and threshold, so ``2t > n`` holds),
    ``overlap`` seconds of overlap; by default right after the release, while the queued
    transfers drain. A step's CLI command runs in its slot (nothing else is killed while it
    runs); then faults go on while a watcher waits until every ledger applied it
    (``limit_s`` at most), so kills also hit the order's delivery and the rotation's
    installation. The release is issued only once the halt was seen applied.
    """

    halt_at: int = 2
    hold: int = 2
    rotate_at: int = 5
    overlap: int = 10
    security: str = DEMO_ISIN
    limit_s: float = 180.0

    @property
    def last_slot(self) -> int:
        """The slot of the last step (the release)."""
        return max(self.rotate_at, self.halt_at + self.hold)


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
        governance: GovernancePlan | None = None,
    ) -> None:
        super().__init__(daemon=True, name="chaos")
        self.system = system
        self.rng = random.Random(seed)
        self.every = every
        self.down = down
        self.stall_ledgers = stall_ledgers
        self.log = FaultLog()
        self.governance = governance
        if governance is not None and not system.spare_keys:
            raise ValueError("a governance plan rotates to a spare member: spare_members >= 1")
        self._halt = threading.Event()
        self._slot = 0
        self._watchers: dict[str, threading.Thread] = {}

    def governance_done(self) -> bool:
        """Whether every step of the governance plan ran and was seen applied (or failed)."""
        if self.governance is None:
            return True
        watching = any(w.is_alive() for w in self._watchers.values())
        return self._slot > self.governance.last_slot and not watching

    def stop(self, timeout: float = 60.0) -> FaultLog:
        """Stop injecting, wait until the last fault is undone, and return the log."""
        self._halt.set()
        self.join(timeout)
        for watcher in self._watchers.values():
            watcher.join(timeout)
        return self.log

    def _targets(self) -> list[str]:
        names = ["coordinator"]
        if self.system.coordinators > 1:  # ---- active/passive coordinators (ADR 0017)
            names = [f"{FAILOVER}kill", f"{FAILOVER}hang"]
            names += [f"{FAILOVER}cut"] if self.system.database_proxies else []
        names += [f"relayer-{n}" for n in self.system.all_ledgers]
        names += [f"verifier-{i}" for i in range(len(self.system.verifier_keys))]
        names += [f"spare-{j}" for j in range(len(self.system.spare_keys))]
        if self.stall_ledgers:
            for ledger, handle in self.system.dev_ledgers.items():
                names += [f"{fault}@{ledger}" for fault in handle.faults()]
        return names

    def run(self) -> None:
        """The injection loop (runs in this thread)."""
        targets = self._targets()
        while not self._halt.wait(self.rng.uniform(*self.every)):
            self._slot += 1
            if self._governance_step(self._slot):
                continue
            name = self.rng.choice(targets)
            pause = self.rng.uniform(*self.down)
            self.log.last_fault_at = time.monotonic()
            fault, at, ledger = name.partition("@")
            if name.startswith(FAILOVER):
                kind = name
                kill, restart = self._failover(name.removeprefix(FAILOVER))
                self.log.kills[kind] += 1
            elif at:
                # A ledger outage of the ledger's own kind (DevLedger.faults).
                kill, restart = self.system.handle(ledger).faults()[fault]
                self.log.stalls[f"{fault}-{ledger}"] += 1
                kind = fault
            else:
                kind = name.partition("-")[0]
                kind = "verifier" if kind == "spare" else kind
                kill = self.system.processes[name].kill9
                restart = partial(self.system.start_process, name)
                self.log.kills[kind] += 1
            kill()
            time.sleep(pause)
            started = time.monotonic()
            restart()
            took = time.monotonic() - started
            self.log.restart_seconds[kind] = max(self.log.restart_seconds.get(kind, 0.0), took)

    # ---- active/passive coordinators (ADR 0017): the LEADER is killed, hung or cut
    def _failover(self, how: str) -> tuple[Callable[[], object], Callable[[], object]]:
        """(fault, undo) for the current leader. ``kill``: SIGKILL, then restarted as a
        standby. ``hang``: SIGSTOP past its lease, SIGCONT (it wakes deposed and exits),
        restarted. ``cut``: its database path cut (it steps down and exits), restored and
        restarted. Each undo waits until a standby has taken over first."""
        system = self.system
        leader = system.leader()
        proc = system.processes[leader]

        def taken_over() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and system.leader() == leader:
                time.sleep(0.2)

        def restart_after_exit() -> None:
            deadline = time.monotonic() + 60
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            system.start_process(leader)

        def after_kill() -> None:
            taken_over()
            system.start_process(leader)

        def after_hang() -> None:
            taken_over()
            proc.resume()
            restart_after_exit()

        if how == "kill":
            return proc.kill9, after_kill
        if how == "hang":
            return proc.pause, after_hang
        proxy = system.db_proxies[leader]

        def after_cut() -> None:
            taken_over()  # by then it has stopped renewing: restoring cannot revive its term
            proxy.restore()
            restart_after_exit()

        return proxy.cut, after_cut

    # ---- governance steps (issue 10): rotation, halt and release in the fault schedule -------
    def _governance_step(self, slot: int) -> bool:
        """Run the plan's step for ``slot``, if any; whether one ran."""
        plan = self.governance
        if plan is None:
            return False
        steps: dict[int, tuple[str, Callable[[], Callable[[], bool]]]] = {
            plan.rotate_at: ("rotation", self._rotate),
            plan.halt_at: ("halt", partial(self._order, "halt")),
            plan.halt_at + plan.hold: ("release", partial(self._order, "release")),
        }
        if slot not in steps:
            return False
        what, issue = steps[slot]
        if what == "release" and "halt" in self._watchers:
            self._watchers["halt"].join(plan.limit_s)  # release what was seen halted
        self.log.last_fault_at = time.monotonic()
        started = time.monotonic()
        try:
            applied = issue()
        except Exception as exc:  # recorded; the test or the soak reports it as a violation
            self.log.governance_errors.append(f"{what}: {exc}")
            return True
        watcher = threading.Thread(
            target=self._watch, args=(what, applied, started), daemon=True, name=f"gov-{what}"
        )
        self._watchers[what] = watcher
        watcher.start()
        return True

    def _watch(self, what: str, applied: Callable[[], bool], started: float) -> None:
        """Wait (in its own thread, faults going on) until ``what`` is applied everywhere."""
        try:
            self._until(applied, f"{what} applied on every ledger")
        except TimeoutError as exc:
            self.log.governance_errors.append(f"{what}: {exc}")
        else:
            self.log.governance[what] = time.monotonic() - started

    def _cli(self, principal: str, *args: str) -> None:
        """``bridge ...`` as ``principal``; a few attempts (a component may just have been
        restarted). Raises RuntimeError with the CLI's output when every attempt failed."""
        s = self.system
        command = [sys.executable, "-m", "bridge.cli.main", "--coordinator",
                   s.coordinator_target, *s.cli_tls_args(principal), *args]  # fmt: skip
        env = {**os.environ, PLAINTEXT_KEYS_ENV: "1"}  # the devnet's plaintext key files
        out = ""
        for _ in range(3):
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=120, env=env, check=False
            )
            if done.returncode == 0:
                return
            out = (done.stdout + done.stderr)[-2000:]
            time.sleep(2.0)
        raise RuntimeError(f"bridge {' '.join(args[:3])} failed: {out}")

    def _until(self, check: Callable[[], bool], what: str) -> None:
        assert self.governance is not None
        give_up = time.monotonic() + self.governance.limit_s
        while True:
            try:
                if check():
                    return
            except grpc.RpcError:  # a restarting component: ask again
                pass
            if time.monotonic() > give_up:
                raise TimeoutError(what)
            time.sleep(0.5)

    def _rotate(self) -> Callable[[], bool]:
        """Propose the next epoch (the last genesis member out, spare member 0 in); returns
        whether it is installed on every ledger."""
        assert self.governance is not None
        s = self.system
        assert s.committee is not None
        members = [address for address, _ in s.members[:-1]] + [s.spare_keys[0].address]
        endpoints = [
            arg
            for i, (address, _) in enumerate(s.members)
            for arg in ("--member-endpoint", f"{address}=127.0.0.1:{s.ports[f'verifier-{i}']}")
        ]
        known: list[int] = []

        def listed() -> bool:
            with s.channel("bridge-operator") as ch:
                current = operator_pb2_grpc.OperatorServiceStub(ch).ListRotations(
                    operator_pb2.ListRotationsRequest(), timeout=10
                )
            known.extend(r.proposal.next_epoch for r in current.rotations)
            return True

        self._until(listed, "the coordinator lists its rotations")
        epoch = 1 + max(known, default=1)
        self._cli(
            "bridge-operator", "operator", "rotation", "propose",
            "--next-members", ",".join(members), "--threshold", str(s.committee.threshold),
            "--overlap", str(self.governance.overlap), *endpoints,
        )  # fmt: skip

        def installed() -> bool:
            with s.channel("bridge-operator") as ch:
                r = operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
                    operator_pb2.GetRotationRequest(next_epoch=epoch), timeout=10
                )
            return all(x.status in ("active", "old-epoch-expired") for x in r.ledgers)

        return installed

    def _order(self, action: str) -> Callable[[], bool]:
        """The depository halts (``halt``) or releases (``release``) the plan's security on
        every ledger; returns whether every ledger shows it."""
        assert self.governance is not None
        s = self.system
        security = self.governance.security
        self._cli(
            "depository", "depository", action, "--security", security, "--all-ledgers",
            "--network", str(s.workdir / "network.toml"),
            "--key-file", str(s.workdir / "keys" / "depository.key"),
        )  # fmt: skip
        want = action == "halt"

        def applied() -> bool:
            with s.channel("depository") as ch:
                status = depository_pb2_grpc.DepositoryServiceStub(ch).GetHaltStatus(
                    depository_pb2.GetHaltStatusRequest(security_id=security), timeout=10
                )
            halted = {h.ledger_id for h in status.ledgers if h.security_halted}
            return halted == set(s.all_ledgers) if want else not halted

        return applied
