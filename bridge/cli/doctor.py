"""``bridge doctor``: check a live deployment against the network file.

Prints one row per check (component, check, status OK/WARN/FAIL, detail), or ``--json``.
Exit code 0 when every check is OK, 1 when some WARN, 2 when some FAIL (2 also for a usage
error, as for every ``bridge`` command). The caller's certificate must hold the
bridge-operator or depository role (``StatusService.GetStatus``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bridge.cli import credentials
from bridge.config import load_network
from bridge.core.digests import PROTOCOL_VERSION
from bridge.doctor.checks import evaluate, member_component
from bridge.doctor.collect import collect
from bridge.doctor.model import Report, Thresholds
from bridge.doctor.status import build_version
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, parse_evm_address
from bridge.rpc.roles import Role
from bridge.rpc.tls import ClientIdentity


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``doctor`` command."""
    d = top.add_parser("doctor", help="check a live deployment against the network file")
    d.add_argument("--network", type=Path, required=True, help="the network file (network.toml)")
    d.add_argument(
        "--relayer",
        action="append",
        default=[],
        metavar="LEDGER=HOST:PORT",
        help="a relayer's endpoint (default: as the coordinator dials it)",
    )
    d.add_argument(
        "--verifier",
        action="append",
        default=[],
        metavar="0xMEMBER=HOST:PORT",
        help="a member's endpoint (default: as the coordinator dials it)",
    )
    t = Thresholds()
    d.add_argument("--max-lag", type=int, default=t.max_lag_blocks, help="blocks (%(default)s)")
    d.add_argument(
        "--min-gas-wei", type=int, default=t.min_gas_balance, help="EVM relayer balance floor"
    )
    d.add_argument(
        "--max-clock-skew", type=float, default=t.max_clock_skew, help="seconds (%(default)s)"
    )
    d.add_argument(
        "--max-feed-age", type=float, default=t.max_feed_age, help="seconds (%(default)s)"
    )
    d.add_argument(
        "--call-timeout", type=float, default=10.0, help="per component, seconds (%(default)s)"
    )
    d.add_argument("--json", dest="doctor_json", action="store_true", help="JSON output")


def _overrides(a: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in a.relayer:
        ledger, sep, target = text.partition("=")
        if not sep or not target:
            raise InvalidInput(f"--relayer {text!r}: expected LEDGER=HOST:PORT")
        out[f"relayer:{LedgerId(ledger).name}"] = target
    for text in a.verifier:
        member, sep, target = text.partition("=")
        if not sep or not target:
            raise InvalidInput(f"--verifier {text!r}: expected 0xMEMBER=HOST:PORT")
        out[member_component(parse_evm_address(member))] = target
    return out


MAX_CELL = 400
"""Characters of one cell shown in the table (details carry components' own text)."""


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences a compromised
    component could send in its status) become ``?``, and at most :data:`MAX_CELL` are kept."""
    # SECURITY: details quote what components reported; never let them drive the terminal.
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= MAX_CELL else clean[: MAX_CELL - 1] + "…"


def render_table(report: Report) -> str:
    """The report as aligned text columns, one row per check, and a summary line."""
    rows = [("COMPONENT", "CHECK", "STATUS", "DETAIL")] + [
        (printable(r.component), printable(r.check), r.level.name, printable(r.detail))
        for r in report.results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{c:<{widths[0]}}  {k:<{widths[1]}}  {s:<{widths[2]}}  {d}".rstrip() for c, k, s, d in rows
    ]
    counts = {level: 0 for level in ("OK", "WARN", "FAIL")}
    for r in report.results:
        counts[r.level.name] += 1
    lines.append(
        f"{report.level.name}: {counts['OK']} ok, {counts['WARN']} warn, {counts['FAIL']} fail"
    )
    return "\n".join(lines)


def render_json(report: Report) -> str:
    """The report as one JSON object: ``status``, ``exit_code`` and ``checks``."""
    return json.dumps(
        {
            "status": report.level.name,
            "exit_code": report.exit_code,
            "checks": [
                {
                    "component": r.component,
                    "check": r.check,
                    "status": r.level.name,
                    "detail": r.detail,
                }
                for r in report.results
            ],
        },
        sort_keys=True,
    )


def run(a: argparse.Namespace) -> int:
    """Run the doctor; returns the report's exit code."""
    network = load_network(a.network)
    thresholds = Thresholds(
        max_lag_blocks=a.max_lag,
        min_gas_balance=a.min_gas_wei,
        max_clock_skew=a.max_clock_skew,
        max_feed_age=a.max_feed_age,
    )
    overrides = _overrides(a)

    def identity_for(role: Role) -> ClientIdentity | None:
        return credentials.identity(a, role)

    readings = collect(network, a.coordinator, identity_for, overrides, a.call_timeout)
    report = evaluate(network, readings, build_version(), PROTOCOL_VERSION, thresholds)
    print(render_json(report) if a.json or a.doctor_json else render_table(report))
    return report.exit_code
