"""``bridge supply get|watch|verify|register|release``: the supply feed from a terminal.

``watch`` and ``verify`` check every record against the committee in the public network
file (signatures, hash chain, identity) and say what failed. Exit codes: 0 verified and
balanced; 1 a record failed verification or the server refused; 3 every record verified
but some show a discrepancy (units created or destroyed outside the bridge); 4 the feed is
stale: with ``--max-age``, a security's latest record is older than that, or no record
arrived at all (``get`` checks the latest records once; ``watch`` prints a STALE line
whenever an alarm is raised, and with ``--fail-on-stale`` stops at the first). Every
security of the network file is expected unless ``--expect`` (or ``get --security``) names
the ones to watch, so a security the feed leaves out raises the alarm too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bridge.cli import credentials
from bridge.config import load_network
from bridge.domain.committee import EpochWindow
from bridge.domain.supply import Attestation
from bridge.keys.loader import add_key_arguments, signer_from_arguments
from bridge.rpc.roles import RELAYER, Role
from bridge.supply_client import (
    EpochSource,
    FeedStale,
    SupplyFeed,
    SupplyOperator,
    Verdict,
    follow_epoch,
    relayer_epochs,
    staleness,
    verifier_for,
    watch_feed,
)

EXIT_OK, EXIT_FAILED, EXIT_DISCREPANCY, EXIT_STALE = 0, 1, 3, 4


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``supply`` command group."""
    sp = top.add_parser("supply", help="the depository's supply feed").add_subparsers(
        dest="cmd", required=True
    )
    g = sp.add_parser("get", help="latest record of one security, or of all")
    g.add_argument("--security", default="")
    g.add_argument("--network", type=Path, help="verify against this network file's committee")
    g.add_argument(
        "--max-age", type=float, default=None, help="seconds; older latest records exit 4"
    )
    g.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="ISIN",
        help="with --max-age: alarm if no record (default: every security of --network)",
    )
    g.add_argument(
        "--confirm-relayer",
        default="",
        metavar="LEDGER=HOST:PORT",
        help="confirm every new committee epoch against this relayer's GetCommittees (a"
        " source other than the coordinator; review finding 4)",
    )
    w = sp.add_parser("watch", help="follow the feed, verifying every record")
    w.add_argument("--network", type=Path, required=True)
    w.add_argument("--from", dest="start", type=int, default=1, help="feed position")
    w.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    w.add_argument(
        "--max-age",
        type=float,
        default=None,
        help="seconds: alarm (STALE, exit 4) when a security's latest record is older,"
        " or no record arrives",
    )
    w.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="ISIN",
        help="alarm if never seen (default: every security of --network)",
    )
    w.add_argument("--fail-on-stale", action="store_true", help="stop at the first alarm")
    w.add_argument(
        "--confirm-relayer",
        default="",
        metavar="LEDGER=HOST:PORT",
        help="confirm every new committee epoch against this relayer's GetCommittees (a"
        " source other than the coordinator; review finding 4)",
    )
    v = sp.add_parser("verify", help="verify the whole feed up to now, from the first record")
    v.add_argument("--network", type=Path, required=True)
    r = sp.add_parser("register", help="operator: register the units issued per ledger")
    add_key_arguments(r)
    r.add_argument("--security", required=True)
    r.add_argument(
        "--units", action="append", required=True, metavar="LEDGER=N", help="repeat per ledger"
    )
    r.add_argument("--note", default="")
    rel = sp.add_parser("release", help="operator: release a discrepancy hold")
    add_key_arguments(rel)
    rel.add_argument("--security", required=True)
    rel.add_argument("--hold", type=int, required=True, help="record sequence that raised it")
    rel.add_argument("--note", default="")


def describe(v: Verdict) -> str:
    """One verdict in words: a summary line, then failures, discrepancies and alerts."""
    a = v.attestation
    r = a.signed.record
    at = datetime.fromtimestamp(r.produced_at_ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    cut = " ".join(f"{x.ledger}@{x.height}" for x in r.readings)
    status = "VERIFIED" if v.ok else "FAILED"
    free = sum(x.free for x in r.readings)
    out = (
        f"#{a.feed_sequence:<6} {r.security}#{r.sequence:<5} {at} {status:<8}"
        f" free={free} in_transit={r.in_transit} registered={sum(u for _, u in r.registered)}"
        f" [{cut}]"
    )
    out += "".join(f"\n    FAILED: {f}" for f in v.failures)
    out += "".join(f"\n    DISCREPANCY: {d}" for d in v.discrepancies)
    out += "".join(f"\n    alert: {x}" for x in a.alerts)
    if a.held:
        out += f"\n    HELD: {a.hold_reason}"
    return out


def _as_json(v: Verdict) -> str:
    a = v.attestation
    r = a.signed.record
    return json.dumps(
        {
            "feed_sequence": a.feed_sequence,
            "record": json.loads(r.canonical()),
            "digest": "0x" + r.digest.hex(),
            "verified": v.ok,
            "failures": list(v.failures),
            "discrepancies": list(v.discrepancies),
            "alerts": list(a.alerts),
            "held": a.held,
            "hold_reason": a.hold_reason,
        },
        sort_keys=True,
    )


def _print(v: Verdict, as_json: bool) -> None:
    print(_as_json(v) if as_json else describe(v))
    sys.stdout.flush()


def _print_alarm(alarm: FeedStale, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "alarm": "stale",
                    "security": alarm.security,
                    "last_sequence": alarm.last_sequence,
                    "age_s": round(alarm.age_s, 3),
                    "max_age_s": alarm.max_age_s,
                    "detail": alarm.describe(),
                },
                sort_keys=True,
            )
        )
    else:
        print(f"STALE: {alarm.describe()}")
    sys.stdout.flush()


def _exit_code(verdicts: list[Verdict]) -> int:
    if any(not v.ok for v in verdicts):
        return EXIT_FAILED
    return EXIT_DISCREPANCY if any(v.discrepancies for v in verdicts) else EXIT_OK


def expected_securities(network: Path, security: str, expect: Sequence[str]) -> tuple[str, ...]:
    """The securities whose missing or old latest record raises the staleness alarm:
    ``security`` when one is asked for, else the ``--expect`` list, else every security of
    the network file.

    SECURITY: the default is the whole network file, so a feed (or a depository's
    configuration) that leaves a security out cannot silence the alarm for it.
    """
    if security:
        return (security, *(x for x in expect if x != security))
    if expect:
        return tuple(dict.fromkeys(expect))
    return tuple(load_network(network).securities)


def _confirm(a: argparse.Namespace) -> EpochSource | None:
    """``--confirm-relayer LEDGER=HOST:PORT``: that relayer's epochs, read with the
    depository's certificate (role ``depository`` may call ``GetCommittees``)."""
    spec = getattr(a, "confirm_relayer", "")
    if not spec:
        return None
    ledger, sep, target = spec.partition("=")
    if not sep or not ledger or not target:
        raise ValueError(f"--confirm-relayer {spec!r}: expected LEDGER=HOST:PORT")
    identity = credentials.identity(a, Role(RELAYER, ledger))

    async def read() -> tuple[EpochWindow, ...]:
        return await relayer_epochs(target, identity)

    return read


async def _get(a: argparse.Namespace) -> int:
    if a.max_age is not None and a.network is None:
        raise ValueError("--max-age needs --network: only verified records count as fresh")
    feed = SupplyFeed(a.coordinator, a.timeout, credentials.identity(a))
    try:
        found: list[Attestation] = await feed.latest(a.security)
        if a.network is None:
            verdicts = [Verdict(x, ("not verified: pass --network",), ()) for x in found]
        else:
            network = load_network(a.network)
            verdicts = []
            for x in found:
                # A record of a later epoch: the chain from the network file's committee.
                verifier = verifier_for(network, from_genesis=False)
                await follow_epoch(feed, verifier, x, _confirm(a))
                verdicts.append(verifier.check(x))
    finally:
        await feed.close()
    for v in verdicts:
        _print(v, a.json)
    code = _exit_code(verdicts) if a.network else EXIT_OK
    if a.max_age is not None and code == EXIT_OK:
        # Only verified records count as fresh (--max-age requires --network).
        latest = {v.attestation.signed.record.security: v.attestation.signed.record
                  for v in verdicts if v.ok}  # fmt: skip
        expected = expected_securities(a.network, a.security, a.expect)
        alarms = staleness(latest, a.max_age, time.time(), 0.0, expected)
        for alarm in alarms:
            _print_alarm(alarm, a.json)
        if alarms:
            return EXIT_STALE
    return code


async def _watch(a: argparse.Namespace) -> int:
    verifier = verifier_for(
        load_network(a.network),
        from_genesis=a.start <= 1,
        max_age=a.max_age,
        expected=expected_securities(a.network, "", a.expect),
    )
    seen: list[Verdict] = []
    stale = False
    # ---- active/passive coordinators (ADR 0017): every address, the stream fails over.
    targets = getattr(a, "coordinators", None) or a.coordinator
    async for v in watch_feed(
        targets, verifier, a.start, identity=credentials.identity(a), confirm=_confirm(a)
    ):
        if isinstance(v, FeedStale):
            _print_alarm(v, a.json)
            stale = True
            if a.fail_on_stale:
                break
            continue
        _print(v, a.json)
        seen.append(v)
        if a.count and len(seen) >= a.count:
            break
    code = _exit_code(seen)
    return EXIT_STALE if stale and code == EXIT_OK else code


async def _verify(a: argparse.Namespace) -> int:
    verifier = verifier_for(load_network(a.network))
    feed = SupplyFeed(a.coordinator, a.timeout, credentials.identity(a))
    verdicts: list[Verdict] = []
    try:
        latest = await feed.latest()
        end = max((x.feed_sequence for x in latest), default=0)
        if end:
            async for att in feed.stream("", 1):
                await follow_epoch(feed, verifier, att, _confirm(a))
                v = verifier.check(att)
                verdicts.append(v)
                if not v.ok or v.discrepancies or a.json:
                    _print(v, a.json)
                if att.feed_sequence >= end:
                    break
    finally:
        await feed.close()
    bad = sum(1 for v in verdicts if not v.ok)
    off = sum(1 for v in verdicts if v.discrepancies)
    if not a.json:
        print(
            f"{len(verdicts)} records of {len(verifier.last)} securities checked:"
            f" {bad} failed verification, {off} show a discrepancy"
        )
    return _exit_code(verdicts)


def _parse_units(items: list[str]) -> Mapping[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, units = item.partition("=")
        if not sep or not name or not units.isdigit():
            raise ValueError(f"--units takes LEDGER=N with N a whole number, got {item!r}")
        if name in out:
            raise ValueError(f"ledger {name} given twice")
        out[name] = int(units)
    return out


def _register(a: argparse.Namespace) -> int:
    totals = _parse_units(a.units)
    op = SupplyOperator(a.coordinator, signer_from_arguments(a), a.timeout, credentials.identity(a))
    try:
        reg = op.register(a.security, totals, a.note)
    finally:
        op.close()
    print(f"registered {reg.security} version {reg.version}: total {reg.total}")
    return EXIT_OK


def _release(a: argparse.Namespace) -> int:
    op = SupplyOperator(a.coordinator, signer_from_arguments(a), a.timeout, credentials.identity(a))
    try:
        op.release(a.security, a.hold, a.note)
    finally:
        op.close()
    print(f"hold on {a.security} (raised by record #{a.hold}) released")
    return EXIT_OK


def run(a: argparse.Namespace) -> int:
    """Run one ``supply`` command; returns the exit code."""
    if a.cmd == "get":
        return asyncio.run(_get(a))
    if a.cmd == "watch":
        try:
            return asyncio.run(_watch(a))
        except KeyboardInterrupt:
            return EXIT_OK
    if a.cmd == "verify":
        return asyncio.run(_verify(a))
    if a.cmd == "register":
        return _register(a)
    return _release(a)
