"""The transfer benchmark's report: the printed summary and the JSON file
(``bench/transfers.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfers_metrics import Measurement
from transfers_setup import OVERHEAD_GOAL, Options, _say, lane_name, lanes_of, mode_label

if TYPE_CHECKING:
    pass


# -- output ----------------------------------------------------------------------------------
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
        f" {'peak MiB':>9}"
    )
    for name, r in cpu["processes"].items():
        yield (
            f"  {name:<22} {r['cpu_s']:8.2f} {r['avg_pct']:7.1f} {r['peak_pct']:7.1f}"
            f" {r['idle_pct']:7.1f} {r['cpu_ms_per_commit']:10.1f}"
            f" {r.get('peak_rss_mb', float('nan')):9.1f}"
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
    yield (
        "EVM JSON-RPC requests served during the load (per committed transfer; anvil: its log,"
        " geth: the metrics of the bridge's nodes 1 and 2, without the Engine API):"
    )
    for ledger, counts in rpc.items():
        total = sum(counts.values())
        top = ", ".join(f"{m} {n}" for m, n in sorted(counts.items(), key=lambda kv: -kv[1]))
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
    offered = (
        "all at once (end of day)"
        if opts.scenario == "end-of-day"
        else f"at {opts.rate:g}/s offered (open loop)"
    )
    _say(
        f"config: {opts.transfers} transfers {offered},"
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
