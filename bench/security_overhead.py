"""What issue 9's transport security costs: the same transfer load with and without it.

Runs ``bench/transfers.py`` (each run its own fresh system, one at a time) alternately in
two modes, ``--pairs`` times (A B A B ...), so slow drift of the host affects both alike:

- **secure** (production's): mutual TLS + role authorisation + audit on every gRPC port and
  client, EVM nodes behind the authenticating TLS proxy (``--transport mtls
  --evm-node-auth``);
- **plain**: no ``[tls]`` tables, the development plaintext flag for every process and the
  client, anvil's plain http (``--transport plaintext --no-evm-node-auth``; with
  ``--plain-evm-node-auth`` the EVM proxy stays, isolating the gRPC part).

Both modes use protocol v2 (brokerage-signed instructions): the contract requires them, so
their cost is measured separately by ``bench/instructions.py``, which this script runs at the
end (``--no-instructions`` skips it) with the secure mode's bridge CPU per transfer.

Printed per mode (latencies pooled over the mode's runs, CPU summed over them): committed,
end-to-end latency p50/p95, SubmitTransfer p50, CPU-ms per committed transfer of the bridge
daemons (coordinator, relayers, verifiers), of the EVM TLS proxies, of the benchmark client
(which signs the instructions) and of every process of the run (anvil included); then the
ratios secure/plain, each run's own numbers and the machine. ``--json PATH`` writes it all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from transfers import machine_note, percentile  # noqa: E402  (a sibling script)

ENV = os.environ | {
    # This checkout's packages, for the runs and the processes they start.
    "PYTHONPATH": os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
}
DAEMON_PREFIXES = ("coordinator", "relayer-", "verifier-")
MODES = ("secure", "plain")


def mode_args(mode: str, plain_evm_node_auth: bool) -> list[str]:
    """transfers.py options of ``mode``."""
    if mode == "secure":
        return ["--transport", "mtls", "--evm-node-auth"]
    evm = "--evm-node-auth" if plain_evm_node_auth else "--no-evm-node-auth"
    return ["--transport", "plaintext", evm]


def run_once(mode: str, index: int, a: argparse.Namespace, outdir: Path) -> dict[str, Any] | None:
    """One transfers.py run in ``mode``; its JSON, or None when it failed."""
    path = outdir / f"run{index:02d}-{mode}.json"
    argv = [
        sys.executable, str(HERE / "transfers.py"),
        "--transfers", str(a.transfers), "--rate", str(a.rate),
        "--commit-samples", str(a.commit_samples), "--baseline", str(a.baseline),
        "--settle", str(a.settle), "--lanes", a.lanes,
        *mode_args(mode, a.plain_evm_node_auth), "--json", str(path),
    ]  # fmt: skip
    log = outdir / f"run{index:02d}-{mode}.log"
    print(f"[{time.strftime('%H:%M:%S')}] run {index} ({mode}): {' '.join(argv[2:])}", flush=True)
    began = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, check=False, env=ENV
        ).returncode
    print(f"  done in {time.monotonic() - began:.0f} s, exit {rc} (log {log})", flush=True)
    if rc != 0 or not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def run_numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The figures this comparison uses, from one transfers.py JSON."""
    committed = [t for t in result["transfers"] if t["outcome"] == "committed"]
    n = len(committed)
    procs: dict[str, dict[str, float]] = (result.get("cpu") or {}).get("processes", {})

    window = (result.get("cpu") or {}).get("window_s", 0.0)

    def cpu_s(pred: Any) -> float:
        return float(sum(r["cpu_s"] for name, r in procs.items() if pred(name)))

    def above_idle_s(pred: Any) -> float:
        """CPU beyond what the idle system used over the same window (baseline sample)."""
        return float(
            sum(
                r["cpu_s"] - (r.get("idle_pct") or 0.0) / 100 * window
                for name, r in procs.items()
                if pred(name)
            )
        )

    return {
        "offered": len(result["transfers"]),
        "committed": n,
        "latencies": [t["end_to_end"] for t in committed if t["end_to_end"] is not None],
        "submit_rpc": [t["submit_rpc"] for t in result["transfers"] if t["submit_rpc"]],
        "daemons_cpu_s": cpu_s(lambda p: p.startswith(DAEMON_PREFIXES)),
        "daemons_above_idle_cpu_s": above_idle_s(lambda p: p.startswith(DAEMON_PREFIXES)),
        "evm_proxy_cpu_s": cpu_s(lambda p: p.startswith("evm-proxy-")),
        "client_cpu_s": cpu_s(lambda p: p == "bench-client"),
        "all_cpu_s": cpu_s(lambda p: True),
        "other_host_cpu_s": (result.get("cpu") or {}).get("other_processes_cpu_s", 0.0),
        "host_busy_pct": (result.get("cpu") or {}).get("host_busy_pct", float("nan")),
        "per_process_cpu_s": {p: r["cpu_s"] for p, r in procs.items()},
        "mode": result.get("mode", {}),
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool one mode's runs: latency percentiles over all its transfers, CPU per transfer
    as the sum of CPU over the sum of committed transfers."""
    lat = [x for r in runs for x in r["latencies"]]
    sub = [x for r in runs for x in r["submit_rpc"]]
    committed = sum(r["committed"] for r in runs)

    def per_transfer_ms(key: str) -> float:
        return sum(r[key] for r in runs) / committed * 1000 if committed else float("nan")

    return {
        "runs": len(runs),
        "offered": sum(r["offered"] for r in runs),
        "committed": committed,
        "p50_s": percentile(lat, 50),
        "p95_s": percentile(lat, 95),
        "submit_p50_s": percentile(sub, 50),
        "daemons_cpu_ms": per_transfer_ms("daemons_cpu_s"),
        "daemons_above_idle_cpu_ms": per_transfer_ms("daemons_above_idle_cpu_s"),
        "evm_proxy_cpu_ms": per_transfer_ms("evm_proxy_cpu_s"),
        "client_cpu_ms": per_transfer_ms("client_cpu_s"),
        "all_cpu_ms": per_transfer_ms("all_cpu_s"),
        "other_host_cpu_s": sum(r["other_host_cpu_s"] for r in runs),
    }


ROWS = (
    ("committed / offered", None),
    ("e2e latency p50 (s)", "p50_s"),
    ("e2e latency p95 (s)", "p95_s"),
    ("SubmitTransfer p50 (s)", "submit_p50_s"),
    ("bridge daemons CPU-ms/transfer", "daemons_cpu_ms"),
    ("  of which above idle", "daemons_above_idle_cpu_ms"),
    ("EVM TLS proxies CPU-ms/transfer", "evm_proxy_cpu_ms"),
    ("bench client CPU-ms/transfer", "client_cpu_ms"),
    ("all processes CPU-ms/transfer", "all_cpu_ms"),
)


def report(machine: dict[str, Any], modes: dict[str, dict[str, Any]], runs: list[Any]) -> None:
    """Print the comparison."""
    s, p = modes["secure"], modes["plain"]
    print()
    print(f"machine: {machine['nproc']} cpus ({machine['cpu_model']}), python {machine['python']}")
    print(f"{'':<34} {'secure':>10} {'plain':>10} {'secure/plain':>13}")
    for label, key in ROWS:
        if key is None:
            print(
                f"{label:<34} {s['committed']:>4}/{s['offered']:<5} {p['committed']:>4}/"
                f"{p['offered']:<5}"
            )
            continue
        ratio = s[key] / p[key] if p[key] else float("nan")
        print(f"{label:<34} {s[key]:>10.3f} {p[key]:>10.3f} {ratio:>13.3f}")
    print(
        f"{'other host processes CPU-s':<34} {s['other_host_cpu_s']:>10.1f}"
        f" {p['other_host_cpu_s']:>10.1f}"
    )
    print()
    print("per run:  mode    committed  p50 s  p95 s  daemons ms/t  all ms/t  host busy %")
    for i, (mode, r) in enumerate(runs):
        if r is None:
            print(f"  {i:>2}     {mode:<7} FAILED")
            continue
        lat = r["latencies"]
        n = max(1, r["committed"])
        print(
            f"  {i:>2}     {mode:<7} {r['committed']:>4}/{r['offered']:<4}"
            f" {percentile(lat, 50):>6.2f} {percentile(lat, 95):>6.2f}"
            f" {r['daemons_cpu_s'] / n * 1000:>13.1f} {r['all_cpu_s'] / n * 1000:>9.1f}"
            f" {r['host_busy_pct']:>12.1f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pairs, print the comparison, optionally write JSON; 1 if any run failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=2, help="secure+plain pairs, alternating (2)")
    p.add_argument("--transfers", type=int, default=40, help="transfers per run (40)")
    p.add_argument("--rate", type=float, default=2.0, help="offered transfers/s (2)")
    p.add_argument("--lanes", choices=("evm", "fabric", "all"), default="evm")
    p.add_argument("--commit-samples", type=int, default=3, help="per run (3)")
    p.add_argument("--baseline", type=float, default=5.0, help="idle CPU sample s (5)")
    p.add_argument("--settle", type=float, default=60.0)
    p.add_argument("--plain-evm-node-auth", action="store_true",
                   help="keep the EVM TLS proxy in the plain mode (gRPC part only)")  # fmt: skip
    p.add_argument("--no-instructions", action="store_true",
                   help="skip bench/instructions.py at the end")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    a = p.parse_args(argv)
    if a.pairs < 1 or a.transfers < 1 or a.rate <= 0:
        p.error("need --pairs >= 1, --transfers >= 1 and a positive --rate")
    outdir = HERE.parent / ".run" / "security-overhead" / time.strftime("run-%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, dict[str, Any] | None]] = []
    for pair in range(a.pairs):
        for mode in MODES:
            result = run_once(mode, 2 * pair + MODES.index(mode), a, outdir)
            runs.append((mode, run_numbers(result) if result else None))
    ok = {m: [r for mode, r in runs if mode == m and r is not None] for m in MODES}
    if not ok["secure"] or not ok["plain"]:
        print("no successful run in one of the modes; see the logs in", outdir)
        return 1
    modes = {m: aggregate(ok[m]) for m in MODES}
    machine = machine_note()
    report(machine, modes, runs)
    instructions: dict[str, Any] | None = None
    if not a.no_instructions:
        path = outdir / "instructions.json"
        cpu = f"{modes['secure']['daemons_cpu_ms']:.3f}"
        print()
        subprocess.run(
            [
                sys.executable,
                str(HERE / "instructions.py"),
                "--bridge-cpu-ms",
                cpu,
                "--json",
                str(path),
            ],
            check=False,
            env=ENV,
        )
        if path.exists():
            instructions = json.loads(path.read_text())
    if a.json is not None:
        ratios = {
            k: modes["secure"][k] / modes["plain"][k]
            for _, k in ROWS
            if k is not None and modes["plain"][k]
        }
        payload = {
            "machine": machine,
            "config": vars(a) | {"json": str(a.json)},
            "modes": {m: mode_args(m, a.plain_evm_node_auth) for m in MODES},
            "summary": modes,
            "ratios_secure_over_plain": ratios,
            "runs": [
                {"mode": m, "ok": r is not None}
                | (
                    {k: v for k, v in r.items() if k not in ("latencies", "submit_rpc")}
                    if r
                    else {}
                )
                for m, r in runs
            ],
            "instructions": instructions,
            "logs": str(outdir),
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results written to {a.json}")
    return 0 if all(r is not None for _, r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
