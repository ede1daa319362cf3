"""Each process's CPU as a fixed part plus a part per transfer, from several runs of
``bench/transfers.py`` at different rates (issue 14; ADR 0026's "one core full at").

``bench/transfers.py`` prints, per process, the rate at which it would fill a core of its
own as ``1000 / CPU-ms per transfer`` at the run's rate. That charges the work a process does
whatever the load (block and head handling, heartbeats, sweeps) to each transfer, so it
understates where a process stops. Fitted over runs at several rates, ``cores = fixed +
marginal x rate`` separates the two, and gives the cores each process, and each kind of
process (bridge, ledgers, devnet TLS proxies, benchmark client), would use at a target rate.

Use separate runs, each on a fresh system: ``--curve`` runs its points one after the other on
one system whose anvil ledgers grow with every block (2026-12-08: each anvil used 0.18 cores
at 96/s after 5,000 transfers, 0.13 at 102/s on a fresh system), which the fit would read as
cost per transfer. Keep every run below saturation (host under about 90 % busy): a saturated
host adds contention to every process.

    .venv/bin/python bench/cost_fit.py run-60.json run-110.json run-180.json [--at 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BRIDGE_PROCESSES", "COST_FIT_AT", "cost_fit", "cost_fit_lines", "main", "run_point"]

COST_FIT_AT = 1000.0
"""The rate issue 14 asks for: :func:`cost_fit` projects each process's cores there."""

_TERMINAL = ("committed", "aborted", "failed")

BRIDGE_PROCESSES = ("coordinator", "relayer", "verifier", "postgres")
"""Name prefixes of the bridge's own processes in a run's CPU table (with ``--store
postgres``, the coordinator's database server's too); everything else is a ledger, a
devnet TLS proxy or the benchmark client."""


def run_point(run: dict[str, Any]) -> dict[str, Any]:
    """One run's load and CPU (its ``--json`` output): the transfers that ended per second
    of the CPU window (``rate_per_s``) and each process's cores used (``cores``: CPU-s over
    the window; the ledgers, proxies and client too). Empty when the run has no CPU table
    or no transfer ended."""
    cpu = run.get("cpu") or {}
    window = float(cpu.get("window_s") or 0.0)
    counts = (run.get("summary") or {}).get("counts") or {}
    ended = sum(int(counts.get(k, 0)) for k in _TERMINAL)
    if window <= 0 or ended <= 0:
        return {}
    cores = {name: r["cpu_s"] / window for name, r in cpu.get("processes", {}).items()}
    return {"rate_per_s": ended / window, "cores": cores}


def cost_fit(points: Sequence[dict[str, Any]], at: float = COST_FIT_AT) -> dict[str, Any]:
    """Per process, ``cores = fixed + marginal x rate`` by least squares over ``points``
    (:func:`run_point`; empty ones left out): fixed cores, marginal CPU-ms per transfer, the
    rate at which it would fill one core of its own (None where its load does not grow) and
    its cores at ``at``/s, lowest one-core rate first; ``sum`` adds the cores at ``at``/s up
    per kind (bridge, ledgers, proxies, client). Empty with fewer than two distinct rates;
    a process is fitted over the runs that had it, and left out with fewer than two rates
    among them. Linear in the load, which it is not quite (batches fill more as the rate
    grows, so the CPU per extra transfer falls): compare the fits over slower and faster
    runs before quoting a projection far beyond the fastest run."""
    rows = [p for p in points if p]
    xs = [float(r["rate_per_s"]) for r in rows]
    if len(set(xs)) < 2:
        return {}
    names = sorted(set().union(*(r["cores"] for r in rows)))
    fit: dict[str, dict[str, float | None]] = {}
    for name in names:
        # A process only some runs had (the devnet's TLS proxies of runs with node auth) is
        # fitted over those runs alone, never counted as idle in the others.
        seen = [
            (float(r["rate_per_s"]), float(r["cores"][name])) for r in rows if name in r["cores"]
        ]
        if len({x for x, _ in seen}) < 2:
            continue
        fixed, slope = _line(seen)
        fit[name] = {
            "fixed_cores": fixed,
            "marginal_ms": slope * 1000,
            "one_core_at_per_s": (1 - fixed) / slope if slope > 0 and fixed < 1 else None,
            "cores_at": fixed + slope * at,
        }
    order = sorted(fit, key=lambda n: fit[n]["one_core_at_per_s"] or float("inf"))
    kinds: dict[str, float] = {}
    for name, row in fit.items():
        kind = _kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + float(row["cores_at"] or 0.0)
    return {"at_per_s": at, "rates_per_s": xs, "processes": {n: fit[n] for n in order},
            "sum": kinds}  # fmt: skip


def _line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The least-squares line through ``points`` (at least two distinct x): (intercept,
    slope)."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return mean_y - slope * mean_x, slope


def _kind(name: str) -> str:
    """The kind a process of the run counts under in :func:`cost_fit`'s sum."""
    if name.startswith(BRIDGE_PROCESSES):
        return "bridge"
    if name.startswith("evm-proxy"):
        return "proxies"
    if name == "bench-client":
        return "client"
    return "ledgers"


def cost_fit_lines(fit: dict[str, Any], cores: int | None = None) -> list[str]:
    """:func:`cost_fit` as text (nothing when it is empty)."""
    if not fit:
        return []
    at = fit["at_per_s"]
    rates = ", ".join(f"{r:.1f}" for r in fit["rates_per_s"])
    lines = [f"each process's CPU, fixed + per transfer (least squares over runs at {rates}/s):",
             f"  {'process':24s} {'fixed cores':>11} {'ms/transfer':>11}"
             f" {'one core at':>12} {f'cores at {at:,.0f}/s':>15}"]  # fmt: skip
    for name, row in fit["processes"].items():
        one = row["one_core_at_per_s"]
        one_text = f"~{one:,.0f}/s" if one is not None else "-"
        lines.append(
            f"  {name:24s} {row['fixed_cores']:11.3f} {row['marginal_ms']:11.2f}"
            f" {one_text:>12} {row['cores_at']:15.2f}"
        )
    total = sum(fit["sum"].values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(fit["sum"].items(), key=lambda kv: -kv[1]))
    host = f" (this host has {cores})" if cores else ""
    lines.append(f"  cores needed at {at:,.0f}/s: {total:.2f}{host}: {parts}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and with ``--json`` write) the fit of the runs named; 2 when it cannot be made."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="--json files of bench/transfers.py runs")
    p.add_argument("--at", type=float, default=COST_FIT_AT, help="rate to project (1000/s)")
    p.add_argument("--json", type=Path, default=None, help="write the fit here")
    a = p.parse_args(argv)
    points = [run_point(json.loads(path.read_text())) for path in a.runs]
    fit = cost_fit(points, a.at)
    if not fit:
        print("need runs with a CPU table at two different rates at least", file=sys.stderr)
        return 2
    print("\n".join(cost_fit_lines(fit, len(os.sched_getaffinity(0)))))
    if a.json is not None:
        a.json.write_text(json.dumps(fit, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
