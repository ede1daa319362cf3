"""The transfer benchmark's setup: options, the planned load, the system and its funded
holders (``bench/transfers.py``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.devnet.anvil import DevAccount
from bridge.devnet.ledger import DevLedger
from bridge.devnet.system import DEMO_ISIN, LocalSystem

if TYPE_CHECKING:
    pass

Lane = tuple[str, str]
LEDGER_SETS: dict[str, tuple[str, ...]] = {
    "evm": ("anvil", "anvil"),
    "fabric": ("anvil", "fabric"),
    "all": ("anvil", "anvil", "fabric"),
}
"""``--lanes`` presets of ``--ledgers``: ``anvil`` and ``fabric`` are LocalSystem's built-in
ledgers, any other name a devnet starter (``bridge.devnet.starters``: ``geth``, ``kaia``)."""
BUILT_IN = ("anvil", "fabric")
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
    ledgers: tuple[str, ...] = ("anvil", "anvil")  # devnet kinds in order (--ledgers/--lanes)
    # ---- batch mode (issue 14, batchfix; bench/transfers_batch.py)
    batch: int = 0  # items per SubmitTransfers; 0: one SubmitTransfer per transfer
    scenario: str = "open-loop"  # open-loop | end-of-day (every transfer due at once)
    curve: tuple[float, ...] = ()  # offered loads (transfers/s) of the --curve sweep
    step_batching: int = 0  # the coordinator's batched steps: max_items; 0: off
    step_in_flight: int = 0  # [batching] max_in_flight; 0: the coordinator's default
    read_linger_ms: float = -1.0  # [batching] read_linger_ms; < 0: the coordinator's default
    watch_group: int = 500  # WatchBatch max_items_per_message; 1: one report per message
    block_gas_limit: int = 0  # each anvil or geth ledger's block gas limit; 0: 30 M
    store: str = "sqlite"  # the coordinator's database: sqlite | postgres (a throwaway cluster)
    anvil_states: int = 0  # states each anvil keeps (--prune-history N); 0: anvil's default
    batch_by: str = "source"  # batch mode: one batch per source ledger | per lane
    pin: str = ""  # a process of the run bound alone to one CPU before the load; "": none


def mode_of(opts: Options) -> dict[str, Any]:
    """The transport-security mode of a run, as printed and written to JSON."""
    return {
        "transport": opts.transport,
        "evm_node_auth": opts.evm_node_auth,
        "observability": opts.observability,
        "step_batching": opts.step_batching,
        "step_in_flight": opts.step_in_flight,
        "read_linger_ms": opts.read_linger_ms,
        "watch_group": opts.watch_group,
        "block_gas_limit": opts.block_gas_limit,
        "store": opts.store,
        "anvil_states": opts.anvil_states,
        "batch_by": opts.batch_by,
        "pin": opts.pin,
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


def _say(text: str = "") -> None:
    print(text, flush=True)


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
def ledger_layout(kinds: Sequence[str]) -> list[tuple[str, str]]:
    """(ledger name, devnet kind) per entry of ``--ledgers``: anvil ledgers are
    ``brokerage-a``, ``-b``...; Fabric ``brokerage-f`` (``-f2``...); a starter's
    ``brokerage-<starter>`` (``-<starter>2``...)."""
    out: list[tuple[str, str]] = []
    anvils = iter("abcde")
    seen: Counter[str] = Counter()
    for kind in kinds:
        seen[kind] += 1
        if kind == "anvil":
            out.append((f"brokerage-{next(anvils)}", kind))
            continue
        stem = "f" if kind == "fabric" else kind
        out.append((f"brokerage-{stem}{seen[kind] if seen[kind] > 1 else ''}", kind))
    return out


def fund_holders(ledger: DevLedger, holders: Sequence[DevAccount], units: int) -> None:
    """Make every holder eligible on ``ledger`` and issue it ``units``: the ledger's own bulk
    setup when it has one (``fund_holders``), else one admin act after another."""
    addresses = [h.address for h in holders]
    bulk = getattr(ledger, "fund_holders", None)
    if callable(bulk):
        bulk(DEMO_ISIN, addresses, units)
        return
    for address in addresses:
        ledger.set_eligible(DEMO_ISIN, address)
        ledger.issue(DEMO_ISIN, address, units, register=False)


def make_system(workdir: Path, opts: Options, postgres_server: str = "") -> LocalSystem:
    """The (not yet started) system with the ledgers of ``--ledgers`` (or ``--lanes``); with
    ``--store postgres`` its coordinator's database is created on ``postgres_server``."""
    layout = ledger_layout(opts.ledgers)
    system = LocalSystem(  # [batching] from the environment unless --step-batching
        workdir,
        store=opts.store,
        postgres_server=postgres_server,
        ledger_names=[(n, 31001 + i) for i, (n, k) in enumerate(layout) if k == "anvil"],
        fabric_ledger_names=[n for n, k in layout if k == "fabric"],
        extra_ledgers=[(n, k) for n, k in layout if k not in BUILT_IN],
        block_time=opts.block_time,
        block_gas_limit=opts.block_gas_limit,
        anvil_states=opts.anvil_states,
        # ---- batch mode: a transfer may wait up to --timeout (end of day: the whole run)
        # before its lock without expiring (the devnet's default deadline is 120 s).
        transfer_ttl=max(120, int(opts.timeout)),
        evm_node_auth=opts.evm_node_auth,
        transport_security=opts.transport == "mtls",
        metrics=opts.observability != "off",
        probe_interval=2.0,  # the production default (LocalSystem's 0.5 s suits tests)
        tracing_endpoint=_sink_url() if opts.observability == "full" else "",
    )
    if opts.step_batching:  # ---- batched steps (issue 14): the coordinator's [batching]
        system.batching = {"enabled": True, "max_items": opts.step_batching}
        if opts.step_in_flight:
            system.batching["max_in_flight"] = opts.step_in_flight
        if opts.read_linger_ms >= 0:
            system.batching["read_linger_ms"] = opts.read_linger_ms
    return system


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
    kinds = ", ".join(f"{n} ({k})" for n, k in ledger_layout(opts.ledgers))
    _say(f"starting {kinds} ({system.block_time:g} s anvil blocks) under {system.workdir} ...")
    began = time.monotonic()
    system.start_ledgers()
    _say(f"  ledgers up in {time.monotonic() - began:.1f} s")
    holders = [DevAccount.generate() for _ in range(opts.holders)]
    for ledger in system.dev_ledgers.values():
        fund_holders(ledger, holders, UNITS_PER_HOLDER)
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


NOT_EVM = frozenset({"fabric", "cometbft"})
"""Devnet kinds of ``--ledgers`` that are not EVM ledgers (the end-of-day hub is not one)."""


def end_of_day_lanes(names: Sequence[str], kinds: Sequence[str]) -> tuple[Lane, ...]:
    """Both directions between the first EVM ledger (the hub) and every other ledger:
    EVM<->EVM and EVM<->Fabric with the scenario's ledgers (anvil, anvil, fabric)."""
    evm = [n for n, k in zip(names, kinds, strict=True) if k not in NOT_EVM]
    if not evm:
        raise ValueError("the end-of-day scenario needs an EVM ledger")
    hub = evm[0]
    return tuple(lane for other in names if other != hub for lane in ((hub, other), (other, hub)))


def lanes_of(opts: Options) -> tuple[Lane, ...]:
    """The lanes transfers alternate over. The end-of-day scenario: the hub's lanes
    (:func:`end_of_day_lanes`). Otherwise both directions between two ledgers (only the
    first with ``--directions a2b``), else a ring over the ledgers in ``--ledgers`` order."""
    layout = ledger_layout(opts.ledgers)
    names = [n for n, _ in layout]
    if opts.scenario == "end-of-day":
        return end_of_day_lanes(names, [k for _, k in layout])
    if len(names) == 2:
        a, b = names
        return ((a, b),) if opts.directions == "a2b" else ((a, b), (b, a))
    return tuple((names[i], names[(i + 1) % len(names)]) for i in range(len(names)))


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
