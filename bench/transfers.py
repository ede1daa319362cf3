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

Batch mode (issue 14; ``bench/transfers_batch.py``): ``--batch N`` submits through
``SubmitTransfers`` in batches of N (offered rate still in transfers/s) and follows each
batch with ``WatchBatch``; ``--scenario end-of-day`` submits every transfer at once in
batches over the EVM<->EVM and EVM<->Fabric lanes and reports the time to settle all,
sustained transfers/s, bridge CPU-ms per transfer by process, ledger transactions and gas
per transfer (receipts), block gas use and what saturated first; ``--curve`` sweeps offered
loads on one system up to saturation and prints throughput against offered load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bridge.devnet.anvil import DevAccount
from bridge.devnet.postgres import start_cluster
from bridge.devnet.processes import REPO_ROOT
from bridge.devnet.system import LocalSystem
from bridge.rpc.tls import INSECURE_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
from transfers_batch import (
    BATCH_BY,
    BatchSpec,
    batch_report_lines,
    bridge_cpu_ms,
    curve_lines,
    curve_rates,
    gas_summary,
    ledger_transactions,
    one_core_at,
    plan_batches,
    plan_end_of_day,
    run_batch_load,
    saturated_point,
    saturation,
    settle_by_lane,
    settle_stats,
)
from transfers_feed import feed_delta, read_feed_counts
from transfers_load import run_load, settle
from transfers_metrics import (
    CpuSampler,
    Measurement,
    RpcCounter,
    conservation,
    ledger_intervals,
    measure_commits,
    percentile,
    process_pids,
    rpc_counters,
    summarize,
    summarize_lanes,
)
from transfers_pin import pin_alone
from transfers_report import report, write_json

from bridge.devnet.starters import starter_names

__all__ = ["machine_note", "main", "percentile"]  # machine_note, percentile: security_overhead
from transfers_setup import (
    BUILT_IN,
    LEDGER_SETS,
    NOT_EVM,
    Options,
    TransferResult,
    TransferSpec,
    _say,
    _scrape_forever,
    lanes_of,
    machine_note,
    make_system,
    mode_of,
    plan,
    start_system,
)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--transfers", type=int, default=40, help="transfers to offer (default 40)")
    p.add_argument("--rate", type=float, default=2.0, help="offered transfers/s (default 2)")
    p.add_argument("--block-time", type=float, default=1.0, help="anvil block time s (1.0)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-transfer timeout s (120)")
    p.add_argument("--lanes", choices=tuple(LEDGER_SETS), default="evm",
                   help="evm: A<->B (default); fabric: A->F, F->A (one anvil, one Fabric);\n"
                        "all: A->B, B->F, F->A (two anvils and Fabric)")  # fmt: skip
    p.add_argument("--ledgers", default="",
                   help="instead of --lanes: devnet ledgers in order, comma-separated: anvil,\n"
                        f"fabric or a devnet starter ({', '.join(starter_names())}); two ledgers:\n"
                        "both directions, more: a ring (e.g. anvil,geth,kaia)")  # fmt: skip
    p.add_argument("--directions", choices=("both", "a2b"), default="both",
                   help="--lanes evm only: both (A->B, B->A) or a2b")  # fmt: skip
    p.add_argument("--commit-samples", type=int, default=10,
                   help="admin writes timed per ledger before the load (10)")  # fmt: skip
    p.add_argument("--holders", type=int, default=8, help="holders on every ledger (8)")
    p.add_argument("--settle", type=float, default=60.0, help="max s to let stragglers finish")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                   help="sample per-process CPU (default on)")  # fmt: skip
    p.add_argument("--baseline", type=float, default=3.0, help="idle CPU sample s before load")
    p.add_argument("--pin", default="", metavar="PROCESS",
                   help="before the load, bind PROCESS (a name of the CPU table, e.g.\n"
                        "coordinator) alone to one CPU and every other process of the\n"
                        "run to the others: its CPU share is then its own core's")  # fmt: skip
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
    # ---- batch mode (issue 14, batchfix)
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="submit through SubmitTransfers in batches of N per source ledger\n"
        "(offered rate still in transfers/s); 0: SubmitTransfer each (default)",
    )
    p.add_argument(
        "--step-batching",
        type=int,
        default=0,
        metavar="N",
        help="the coordinator batches its steps, up to N transfers per ledger\n"
        "transaction and committee signature ([batching]); 0: off (default,\n"
        "or env KSTB_DEVNET_BATCHING)",
    )
    p.add_argument(
        "--step-in-flight",
        type=int,
        default=0,
        metavar="N",
        help="with --step-batching: at most N batched calls per ledger and step at\n"
        "once ([batching] max_in_flight); 0: the coordinator's default (2)",
    )
    p.add_argument(
        "--read-linger-ms",
        type=float,
        default=-1.0,
        metavar="MS",
        help="with --step-batching: a coalesced ledger read behind a running one\n"
        "waits MS for more ([batching] read_linger_ms); default: the coordinator's (20)",
    )
    p.add_argument(
        "--watch-group",
        type=int,
        default=500,
        metavar="N",
        help="with --batch: WatchBatch reports up to N item updates per message\n"
        "(max_items_per_message; default 500, the coordinator's cap); 1: one each",
    )
    p.add_argument(
        "--block-gas-limit",
        type=int,
        default=0,
        metavar="GAS",
        help="each anvil or geth ledger's block gas limit (anvil --gas-limit, geth's\n"
        "genesis and --miner.gaslimit); 0: 30,000,000 (anvil's default; geth ledgers\n"
        "are held there too); raise it to see what saturates after the ledgers' gas",
    )
    p.add_argument(
        "--anvil-states",
        type=int,
        default=0,
        metavar="N",
        help="states each anvil ledger keeps for reads at past blocks (anvil\n"
        "--prune-history N); 0: anvil's default, 500 in memory and more on disk (it does\n"
        "not bound anvil's memory, which grows with state x blocks: for long runs use\n"
        "geth ledgers, --ledgers geth,geth,fabric; bench/README)",
    )
    p.add_argument(
        "--batch-by",
        choices=BATCH_BY,
        default="source",
        help="batch mode: one batch per source ledger, mixing its targets (default), or\n"
        "per lane; the 8 calls a source keeps open are shared by its lanes",
    )
    p.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the coordinator's database: sqlite (a file, the default) or postgres (a\n"
        "throwaway cluster under the run directory, fsync on; its server processes'\n"
        "CPU is counted as the bridge's)",
    )
    p.add_argument(
        "--scenario",
        choices=("open-loop", "end-of-day"),
        default="open-loop",
        help="end-of-day: every transfer due at once, in batches (--batch, default\n"
        "100) over EVM<->EVM and EVM<->Fabric lanes (ledgers anvil,anvil,fabric\n"
        "unless --ledgers); reports time to settle all, gas, saturation",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="sweep offered loads (--curve-from .. --curve-to, --curve-points points,\n"
        "--transfers each) on one system; stop at saturation",
    )
    p.add_argument("--curve-from", type=float, default=2.0, help="lowest offered load /s (2)")
    p.add_argument("--curve-to", type=float, default=32.0, help="highest offered load /s (32)")
    p.add_argument("--curve-points", type=int, default=5, help="offered loads in the sweep (5)")
    a = p.parse_args(argv)
    if a.transfers < 1 or a.rate <= 0 or a.block_time <= 0 or a.timeout <= 0 or a.holders < 2:
        p.error("need --transfers >= 1, --holders >= 2 and positive rate, times")
    if a.commit_samples < 1:
        p.error("need --commit-samples >= 1")
    if a.pin and len(os.sched_getaffinity(0)) < 2:
        p.error("--pin needs at least two CPUs to put one process alone on one")
    if a.block_gas_limit < 0:
        p.error("--block-gas-limit must be 0 (30,000,000) or a positive gas amount")
    if a.anvil_states < 0:
        p.error("--anvil-states must be 0 (anvil's default) or a positive number of states")
    if a.batch < 0 or a.batch > 2500:
        p.error("--batch must be 0 (off) or 1 .. 2500 (the coordinator's largest max_batch_items)")
    if a.scenario == "end-of-day" and a.curve:
        p.error("--curve sweeps offered loads; the end-of-day scenario offers everything at once")
    try:
        curve = tuple(curve_rates(a.curve_from, a.curve_to, a.curve_points)) if a.curve else ()
    except ValueError as exc:
        p.error(f"--curve: {exc}")
    batch = a.batch or (100 if a.scenario == "end-of-day" else 0)
    preset = ("anvil", "anvil", "fabric") if a.scenario == "end-of-day" else LEDGER_SETS[a.lanes]
    ledgers = tuple(k.strip() for k in a.ledgers.split(",") if k.strip()) or preset
    unknown = [k for k in ledgers if k not in BUILT_IN and k not in starter_names()]
    if unknown or len(ledgers) < 2:
        p.error(f"--ledgers needs two or more of anvil, fabric, {', '.join(starter_names())}")
    lanes = a.lanes if not a.ledgers and a.scenario == "open-loop" else "custom"
    if a.scenario == "end-of-day" and all(k in NOT_EVM for k in ledgers):
        p.error("the end-of-day scenario needs an EVM ledger")
    if a.directions != "both" and len(ledgers) != 2:
        p.error("--directions applies to two ledgers only")
    return Options(a.transfers, a.rate, a.block_time, a.timeout, a.directions, lanes,
                   a.commit_samples, a.holders, a.settle, a.cpu, a.baseline, a.json,
                   a.transport, a.evm_node_auth, a.observability, ledgers,
                   batch, a.scenario, curve, a.step_batching, a.step_in_flight,
                   a.read_linger_ms, a.watch_group, a.block_gas_limit, a.store,
                   a.anvil_states, a.batch_by, a.pin)  # fmt: skip


async def _start_measuring(
    system: LocalSystem, opts: Options
) -> tuple[CpuSampler | None, dict[str, RpcCounter]]:
    """The CPU sampler (its idle baseline taken) and each EVM ledger's JSON-RPC request
    counter, started now."""
    sampler = CpuSampler(process_pids(system)) if opts.cpu else None
    if sampler is not None and opts.baseline > 0:
        _say(f"measuring the idle system's CPU for {opts.baseline:g} s ...")
        await sampler.baseline(opts.baseline)
    counters = rpc_counters(system)
    for counter in counters.values():
        await asyncio.to_thread(counter.start)
    return sampler, counters


async def _rpc_served(counters: dict[str, RpcCounter]) -> dict[str, dict[str, int]]:
    """Each counter's requests per method since it started; a ledger whose counts cannot
    be read is left out (said, never the end of a long run's report)."""
    out: dict[str, dict[str, int]] = {}
    for name, counter in counters.items():
        try:
            out[name] = dict(await asyncio.to_thread(counter.counts))
        except OSError as exc:
            _say(f"{name}: JSON-RPC requests not counted ({exc})")
    return out


async def measure(system: LocalSystem, holders: Sequence[DevAccount], opts: Options) -> Measurement:
    """Run the load (with the CPU sampler and RPC counting), then let stragglers settle."""
    sampler, counters = await _start_measuring(system, opts)
    specs = plan(opts, holders)
    _say(f"offering {len(specs)} transfers at {opts.rate:g}/s ...")
    results, _ = await run_load(system, specs, opts, sampler)
    rpc = await _rpc_served(counters)
    await settle(system, results, opts.settle)
    committed = sum(r.outcome == "committed" for r in results)
    return Measurement(results, sampler.table(committed) if sampler else None, rpc)


# ---- batch mode (issue 14, batchfix)
def batch_specs(
    opts: Options, holders: Sequence[DevAccount], rate: float | None = None
) -> list[TransferSpec]:
    """The planned transfers: all due at once (end of day) or ``plan`` at ``rate``."""
    if opts.scenario == "end-of-day":
        addresses = [h.address for h in holders]
        return plan_end_of_day(opts.transfers, lanes_of(opts), addresses, addresses)
    return plan(replace(opts, rate=rate or opts.rate), holders)


async def run_point(
    system: LocalSystem,
    holders: Sequence[DevAccount],
    opts: Options,
    specs: list[TransferSpec],
    sampler: Any,
) -> tuple[list[TransferResult], dict[str, Any]]:
    """One load: in batches (``--batch``) or one SubmitTransfer each; then settle."""
    if opts.batch:
        batches: list[BatchSpec] = plan_batches(specs, opts.batch, opts.batch_by)
        results, stats = await run_batch_load(system, batches, opts, sampler)
    else:
        results, _ = await run_load(system, specs, opts, sampler)
        stats = {"batches": 0}
    await settle(system, results, opts.settle)
    return results, stats


async def measure_batch(
    system: LocalSystem, holders: Sequence[DevAccount], opts: Options
) -> tuple[Measurement, dict[str, Any]]:
    """The batch load (or end-of-day scenario) with CPU sampling, then the ledgers'
    transactions, gas and block use of the terminal transfers, and what saturated."""
    sampler, counters = await _start_measuring(system, opts)
    specs = batch_specs(opts, holders)
    what = "all at once" if opts.scenario == "end-of-day" else f"at {opts.rate:g}/s"
    _say(f"offering {len(specs)} transfers {what} in batches of {opts.batch} ...")
    logs = system.workdir / "logs"
    feed_before = await asyncio.to_thread(read_feed_counts, logs)
    results, stats = await run_point(system, holders, opts, specs, sampler)
    feed = feed_delta(feed_before, await asyncio.to_thread(read_feed_counts, logs))
    rpc = await _rpc_served(counters)
    terminal = sum(1 for r in results if r.final_state)
    cpu = sampler.table(terminal) if sampler else None
    _say("reading the ledger transactions of every settled transfer ...")
    receipts, counts, blocks = await ledger_transactions(system, results)
    cpu_ms = bridge_cpu_ms(cpu, terminal)
    extra = {
        "scenario": opts.scenario,
        "batch_size": opts.batch,
        "batch_by": opts.batch_by,
        "stats": stats,
        "settle": settle_stats(results),
        "settle_by_lane": settle_by_lane(results),
        "bridge_cpu_ms": cpu_ms,
        "one_core_at_per_s": one_core_at(cpu_ms),
        "transactions": counts,
        "gas": gas_summary(receipts, terminal, stats["batches"]),
        "blocks": blocks,
        "saturation": saturation(cpu, blocks),
        "supply_feed": feed,
    }
    return Measurement(results, cpu, rpc), extra


async def measure_curve(
    system: LocalSystem, holders: Sequence[DevAccount], opts: Options
) -> tuple[list[TransferResult], list[dict[str, Any]]]:
    """``--transfers`` transfers at each offered load of the sweep, one after the other on
    the same system; stops after the first saturated point. Returns every result (for the
    conservation check) and one row per point."""
    everything: list[TransferResult] = []
    points: list[dict[str, Any]] = []
    for rate in opts.curve:
        sampler = CpuSampler(process_pids(system)) if opts.cpu else None
        specs = batch_specs(opts, holders, rate)
        mode = f"batches of {opts.batch}" if opts.batch else "one SubmitTransfer each"
        _say(f"curve: {len(specs)} transfers at {rate:g}/s ({mode}) ...")
        results, _ = await run_point(system, holders, opts, specs, sampler)
        everything += results
        stats = settle_stats(results)
        terminal = stats["settled"]
        cpu = sampler.table(terminal) if sampler else None
        sustained = stats["sustained_per_s"]
        point = {
            "offered_per_s": rate,
            "accepted_per_s": stats["accepted_per_s"],
            "sustained_per_s": sustained,
            "latency_p50_s": stats.get("latency_from_due_s", {}).get("p50"),
            "bridge_cpu_ms": bridge_cpu_ms(cpu, terminal).get("total"),
            "host_busy_pct": cpu["host_busy_pct"] if cpu else float("nan"),
            "saturated": sustained is None or saturated_point(rate, sustained),
        }
        points.append(point)
        _say(curve_lines([point])[-1])
        if point["saturated"]:
            break
    return everything, points


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
    cluster = start_cluster(workdir / "postgres") if opts.store == "postgres" else None
    system = make_system(workdir, opts, cluster.url("postgres") if cluster else "")
    try:
        holders = start_system(system, opts)
        intervals = ledger_intervals(system)
        _say(f"timing {opts.commit_samples} sequential admin writes per ledger ...")
        commits = measure_commits(system, opts.commit_samples, intervals)
        if opts.pin:
            plan = pin_alone(process_pids(system), opts.pin)
            _say(f"pinned {opts.pin} alone to CPU {sorted(plan[opts.pin])}, the rest to the others")
        scraping = threading.Event()
        if opts.observability != "off":
            threading.Thread(target=_scrape_forever, args=(system, scraping), daemon=True).start()
        batch_out: dict[str, Any] | None = None
        curve_out: list[dict[str, Any]] | None = None
        try:
            if opts.curve:
                everything, curve_out = asyncio.run(measure_curve(system, holders, opts))
                m = Measurement(everything, None, {})
            elif opts.batch or opts.scenario == "end-of-day":
                m, batch_out = asyncio.run(measure_batch(system, holders, opts))
            else:
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
        for line in batch_report_lines(batch_out) if batch_out else ():
            _say(line)
        for line in curve_lines(curve_out) if curve_out else ():
            _say(line)
        if opts.json_path is not None:
            payload = {"machine": machine, "config": asdict(opts), "mode": mode_of(opts),
                       "summary": summary,
                       "ledger_intervals": intervals, "ledger_commit_s": commits,
                       "cpu": m.cpu, "evm_rpc": m.rpc, "conservation": cons,
                       "batch": batch_out, "curve": curve_out,
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
        try:
            system.stop()
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
