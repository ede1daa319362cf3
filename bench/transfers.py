"""Open-loop load benchmark of cross-ledger transfers through the coordinator's gRPC API.

The script starts its own :class:`~bridge.devnet.system.LocalSystem` (the ledgers of
``--lanes``: two anvil ledgers, or one anvil ledger and a native Fabric network, or both
anvils and Fabric; a 3-of-4 verifier committee, one relayer per ledger and the
coordinator, all as real processes) under ``.run/bench/``, creates ``--holders`` holders
that are eligible on every ledger and hold units on every ledger, measures each ledger's
own commit time (``--commit-samples`` sequential admin writes), and then offers
``--transfers`` transfers at ``--rate`` per second, alternating over the lanes.
Submissions are open-loop: transfer ``i`` is submitted at ``i / rate`` seconds whether or
not earlier transfers have finished, so a slow bridge shows up as growing latency, not as
a lower offered load.

What is measured, per transfer (grpc.aio client, one WatchTransfer stream per transfer):

- end-to-end latency: from the SubmitTransfer call until the terminal update
  (COMMITTED) arrives on the watch stream, by the client's monotonic clock;
- the time of every state (SUBMITTED, SOURCE_LOCKED, TARGET_PREPARED, COMMITTING,
  COMMITTED), taken from the coordinator's ``at`` timestamps (same host clock), which
  gives the phase breakdown without the delay of the watch stream itself.

Reported: counts per outcome, latency percentiles in seconds (and, with ``--lanes evm``,
in block intervals with the goal check "p50 <= 3 block intervals + 0.5 s"), the achieved
submission rate, the sustained throughput, the p50 of each phase; per lane: latency
percentiles in seconds and in each ledger's own block/batch interval (EVM: ``--block-time``;
Fabric: the orderer's BatchTimeout from ``deploy/fabric/configtx.yaml``), the phase p50s and
the bridge's overhead at p50 over the ledgers' own commit times (goal <= 0.5 s); the CPU used
by every process while the load ran (``--cpu``, from ``/proc/<pid>/stat``; Fabric peers,
orderer and chaincode server included) and a conservation check: total supply over all
ledgers equals what was issued, escrow is empty and every holder's balance matches the
committed transfers. Every wait is bounded and everything is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from eth_account import Account
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.types import Nonce, TxParams

from bridge.cli.main import STATE_NAMES
from bridge.devnet.anvil import DevAccount
from bridge.devnet.client import AsyncRoutedTransferStub
from bridge.devnet.fabric import FABRIC_DEPLOY_DIR
from bridge.devnet.fabric_bridge import FabricBridgeLedger
from bridge.devnet.processes import REPO_ROOT
from bridge.devnet.system import DEMO_ISIN, LedgerHandle, LocalSystem
from bridge.ledgers.evm import deploy
from bridge.ledgers.fabric.gateway import GatewayClient
from bridge.ledgers.fabric.identity import SigningIdentity
from bridge.rpc.tls import INSECURE_ENV
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

if TYPE_CHECKING:
    from bridge.v1.transfer_pb2_grpc import TransferServiceAsyncStub

LEDGER_A, LEDGER_B, LEDGER_F = "brokerage-a", "brokerage-b", "brokerage-f"
Lane = tuple[str, str]
# --lanes: the lanes transfers alternate over, and the ledgers to start (anvil, Fabric).
LANE_SETS: dict[str, tuple[Lane, ...]] = {
    "evm": ((LEDGER_A, LEDGER_B), (LEDGER_B, LEDGER_A)),
    "fabric": ((LEDGER_A, LEDGER_F), (LEDGER_F, LEDGER_A)),
    "all": ((LEDGER_A, LEDGER_B), (LEDGER_B, LEDGER_F), (LEDGER_F, LEDGER_A)),
}
LAYOUTS: dict[str, tuple[tuple[tuple[str, int], ...], tuple[str, ...]]] = {
    "evm": (((LEDGER_A, 31001), (LEDGER_B, 31002)), ()),
    "fabric": (((LEDGER_A, 31001),), (LEDGER_F,)),
    "all": (((LEDGER_A, 31001), (LEDGER_B, 31002)), (LEDGER_F,)),
}
CONFIGTX = FABRIC_DEPLOY_DIR / "configtx.yaml"
OVERHEAD_GOAL = 0.5  # s the bridge may add at p50 over the ledgers' own commit times
COMMIT_PROBE_TIMEOUT = 180.0  # bound on each ledger's commit-time measurement
UNITS_PER_HOLDER = 1_000_000  # issued to every holder on each ledger
SETUP_GAS = 300_000  # explicit, so a batch can be sent before its predecessors are mined
RECEIPT_TIMEOUT = 60.0
SUBMIT_TIMEOUT = 30.0
LOAD_MARGIN = 30.0  # the whole load phase ends by N / rate + --timeout + this
PHASES = (
    ("SUBMITTED", "SOURCE_LOCKED"),
    ("SOURCE_LOCKED", "TARGET_PREPARED"),
    ("TARGET_PREPARED", "COMMITTING"),
    ("COMMITTING", "COMMITTED"),
)
TERMINAL = frozenset({"COMMITTED", "ABORTED", "FAILED"})
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- configuration and results ---------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """Command-line options."""

    transfers: int
    rate: float
    block_time: float
    timeout: float
    directions: str
    lanes: str
    commit_samples: int
    holders: int
    settle: float
    cpu: bool
    baseline: float
    json_path: Path | None
    transport: str = "mtls"  # mtls | plaintext (development flag; cost measurement only)
    evm_node_auth: bool = True  # EVM nodes behind the authenticating TLS proxy
    observability: str = "off"  # off | metrics | full (metrics + tracing exported; ADR 0016)


def mode_of(opts: Options) -> dict[str, Any]:
    """The transport-security mode of a run, as printed and written to JSON."""
    return {
        "transport": opts.transport,
        "evm_node_auth": opts.evm_node_auth,
        "observability": opts.observability,
    }


def mode_label(opts: Options) -> str:
    """``gRPC mTLS, EVM node TLS+token`` and the like."""
    grpc_mode = "gRPC mTLS + authorisation" if opts.transport == "mtls" else "gRPC PLAINTEXT"
    evm_mode = "EVM node TLS + token" if opts.evm_node_auth else "EVM node plain http"
    return f"{grpc_mode}, {evm_mode}"


@dataclass(frozen=True)
class TransferSpec:
    """One planned transfer: when (seconds after the start) and what."""

    index: int
    at: float
    source: str
    target: str
    sender: str
    recipient: str
    amount: int


@dataclass
class TransferResult:
    """What the client saw of one transfer; times are seconds after its SubmitTransfer call."""

    spec: TransferSpec
    outcome: str = "pending"  # committed | aborted | failed | timed-out | error
    transfer_id: str = ""
    submit_start: float = 0.0  # monotonic, seconds after the load started
    submit_rpc: float | None = None  # SubmitTransfer round trip
    end_to_end: float | None = None  # terminal update observed on the watch stream
    state_at: dict[str, float] = field(default_factory=dict)  # coordinator timestamps
    final_state: str = ""  # after the settle phase, for the balance check
    error: str = ""


# -- machine ---------------------------------------------------------------------------------
def machine_note() -> dict[str, Any]:
    """CPU count, model and Python version of this host."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# -- system setup ----------------------------------------------------------------------------
def _send_batch(w3: Web3, private_key: bytes, calls: Sequence[ContractFunction]) -> None:
    """Send ``calls`` with consecutive nonces at once, then wait for every receipt.

    With anvil's FIFO ordering they are mined in nonce order, so an ``issue`` may follow the
    ``setEligible`` it depends on in the same block.
    """
    sender = Account.from_key(private_key)
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    chain_id = w3.eth.chain_id
    hashes = []
    for offset, call in enumerate(calls):
        params: TxParams = {
            "from": sender.address,
            "nonce": Nonce(nonce + offset),
            "gas": SETUP_GAS,
            "chainId": chain_id,
        }
        tx = call.build_transaction(params)
        hashes.append(w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction))
    for tx_hash in hashes:
        receipt = w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=0.05
        )
        if receipt["status"] != 1:
            raise RuntimeError(f"setup transaction 0x{bytes(tx_hash).hex()} reverted")


def fund_holders(ledger: LedgerHandle, holders: Sequence[DevAccount], units: int) -> None:
    """Make every holder eligible on ``ledger`` and issue it ``units``."""
    token = ledger.tokens[DEMO_ISIN]
    calls: list[ContractFunction] = []
    for h in holders:
        address = Web3.to_checksum_address(h.address)
        calls += [token.functions.setEligible(address, True), token.functions.issue(address, units)]
    _send_batch(ledger.w3, ledger.admin.private_key, calls)


def fabric_admin_client(ledger: FabricBridgeLedger) -> GatewayClient:
    """A Gateway client of Org1's peer signing as Org1's Admin (the endpoint's administrator),
    like the ledger's own helpers, but kept for many calls; the caller closes it."""
    org = ledger.net.org("Org1")
    ident = SigningIdentity.from_msp_dir(org.msp_id, org.admin_msp_dir)
    return GatewayClient(
        org.peer_endpoint,
        org.tls_ca_cert,
        org.peer_host,
        ident,
        ledger.net.channel,
        tls_client_cert=org.user_tls_cert("Admin"),
        tls_client_key=org.user_tls_key("Admin"),
    )


def fund_fabric_holders(
    ledger: FabricBridgeLedger, holders: Sequence[DevAccount], units: int
) -> None:
    """Make every holder eligible on the Fabric ledger, then issue it ``units``.

    Each wave is submitted concurrently (one holder record per transaction, so no MVCC
    conflicts inside a wave); the issue wave follows the eligibility wave's commits.
    """

    async def go() -> None:
        client = fabric_admin_client(ledger)
        try:
            async with asyncio.timeout(RECEIPT_TIMEOUT * 2):
                for fn, extra in (("SetEligible", "true"), ("Issue", str(units))):
                    await asyncio.gather(
                        *(
                            client.submit(
                                ledger.chaincode, fn, [DEMO_ISIN, h.address.lower(), extra]
                            )
                            for h in holders
                        )
                    )
        finally:
            await client.close()

    asyncio.run(go())


def make_system(workdir: Path, opts: Options) -> LocalSystem:
    """The (not yet started) system with the ledgers ``--lanes`` needs."""
    evm, fabric = LAYOUTS[opts.lanes]
    return LocalSystem(
        workdir,
        ledger_names=evm,
        fabric_ledger_names=fabric,
        block_time=opts.block_time,
        evm_node_auth=opts.evm_node_auth,
        transport_security=opts.transport == "mtls",
        metrics=opts.observability != "off",
        probe_interval=2.0,  # the production default (LocalSystem's 0.5 s suits tests)
        tracing_endpoint=_sink_url() if opts.observability == "full" else "",
    )


# ---- observability (ADR 0016): what a Prometheus server and an OTLP collector would do
def _sink_url() -> str:
    """Start a discarding OTLP/HTTP endpoint in this process; its traces URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/v1/traces"


SCRAPE_S = 15.0
"""Prometheus's default scrape interval."""


def _scrape_forever(system: LocalSystem, stop: Any) -> None:
    """Scrape every daemon's /metrics every SCRAPE_S (as Prometheus would) until ``stop``."""
    import urllib.request

    while not stop.wait(SCRAPE_S):
        for port in list(system.metrics_ports.values()):
            url = f"http://127.0.0.1:{port}/metrics"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                r.read()


def start_system(system: LocalSystem, opts: Options) -> list[DevAccount]:
    """Start ledgers and bridge processes; returns the funded holders.

    The caller must call ``system.stop()`` even when this raises.
    """
    fabric = (
        f" and Fabric {', '.join(system.fabric_ledger_names)}" if system.fabric_ledger_names else ""
    )
    evm = ", ".join(n for n, _ in system.ledger_names)
    _say(
        f"starting anvil {evm} ({system.block_time:g} s blocks){fabric} under {system.workdir} ..."
    )
    began = time.monotonic()
    system.start_ledgers()
    _say(f"  ledgers up in {time.monotonic() - began:.1f} s")
    holders = [DevAccount.generate() for _ in range(opts.holders)]
    for ledger in system.ledgers.values():
        fund_holders(ledger, holders, UNITS_PER_HOLDER)
    for fab in system.fabric.values():
        fund_fabric_holders(fab, holders, UNITS_PER_HOLDER)
    _say(
        f"  {len(holders)} holders eligible on {', '.join(system.all_ledgers)},"
        f" {UNITS_PER_HOLDER} units each on each"
    )
    system.write_configs()
    system.start_bridge()
    system.wait_processes_alive(timeout=2.0)
    _say(
        f"  4 verifiers (t=3), {len(system.all_ledgers)} relayers and the coordinator on"
        f" {system.coordinator_target}"
    )
    return holders


def lanes_of(opts: Options) -> tuple[Lane, ...]:
    """The lanes transfers alternate over."""
    if opts.lanes == "evm" and opts.directions == "a2b":
        return ((LEDGER_A, LEDGER_B),)
    return LANE_SETS[opts.lanes]


def lane_name(lane: Lane) -> str:
    """``source->target``."""
    return f"{lane[0]}->{lane[1]}"


def plan(opts: Options, holders: Sequence[DevAccount]) -> list[TransferSpec]:
    """The offered load: evenly spaced, alternating over the lanes, rotating holders."""
    lanes = lanes_of(opts)
    group = 2 if opts.lanes == "evm" else len(lanes)  # evm: the historical rotation
    specs = []
    for i in range(opts.transfers):
        source, target = lanes[i % len(lanes)]
        sender = holders[(i // group) % len(holders)]
        recipient = holders[(i // group + 1) % len(holders)]
        specs.append(
            TransferSpec(
                i, i / opts.rate, source, target, sender.address, recipient.address, 1 + i % 5
            )
        )
    return specs


# -- ledger intervals and commit times -------------------------------------------------------
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration such as ``250ms``, ``2s`` or ``1m30s``."""
    parts = re.findall(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def batch_timeout(path: Path) -> tuple[float, str, int]:
    """The orderer's BatchTimeout in ``path`` (a configtx.yaml): (seconds, as written, line)."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        m = re.match(r"\s*BatchTimeout:\s*(\S+)\s*(#.*)?$", line)
        if m:
            return parse_go_duration(m.group(1).strip("\"'")), m.group(1), number
    raise ValueError(f"no BatchTimeout in {path}")


def ledger_intervals(system: LocalSystem) -> dict[str, dict[str, Any]]:
    """Each ledger's own block (EVM) or batch (Fabric) interval, and where it came from."""
    out: dict[str, dict[str, Any]] = {
        name: {"kind": "block", "seconds": system.block_time, "source": "--block-time"}
        for name in system.ledgers
    }
    for name, fab in system.fabric.items():
        seconds, written, line = batch_timeout(CONFIGTX)
        source = f"orderer BatchTimeout: {written} ({CONFIGTX.relative_to(REPO_ROOT)}:{line})"
        rendered = fab.net.workdir / "configtx.yaml"
        with contextlib.suppress(OSError, ValueError):
            used = batch_timeout(rendered)[0]
            source += "; same in the network's rendered copy" if used == seconds else ""
            if used != seconds:
                source += f"; the running network's {rendered} says {used:g} s (used)"
                seconds = used
        out[name] = {"kind": "batch", "seconds": seconds, "source": source}
    return out


def _stats(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "max": max(samples, default=float("nan")),
        "samples_s": [round(x, 4) for x in samples],
    }


def time_evm_commits(ledger: LedgerHandle, n: int, random_phase: bool = False) -> list[float]:
    """Seconds of ``n`` sequential ``deploy.set_eligible`` calls, each waiting for its receipt.

    Back to back, each write is sent just after the block that mined its predecessor, so it
    waits a whole block (the worst case). With ``random_phase`` a random pause in
    [0, block time) precedes each write (not timed), as for a bridge step triggered by
    another ledger's commit.
    """
    w3, token = ledger.w3, ledger.tokens[DEMO_ISIN]
    rng = random.Random(n)
    samples = []
    for _ in range(n):
        who = DevAccount.generate().address
        if random_phase:
            time.sleep(rng.uniform(0.0, ledger.node.block_time))
        began = time.perf_counter()
        deploy.set_eligible(w3, ledger.admin.private_key, token, who, True)
        samples.append(time.perf_counter() - began)
    return samples


def time_fabric_submits(ledger: FabricBridgeLedger, n: int) -> list[float]:
    """Seconds of ``n`` sequential ``GatewayClient.submit`` of SetEligible on one client
    (endorse by both orgs, order, wait for the VALID commit); one untimed warm-up first."""

    async def go() -> list[float]:
        client = fabric_admin_client(ledger)
        samples = []
        try:
            async with asyncio.timeout(COMMIT_PROBE_TIMEOUT):
                for i in range(n + 1):
                    args = [DEMO_ISIN, DevAccount.generate().address.lower(), "true"]
                    began = time.perf_counter()
                    await client.submit(ledger.chaincode, "SetEligible", args)
                    if i:
                        samples.append(time.perf_counter() - began)
        finally:
            await client.close()
        return samples

    return asyncio.run(go())


def time_fabric_helper(ledger: FabricBridgeLedger, n: int) -> list[float]:
    """Seconds of ``n`` sequential ``FabricBridgeLedger.set_eligible`` (a new client each)."""
    samples = []
    for _ in range(n):
        who = DevAccount.generate().address
        began = time.perf_counter()
        ledger.set_eligible(DEMO_ISIN, who)
        samples.append(time.perf_counter() - began)
    return samples


def measure_commits(system: LocalSystem, n: int) -> dict[str, dict[str, Any]]:
    """Each ledger's own commit time: ``n`` sequential admin writes, bridge idle.

    EVM: ``deploy.set_eligible`` (send, then poll the receipt every 20 ms). Fabric:
    ``GatewayClient.submit`` on one warm client (the commit time used for the floor), and
    ``FabricBridgeLedger.set_eligible`` for comparison (it also builds a client per call).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, ledger in system.ledgers.items():
        out[name] = {"method": "deploy.set_eligible (waits for the receipt), back to back"}
        out[name] |= _stats(time_evm_commits(ledger, n))
        out[name]["random_phase"] = {
            "method": "deploy.set_eligible after a random pause in [0, block time)"
        } | _stats(time_evm_commits(ledger, n, random_phase=True))
    for name, fab in system.fabric.items():
        out[name] = {"method": "GatewayClient.submit SetEligible (one warm client)"}
        out[name] |= _stats(time_fabric_submits(fab, n))
        out[name]["with_client_setup"] = {
            "method": "FabricBridgeLedger.set_eligible (new client per call)"
        } | _stats(time_fabric_helper(fab, n))
    return out


# -- CPU sampling ----------------------------------------------------------------------------
def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _host_cpu() -> tuple[float, float, float]:
    """(busy, iowait, total) jiffies of the whole host, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait, total = values[3], values[4], sum(values[:8])
    return total - idle - iowait, iowait, total


def process_pids(system: LocalSystem) -> dict[str, int]:
    """Every process of the run by name, this benchmark client included."""
    pids = {name: proc.pid for name, proc in system.processes.items()}
    for name, ledger in system.ledgers.items():
        if ledger.node.process is not None:
            pids[f"anvil-{name}"] = ledger.node.process.pid
        proxy = ledger.node.proxy
        if proxy is not None and proxy.process is not None and proxy.process.alive():
            pids[f"evm-proxy-{name}"] = proxy.process.pid
    for name, fab in system.fabric.items():
        prefix = f"{name}:" if len(system.fabric) > 1 else ""
        if fab.network is not None:
            pids |= {prefix + proc: pid for proc, pid in fab.net.pids().items()}
        if fab.process is not None and fab.process.alive():
            pids[prefix + fab.process.name] = fab.process.pid
    pids["bench-client"] = os.getpid()
    return pids


Sample = tuple[float, dict[str, float], tuple[float, float, float]]


def _rates(a: Sample, b: Sample, name: str) -> float | None:
    """% of one core ``name`` used between two samples."""
    if name not in a[1] or name not in b[1] or b[0] <= a[0]:
        return None
    return (b[1][name] - a[1][name]) / (b[0] - a[0]) * 100


@dataclass
class CpuSampler:
    """Samples per-process and host CPU: an idle baseline, then once per ``interval``."""

    pids: dict[str, int]
    interval: float = 1.0
    idle: tuple[Sample, Sample] | None = None
    samples: list[Sample] = field(default_factory=list)

    def snapshot(self) -> Sample:
        """CPU-seconds of every process and host jiffies, now."""
        procs = {n: s for n, p in self.pids.items() if (s := _proc_cpu_seconds(p)) is not None}
        return time.monotonic(), procs, _host_cpu()

    async def baseline(self, seconds: float) -> None:
        """Measure what the idle system uses (pollers, block production)."""
        first = self.snapshot()
        await asyncio.sleep(seconds)
        self.idle = (first, self.snapshot())

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set (and once more at the end)."""
        self.samples.append(self.snapshot())
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            self.samples.append(self.snapshot())

    def _row(self, name: str, wall: float, committed: int) -> dict[str, float] | None:
        first, last = self.samples[0], self.samples[-1]
        if name not in first[1] or name not in last[1]:
            return None
        used = last[1][name] - first[1][name]
        pairs = zip(self.samples, self.samples[1:], strict=False)
        peaks = [r for a, b in pairs if (r := _rates(a, b, name)) is not None]
        idle = _rates(*self.idle, name) if self.idle else None
        return {
            "cpu_s": used,
            "avg_pct": used / wall * 100,
            "peak_pct": max(peaks, default=0.0),
            "idle_pct": idle if idle is not None else float("nan"),
            "cpu_ms_per_commit": used / committed * 1000 if committed else float("nan"),
        }

    def table(self, committed: int) -> dict[str, Any]:
        """Per process: CPU-s, avg/peak/idle % of one core, CPU per committed transfer;
        the host's busy share, other processes' CPU, and a CPU-bound capacity estimate."""
        if len(self.samples) < 2:
            return {}
        (t0, _, h0), (t1, _, h1) = self.samples[0], self.samples[-1]
        wall = t1 - t0
        rows = {n: r for n in self.pids if (r := self._row(n, wall, committed)) is not None}
        total = max(1.0, h1[2] - h0[2])
        host_busy_s = (h1[0] - h0[0]) / _CLK_TCK
        bridge_s = sum(r["cpu_s"] for n, r in rows.items() if n != "bench-client")
        ours_s = sum(r["cpu_s"] for r in rows.values())
        pairs = zip(self.samples, self.samples[1:], strict=False)
        busy = [(b[2][0] - a[2][0]) / max(1.0, b[2][2] - a[2][2]) * 100 for a, b in pairs]
        cores = len(os.sched_getaffinity(0))
        return {
            "window_s": wall,
            "processes": dict(sorted(rows.items(), key=lambda kv: -kv[1]["cpu_s"])),
            "bridge_cpu_s": bridge_s,
            "other_processes_cpu_s": max(0.0, host_busy_s - ours_s),
            "host_busy_pct": (h1[0] - h0[0]) / total * 100,
            "host_iowait_pct": (h1[1] - h0[1]) / total * 100,
            "host_intervals_ge_95pct": sum(b >= 95 for b in busy) / max(1, len(busy)),
            "capacity_per_s": cores * committed / bridge_s if bridge_s and committed else None,
            "cores": cores,
        }


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def rpc_counts(log: Path, offset: int) -> Counter[str]:
    """JSON-RPC methods anvil logged after byte ``offset`` (one method name per line)."""
    with contextlib.suppress(OSError), log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
        return Counter(
            line for line in text.splitlines() if line.startswith(("eth_", "anvil_", "net_"))
        )
    return Counter()


def anvil_logs(system: LocalSystem) -> dict[str, Path]:
    """Each ledger's anvil log, where anvil prints every JSON-RPC method it serves."""
    return {
        name: h.node.process.log_path
        for name, h in system.ledgers.items()
        if h.node.process is not None
    }


# -- load ------------------------------------------------------------------------------------
def _request(spec: TransferSpec) -> transfer_pb2.SubmitTransferRequest:
    return transfer_pb2.SubmitTransferRequest(
        idempotency_key=f"bench-{uuid.uuid4()}",
        security_id=DEMO_ISIN,
        source_ledger=spec.source,
        target_ledger=spec.target,
        sender=spec.sender,
        recipient=spec.recipient,
        amount=str(spec.amount),
    )


async def _submit_and_watch(
    stub: TransferServiceAsyncStub, result: TransferResult, deadline: float
) -> None:
    """SubmitTransfer, then follow its WatchTransfer stream to a terminal state."""
    loop = asyncio.get_running_loop()
    start, wall = loop.time(), time.time()
    response = await stub.SubmitTransfer(
        _request(result.spec), timeout=min(SUBMIT_TIMEOUT, deadline - start)
    )
    result.submit_rpc = loop.time() - start
    result.transfer_id = response.transfer.transfer_id
    watch = stub.WatchTransfer(
        transfer_pb2.WatchTransferRequest(transfer_id=result.transfer_id),
        timeout=max(0.1, deadline - loop.time()),
    )
    async for update in watch:  # the server ends the stream after the terminal update
        name = STATE_NAMES.get(update.state, str(update.state))
        result.state_at[name] = update.at.ToNanoseconds() / 1e9 - wall
        if name in TERMINAL:
            result.end_to_end = loop.time() - start
            result.outcome = "committed" if name == "COMMITTED" else name.lower()
            result.final_state = name
    if not result.final_state:
        result.outcome, result.error = "error", "watch stream ended before a terminal state"


async def run_one(
    stub: TransferServiceAsyncStub, spec: TransferSpec, t0: float, budget: float
) -> TransferResult:
    """Wait for the spec's slot, then run it within ``budget`` seconds; never raises."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + spec.at - loop.time()))
    result = TransferResult(spec, submit_start=loop.time() - t0)
    deadline = loop.time() + budget
    try:
        async with asyncio.timeout_at(deadline):
            await _submit_and_watch(stub, result, deadline)
    except TimeoutError:
        result.outcome = "timed-out"
    except grpc.aio.AioRpcError as exc:
        timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        result.outcome = "timed-out" if timed_out else "error"
        result.error = f"{exc.code().name}: {exc.details()}"
    return result


async def run_load(
    system: LocalSystem, specs: Sequence[TransferSpec], opts: Options, sampler: CpuSampler | None
) -> tuple[list[TransferResult], float]:
    """Offer every spec on schedule (each submitted over mTLS as its source ledger's
    brokerage); returns the results and the load start (monotonic)."""
    stop = asyncio.Event()
    # Each request is instructed by its source ledger's devnet brokerage key (protocol v2).
    stub: Any = AsyncRoutedTransferStub(system, instruct=system.brokerage.instruct)
    try:
        await asyncio.wait_for(stub.channel("depository").channel_ready(), timeout=10)
        sampling = asyncio.create_task(sampler.run(stop)) if sampler else None
        t0 = asyncio.get_running_loop().time()
        bound = (specs[-1].at if specs else 0.0) + opts.timeout + LOAD_MARGIN
        try:
            async with asyncio.timeout(bound):
                results = await asyncio.gather(*(run_one(stub, s, t0, opts.timeout) for s in specs))
        finally:
            stop.set()
            if sampling is not None:
                await sampling
    finally:
        await stub.close()
    return list(results), t0


async def settle(system: LocalSystem, results: Sequence[TransferResult], limit: float) -> None:
    """Poll transfers that were not seen terminal until they are, for up to ``limit`` s."""
    pending = [r for r in results if r.transfer_id and not r.final_state]
    if not pending:
        return
    _say(f"settling {len(pending)} transfers not seen terminal (up to {limit:g} s) ...")
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit
    async with system.aio_channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        while pending and loop.time() < give_up:
            for r in pending:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    t = await stub.GetTransfer(
                        transfer_pb2.GetTransferRequest(transfer_id=r.transfer_id), timeout=5
                    )
                    if STATE_NAMES.get(t.state) in TERMINAL:
                        r.final_state = STATE_NAMES[t.state]
            pending = [r for r in pending if not r.final_state]
            if pending:
                await asyncio.sleep(1.0)


# -- conservation ----------------------------------------------------------------------------
def expected_balances(
    ledgers: Sequence[str], holders: Sequence[DevAccount], results: Sequence[TransferResult]
) -> dict[tuple[str, str], int]:
    """Each (ledger, holder) balance implied by the committed transfers."""
    expected = {(ledger, h.address): UNITS_PER_HOLDER for ledger in ledgers for h in holders}
    for r in results:
        if r.final_state == "COMMITTED":
            s = r.spec
            expected[(s.source, s.sender)] -= s.amount
            expected[(s.target, s.recipient)] += s.amount
    return expected


def conservation(
    system: LocalSystem, holders: Sequence[DevAccount], results: Sequence[TransferResult]
) -> dict[str, Any]:
    """Supply over all ledgers (EVM and Fabric) vs issued, escrow per ledger, holders'
    balances on every ledger."""
    ledgers = system.all_ledgers
    issued = UNITS_PER_HOLDER * len(holders) * len(ledgers)
    supply = {n: system.handle(n).total_supply(DEMO_ISIN) for n in ledgers}
    escrow = {n: system.handle(n).escrowed(DEMO_ISIN) for n in ledgers}
    mismatched = [
        f"{ledger}:{holder} has {got}, expected {want}"
        for (ledger, holder), want in expected_balances(ledgers, holders, results).items()
        if (got := system.handle(ledger).balance(DEMO_ISIN, holder)) != want
    ]
    unsettled = sum(1 for r in results if r.transfer_id and not r.final_state)
    ok = sum(supply.values()) == issued and not any(escrow.values()) and not mismatched
    return {
        "issued": issued,
        "supply": supply,
        "total_supply": sum(supply.values()),
        "escrow": escrow,
        "balance_mismatches": mismatched,
        "unsettled_transfers": unsettled,
        "ok": ok,
    }


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _phase_p50(committed: Sequence[TransferResult]) -> dict[str, float]:
    phases: dict[str, list[float]] = {"submit call -> SUBMITTED": []}
    for r in committed:
        if "SUBMITTED" in r.state_at:
            phases["submit call -> SUBMITTED"].append(r.state_at["SUBMITTED"])
        for a, b in PHASES:
            if a in r.state_at and b in r.state_at:
                phases.setdefault(f"{a} -> {b}", []).append(r.state_at[b] - r.state_at[a])
        if r.end_to_end is not None and "COMMITTED" in r.state_at:
            phases.setdefault("COMMITTED -> seen by watch", []).append(
                r.end_to_end - r.state_at["COMMITTED"]
            )
    return {k: statistics.median(v) for k, v in phases.items() if v}


def summarize(results: Sequence[TransferResult], opts: Options) -> dict[str, Any]:
    """Counts, latency percentiles, goal check, rates and phase breakdown."""
    counts = {k: 0 for k in ("committed", "aborted", "failed", "timed-out", "error")}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    committed = [r for r in results if r.outcome == "committed"]
    e2e = [r.end_to_end for r in committed if r.end_to_end is not None]
    latency = {f"p{q}": percentile(e2e, q) for q in (50, 95, 99)}
    latency["max"] = max(e2e, default=float("nan"))
    starts = [r.submit_start for r in results]
    span = max(starts) - min(starts) if starts else 0.0
    finishes = [r.submit_start + (r.end_to_end or 0.0) for r in committed]
    busy = (max(finishes) - min(starts)) if finishes else 0.0
    goal = 3 * opts.block_time + 0.5
    return {
        "counts": counts,
        "latency_s": latency,
        "latency_blocks": {k: v / opts.block_time for k, v in latency.items()},
        "goal_s": goal,
        "goal_ratio": latency["p50"] / goal,
        "goal_met": latency["p50"] <= goal,
        "submit_rpc_p50_s": percentile([r.submit_rpc for r in results if r.submit_rpc], 50),
        "submit_rpc_p99_s": percentile([r.submit_rpc for r in results if r.submit_rpc], 99),
        "achieved_submit_rate": (len(starts) - 1) / span if span > 0 else float("nan"),
        "throughput_per_s": len(committed) / busy if busy > 0 else float("nan"),
        "phase_p50_s": _phase_p50(committed),
        "errors": sorted({r.error for r in results if r.error})[:10],
    }


def summarize_lanes(
    results: Sequence[TransferResult],
    lanes: Sequence[Lane],
    intervals: dict[str, dict[str, Any]],
    commits: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Per lane: latency percentiles (s and per ledger interval), the phase p50s, the floor of
    three sequential ledger writes from the measured commit times, and the bridge's overhead
    at p50 over that floor."""
    out: dict[str, dict[str, Any]] = {}
    for lane in lanes:
        source, target = lane
        mine = [r for r in results if (r.spec.source, r.spec.target) == lane]
        committed = [r for r in mine if r.outcome == "committed"]
        e2e = [r.end_to_end for r in committed if r.end_to_end is not None]
        latency = {f"p{q}": percentile(e2e, q) for q in (50, 95, 99)}
        latency["max"] = max(e2e, default=float("nan"))
        src, tgt = commits[source]["p50"], commits[target]["p50"]
        floor = src + tgt + max(src, tgt)
        overhead = latency["p50"] - floor
        # the same with EVM writes at a random block phase (Fabric: the same numbers)
        src_r, tgt_r = (commits[x].get("random_phase", commits[x])["p50"] for x in lane)
        floor_r = src_r + tgt_r + max(src_r, tgt_r)
        out[lane_name(lane)] = {
            "source": source,
            "target": target,
            "offered": len(mine),
            "committed": len(committed),
            "latency_s": latency,
            "latency_intervals": {
                ledger: {k: v / intervals[ledger]["seconds"] for k, v in latency.items()}
                for ledger in dict.fromkeys(lane)
            },
            "floor_s": floor,
            "floor_terms_s": {
                "source_commit": src,
                "target_commit": tgt,
                "both_commit": max(src, tgt),
            },
            "overhead_p50_s": overhead,
            "overhead_goal_s": OVERHEAD_GOAL,
            "overhead_goal_met": overhead <= OVERHEAD_GOAL,
            "floor_random_phase_s": floor_r,
            "floor_random_phase_terms_s": {
                "source_commit": src_r,
                "target_commit": tgt_r,
                "both_commit": max(src_r, tgt_r),
            },
            "overhead_p50_random_phase_s": latency["p50"] - floor_r,
            "overhead_random_phase_goal_met": latency["p50"] - floor_r <= OVERHEAD_GOAL,
            "phase_p50_s": _phase_p50(committed),
        }
    return out


# -- output ----------------------------------------------------------------------------------
def _say(text: str = "") -> None:
    print(text, flush=True)


def _lines_summary(s: dict[str, Any], block_time: float, blocks: bool) -> Iterator[str]:
    c = s["counts"]
    yield (
        f"outcomes: committed={c['committed']} aborted={c['aborted']} failed={c['failed']}"
        f" timed-out={c['timed-out']} error={c['error']}"
    )
    for e in s["errors"]:
        yield f"  error: {e}"
    lat, blk = s["latency_s"], s["latency_blocks"]
    yield "end-to-end latency (committed, all lanes):   p50      p95      p99      max"
    yield "  seconds" + " " * 27 + "".join(f"{lat[k]:9.2f}" for k in ("p50", "p95", "p99", "max"))
    if blocks:
        yield (
            "  block intervals"
            + " " * 19
            + "".join(f"{blk[k]:9.2f}" for k in ("p50", "p95", "p99", "max"))
        )
        verdict = "MET" if s["goal_met"] else "MISSED"
        yield (
            f"goal p50 <= 3 blocks + 0.5 s = {s['goal_s']:.2f} s: p50 {lat['p50']:.2f} s,"
            f" ratio {s['goal_ratio']:.2f} -> {verdict}"
        )
    yield (
        f"SubmitTransfer rpc: p50 {s['submit_rpc_p50_s']:.3f} s, p99 {s['submit_rpc_p99_s']:.3f} s"
    )
    yield f"achieved submission rate: {s['achieved_submit_rate']:.2f} /s"
    yield f"sustained throughput: {s['throughput_per_s']:.2f} committed/s"
    yield "phase breakdown (p50, committed transfers, all lanes):"
    for name, v in s["phase_p50_s"].items():
        tail = f"  {v / block_time:6.2f} blocks" if blocks else ""
        yield f"  {name:<36} {v:7.2f} s{tail}"


def _lines_ledgers(
    intervals: dict[str, dict[str, Any]], commits: dict[str, dict[str, Any]]
) -> Iterator[str]:
    yield "ledger intervals:"
    for name, iv in intervals.items():
        yield f"  {name:<12} {iv['kind']} {iv['seconds']:.3f} s   from {iv['source']}"
    n = next(iter(commits.values()))["n"] if commits else 0
    yield f"ledger commit time ({n} sequential admin writes each, before the load):"
    yield f"  {'ledger':<12} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'p50/interval':>13}  method"
    for name, c in commits.items():
        rows = [(c, "floor")]
        if "random_phase" in c:
            rows.append((c["random_phase"], "random-phase floor"))
        if "with_client_setup" in c:
            rows.append((c["with_client_setup"], "not used"))
        for i, (r, use) in enumerate(rows):
            label = name if i == 0 else ""
            ratio = r["p50"] / intervals[name]["seconds"]
            yield (
                f"  {label:<12} {r['p50']:7.3f} {r['p95']:7.3f} {r['max']:7.3f} {ratio:13.2f}"
                f"  {r['method']} [{use}]"
            )


def _short(lane: str) -> str:
    return lane.replace("brokerage-", "").upper()


def _lines_lanes(
    lanes: dict[str, dict[str, Any]], intervals: dict[str, dict[str, Any]]
) -> Iterator[str]:
    keys = ("p50", "p95", "p99", "max")
    yield f"per lane, end-to-end latency (committed):  {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
    for name, ln in lanes.items():
        yield f"  {name}: {ln['committed']}/{ln['offered']} committed"
        lat = ln["latency_s"]
        yield f"    {'seconds':<38}" + "".join(f" {lat[k]:8.2f}" for k in keys)
        for ledger, mult in ln["latency_intervals"].items():
            iv = intervals[ledger]
            label = f"x {ledger} {iv['kind']} ({iv['seconds']:g} s)"
            yield f"    {label:<38}" + "".join(f" {mult[k]:8.2f}" for k in keys)
    names = list(lanes)
    phases = list(dict.fromkeys(p for ln in lanes.values() for p in ln["phase_p50_s"]))
    yield "per lane, phase p50 (s):" + " " * 16 + "".join(f" {_short(n):>8}" for n in names)
    for ph in phases:
        cells = "".join(
            f" {lanes[n]['phase_p50_s'][ph]:8.2f}"
            if ph in lanes[n]["phase_p50_s"]
            else f" {'-':>8}"
            for n in names
        )
        yield f"  {ph:<38}{cells}"
    yield (
        f"bridge overhead at p50 = e2e p50 - floor, floor = source + target +"
        f" max(source, target) commit p50 (goal <= {OVERHEAD_GOAL:g} s):"
    )
    for name, ln in lanes.items():
        t = ln["floor_terms_s"]
        verdict = "MET" if ln["overhead_goal_met"] else "MISSED"
        yield (
            f"  {name:<26} e2e {ln['latency_s']['p50']:.2f} - floor {ln['floor_s']:.2f}"
            f" ({t['source_commit']:.2f} + {t['target_commit']:.2f} + {t['both_commit']:.2f})"
            f" = {ln['overhead_p50_s']:+.2f} s -> {verdict}"
        )
    yield "  with EVM commits at a random block phase (the writes a bridge step triggers):"
    for name, ln in lanes.items():
        t = ln["floor_random_phase_terms_s"]
        verdict = "MET" if ln["overhead_random_phase_goal_met"] else "MISSED"
        yield (
            f"  {name:<26} e2e {ln['latency_s']['p50']:.2f} - floor"
            f" {ln['floor_random_phase_s']:.2f} ({t['source_commit']:.2f} +"
            f" {t['target_commit']:.2f} + {t['both_commit']:.2f})"
            f" = {ln['overhead_p50_random_phase_s']:+.2f} s -> {verdict}"
        )


def _lines_cpu(cpu: dict[str, Any]) -> Iterator[str]:
    yield f"CPU while the load ran ({cpu['window_s']:.1f} s window; 100% = one core):"
    yield (
        f"  {'process':<22} {'cpu-s':>8} {'avg %':>7} {'peak %':>7} {'idle %':>7} {'ms/commit':>10}"
    )
    for name, r in cpu["processes"].items():
        yield (
            f"  {name:<22} {r['cpu_s']:8.2f} {r['avg_pct']:7.1f} {r['peak_pct']:7.1f}"
            f" {r['idle_pct']:7.1f} {r['cpu_ms_per_commit']:10.1f}"
        )
    yield f"  {'other host processes':<22} {cpu['other_processes_cpu_s']:8.2f}"
    yield (
        f"  host: busy {cpu['host_busy_pct']:.1f}% of all cores, iowait"
        f" {cpu['host_iowait_pct']:.1f}%, {cpu['host_intervals_ge_95pct']:.0%} of 1 s"
        " intervals >= 95% busy"
    )
    if cpu["capacity_per_s"] is not None:
        yield (
            f"  bridge processes used {cpu['bridge_cpu_s']:.1f} CPU-s: CPU-bound capacity"
            f" on {cpu['cores']} cores ~ {cpu['capacity_per_s']:.1f} transfers/s"
        )


def _lines_rpc(rpc: dict[str, dict[str, int]], committed: int) -> Iterator[str]:
    yield "anvil JSON-RPC requests served during the load (per committed transfer):"
    for ledger, counts in rpc.items():
        total = sum(counts.values())
        top = ", ".join(f"{m} {n}" for m, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
        per = f"{total / committed:.1f}" if committed else "-"
        yield f"  {ledger:<12} {total:7d} ({per}/transfer): {top}"


def _lines_conservation(c: dict[str, Any]) -> Iterator[str]:
    supply = ", ".join(f"{n}={v}" for n, v in c["supply"].items())
    escrow = ", ".join(f"{n}={v}" for n, v in c["escrow"].items())
    yield (
        f"conservation: issued {c['issued']}, total supply {c['total_supply']} ({supply});"
        f" escrow {escrow}; balance mismatches {len(c['balance_mismatches'])};"
        f" unsettled {c['unsettled_transfers']} -> {'OK' if c['ok'] else 'VIOLATED'}"
    )
    for m in c["balance_mismatches"][:10]:
        yield f"  {m}"


def report(
    machine: dict[str, Any],
    opts: Options,
    summary: dict[str, Any],
    m: Measurement,
    cons: dict[str, Any],
) -> None:
    """Print everything."""
    _say()
    _say(f"machine: {machine['nproc']} cpus ({machine['cpu_model']}), python {machine['python']}")
    lanes = ", ".join(lane_name(lane) for lane in lanes_of(opts))
    _say(f"mode: {mode_label(opts)}")
    _say(
        f"config: {opts.transfers} transfers at {opts.rate:g}/s offered (open loop),"
        f" lanes={opts.lanes} ({lanes}), {opts.holders} holders, block time"
        f" {opts.block_time:g} s, per-transfer timeout {opts.timeout:g} s"
    )
    for line in _lines_ledgers(m.intervals, m.commits):
        _say(line)
    for line in _lines_summary(summary, opts.block_time, blocks=opts.lanes == "evm"):
        _say(line)
    for line in _lines_lanes(summary["lanes"], m.intervals):
        _say(line)
    if m.cpu:
        for line in _lines_cpu(m.cpu):
            _say(line)
    for line in _lines_rpc(m.rpc, summary["counts"]["committed"]):
        _say(line)
    for line in _lines_conservation(cons):
        _say(line)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON (NaN written as null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and v != v:  # NaN
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(payload), indent=2, default=str) + "\n")
    _say(f"results written to {path}")


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--transfers", type=int, default=40, help="transfers to offer (default 40)")
    p.add_argument("--rate", type=float, default=2.0, help="offered transfers/s (default 2)")
    p.add_argument("--block-time", type=float, default=1.0, help="anvil block time s (1.0)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-transfer timeout s (120)")
    p.add_argument("--lanes", choices=tuple(LANE_SETS), default="evm",
                   help="evm: A<->B (default); fabric: A->F, F->A (one anvil, one Fabric);\n"
                        "all: A->B, B->F, F->A (two anvils and Fabric)")  # fmt: skip
    p.add_argument("--directions", choices=("both", "a2b"), default="both",
                   help="--lanes evm only: both (A->B, B->A) or a2b")  # fmt: skip
    p.add_argument("--commit-samples", type=int, default=10,
                   help="admin writes timed per ledger before the load (10)")  # fmt: skip
    p.add_argument("--holders", type=int, default=8, help="holders on every ledger (8)")
    p.add_argument("--settle", type=float, default=60.0, help="max s to let stragglers finish")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                   help="sample per-process CPU (default on)")  # fmt: skip
    p.add_argument("--baseline", type=float, default=3.0, help="idle CPU sample s before load")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    p.add_argument(
        "--observability",
        choices=("off", "metrics", "full"),
        default="off",
        help="off; metrics: /metrics on every daemon (probes every 2 s,\n"
        "scraped every 15 s);\n"
        "full: metrics + OpenTelemetry spans exported over OTLP/HTTP\n"
        "to a discarding collector in this process (ADR 0016)",
    )
    p.add_argument("--transport", choices=("mtls", "plaintext"), default="mtls",
                   help="mtls: mutual TLS + authorisation on every gRPC port (default);\n"
                        f"plaintext: no [tls] tables, {INSECURE_ENV}=1 everywhere\n"
                        "(development flag; only to measure what mTLS costs)")  # fmt: skip
    p.add_argument("--evm-node-auth", action=argparse.BooleanOptionalAction, default=True,
                   help="EVM nodes behind the authenticating TLS proxy (default on)")  # fmt: skip
    a = p.parse_args(argv)
    if a.transfers < 1 or a.rate <= 0 or a.block_time <= 0 or a.timeout <= 0 or a.holders < 2:
        p.error("need --transfers >= 1, --holders >= 2 and positive rate, times")
    if a.commit_samples < 1:
        p.error("need --commit-samples >= 1")
    if a.directions != "both" and a.lanes != "evm":
        p.error("--directions applies to --lanes evm only")
    return Options(a.transfers, a.rate, a.block_time, a.timeout, a.directions, a.lanes,
                   a.commit_samples, a.holders, a.settle, a.cpu, a.baseline, a.json,
                   a.transport, a.evm_node_auth, a.observability)  # fmt: skip


@dataclass
class Measurement:
    """Everything one run produced."""

    results: list[TransferResult]
    cpu: dict[str, Any] | None
    rpc: dict[str, dict[str, int]]
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)


async def measure(system: LocalSystem, holders: Sequence[DevAccount], opts: Options) -> Measurement:
    """Run the load (with the CPU sampler and RPC counting), then let stragglers settle."""
    sampler = CpuSampler(process_pids(system)) if opts.cpu else None
    if sampler is not None and opts.baseline > 0:
        _say(f"measuring the idle system's CPU for {opts.baseline:g} s ...")
        await sampler.baseline(opts.baseline)
    logs = anvil_logs(system)
    offsets = {name: _log_size(path) for name, path in logs.items()}
    specs = plan(opts, holders)
    _say(f"offering {len(specs)} transfers at {opts.rate:g}/s ...")
    results, _ = await run_load(system, specs, opts, sampler)
    rpc = {name: dict(rpc_counts(path, offsets[name])) for name, path in logs.items()}
    await settle(system, results, opts.settle)
    committed = sum(r.outcome == "committed" for r in results)
    return Measurement(results, sampler.table(committed) if sampler else None, rpc)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 unless setup or the run failed)."""
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if opts.transport == "plaintext":
        # SECURITY: development flag, for this client only (the measurement's plaintext run).
        os.environ[INSECURE_ENV] = "1"
    root = REPO_ROOT / ".run" / "bench"
    workdir = root / time.strftime("run-%Y%m%d-%H%M%S")
    system = make_system(workdir, opts)
    try:
        holders = start_system(system, opts)
        intervals = ledger_intervals(system)
        _say(f"timing {opts.commit_samples} sequential admin writes per ledger ...")
        commits = measure_commits(system, opts.commit_samples)
        scraping = threading.Event()
        if opts.observability != "off":
            threading.Thread(target=_scrape_forever, args=(system, scraping), daemon=True).start()
        try:
            m = asyncio.run(measure(system, holders, opts))
        finally:
            scraping.set()
        m.intervals, m.commits = intervals, commits
        system.wait_processes_alive(timeout=1.0)
        cons = conservation(system, holders, m.results)
        summary = summarize(m.results, opts)
        summary["lanes"] = summarize_lanes(m.results, lanes_of(opts), intervals, commits)
        machine = machine_note()
        report(machine, opts, summary, m, cons)
        if opts.json_path is not None:
            payload = {"machine": machine, "config": asdict(opts), "mode": mode_of(opts),
                       "summary": summary,
                       "ledger_intervals": intervals, "ledger_commit_s": commits,
                       "cpu": m.cpu, "anvil_rpc": m.rpc, "conservation": cons,
                       "transfers": [asdict(r) for r in m.results]}  # fmt: skip
            write_json(opts.json_path, payload)
        return 0
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:
        _say(f"benchmark failed: {type(exc).__name__}: {exc}")
        for proc in system.processes.values():
            if not proc.alive():
                _say(f"--- {proc.name} exited; last log lines:\n{proc.tail()}")
        return 1
    finally:
        _say(f"stopping the system (logs kept in {workdir}) ...")
        system.stop()


if __name__ == "__main__":
    sys.exit(main())
