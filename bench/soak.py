"""Soak: many transfers in both directions while components are killed and ledgers stall.

Starts its own LocalSystem (two anvil ledgers, with ``--fabric`` also a native Fabric
network, 4 verifiers with t = 3, a relayer per ledger, the coordinator) under
``.run/soak/``; offers ``--transfers`` transfers at ``--rate`` per second over every lane
in both directions (about one in ten to an ineligible recipient, which must abort); while
they run, a seeded scheduler SIGKILLs and restarts the coordinator, relayers and verifiers
(``--postgres --coordinators 3``: three active/passive coordinators on a PostgreSQL cluster
it starts, and the scheduler SIGKILLs, SIGSTOPs or cuts from the database the leader),
stalls EVM ledgers (no blocks) and takes a Fabric ledger's gateway peer, orderer or chaincode
server down (SIGKILL, then a restart on its data) for a while. The same schedule carries
governance (``bridge/devnet/chaos.py`` ``GovernancePlan``; ``--no-governance`` turns it
off): the depository halts the security on every ledger and, a few faults later, releases
it; then the bridge operator rotates the committee to epoch 2, removing one member and
adding a spare one (both through the real ``bridge`` CLI). Afterwards it checks, and
prints as a table: every transfer terminal, each holder's balances exactly as the outcomes
imply, supply conserved, no escrow left, one transfer per idempotency key, the halt
released and epoch 2 in force everywhere, and every supply record produced meanwhile
verified from the genesis committee through the certified rotation chain with the identity
holding (no discrepancy). Exit code 1 on a violation.

    .venv/bin/python bench/soak.py --transfers 1000 --rate 4 --json .run/soak/result.json

With ``--batch N`` (issue 14) the transfers go through ``SubmitTransfers``: consecutive
transfers from one source ledger, N at a time, each batch sent when its last transfer is
due and replayed unchanged (same batch id and signed items) on UNAVAILABLE or while items
are RETRYABLE, so the invariants also cover the batch path under the same faults; a refused
item is a violation (its transfer is missing).

    .venv/bin/python bench/soak.py --transfers 300 --batch 20

With ``--step-batching N`` (issue 14 item 6; the meaning of ``bench/transfers.py``'s flag)
the coordinator batches its steps (``[batching] enabled = true, max_items = N``): LOCK,
PREPARE, CERTIFY and APPLY of many transfers in one ledger transaction under one committee
signature over a Merkle root, so the same invariants cover batched steps under the same
faults. The table and the JSON then say how many step transactions the transfers recorded,
how many distinct ledger transactions carried them, the relayers' batched transactions
("batch applied" log lines, items per batch) and the members' batch signatures ("claims
signed" log lines, the most over members).

    .venv/bin/python bench/soak.py --transfers 300 --batch 20 --step-batching 20

Bounded: every wait has a limit; everything is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bridge.devnet.anvil import DevAccount
from bridge.devnet.chaos import ChaosScheduler, GovernancePlan
from bridge.devnet.postgres import start_cluster
from bridge.devnet.processes import REPO_ROOT, exit_on_sigterm
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.supply_client import audit_feed, settled_position
from bridge.v1 import operator_pb2, operator_pb2_grpc, transfer_pb2_grpc
from bridge.v1 import transfer_pb2 as S

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling transfers_setup
from transfers_batch import SOURCE_STEPS
from transfers_setup import BUILT_IN, ledger_layout

from bridge.devnet.starters import starter_names

UNITS = 1_000_000
TERMINAL = {S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED}


@dataclass(frozen=True)
class Move:
    """One planned transfer."""

    key: str
    holder: str
    recipient: str
    src: str
    dst: str
    amount: int


def plan_moves(
    n: int, holders: list[DevAccount], outsider: str, seed: int, ledgers: list[str]
) -> list[Move]:
    """Random lanes, holders and amounts (never enough to overdraw anyone)."""
    rng = random.Random(seed)
    moves = []
    for _ in range(n):
        h = rng.choice(holders).address.lower()
        src, dst = rng.sample(ledgers, 2)
        to = outsider if rng.random() < 0.1 else h
        moves.append(Move(str(uuid.uuid4()), h, to, src, dst, rng.randint(1, 10)))
    return moves


# ---- batch mode (issue 14, batchfix)
def plan_batches(moves: list[Move], size: int) -> list[tuple[int, list[Move]]]:
    """Consecutive moves from one source ledger, ``size`` at a time: (index of the move
    that completes the batch, so it is sent when that one is due; the moves)."""
    batches: list[tuple[int, list[Move]]] = []
    open_: dict[str, list[Move]] = {}
    for i, m in enumerate(moves):
        group = open_.setdefault(m.src, [])
        group.append(m)
        if len(group) == size:
            batches.append((i, open_.pop(m.src)))
    last = len(moves) - 1
    batches += [(last, group) for group in open_.values() if group]
    return batches


STOP = threading.Event()
"""Set on Ctrl-C or SIGTERM (``exit_on_sigterm``): the submit workers stop replaying and
return, so the pool does not hold the exit until every batch's limit has passed."""


def submit_batch(system: LocalSystem, batch: list[Move], limit_s: float) -> list[str]:
    """Submit ``batch`` through SubmitTransfers as its source ledger's brokerage, replaying
    the same request on UNAVAILABLE / DEADLINE_EXCEEDED (a killed or deposed coordinator),
    RESOURCE_EXHAUSTED (too many of the ledger's batches running) and while items are
    RETRYABLE; returns the problems (refused items), empty if none."""
    items = [
        system.brokerage.instruct(
            S.SubmitTransferRequest(
                idempotency_key=m.key, security_id=DEMO_ISIN, source_ledger=m.src,
                target_ledger=m.dst, sender=m.holder, recipient=m.recipient,
                amount=str(m.amount),
            )
        )
        for m in batch
    ]  # fmt: skip
    request = S.SubmitTransfersRequest(
        batch_id=f"soak-{uuid.uuid4()}", source_ledger=batch[0].src, items=items
    )
    give_up = time.monotonic() + limit_s
    while True:
        try:
            with system.channel(f"brokerage:{request.source_ledger}") as ch:
                stub = transfer_pb2_grpc.TransferServiceStub(ch)
                response = stub.SubmitTransfers(request, timeout=60)
        except grpc.RpcError as exc:
            transient = (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,  # the ledger's running batches: wait
            )
            if exc.code() not in transient:
                return [f"batch {request.batch_id}: {exc.code().name} {exc.details()}"]
            if time.monotonic() > give_up:
                return [f"batch {request.batch_id} not accepted within {limit_s:.0f} s"]
            if STOP.wait(0.5):
                return [f"batch {request.batch_id}: the soak was stopped"]
            continue
        waiting = [r for r in response.results if r.outcome == S.BATCH_ITEM_OUTCOME_RETRYABLE]
        if waiting and time.monotonic() < give_up:
            if STOP.wait(1.0):
                return [f"batch {request.batch_id}: the soak was stopped"]
            continue
        return [
            f"item {r.idempotency_key}: {S.BatchItemOutcome.Name(r.outcome)}"
            f" {r.error.code} {r.error.reason} {r.error.message}"
            for r in response.results
            if r.outcome not in (S.BATCH_ITEM_OUTCOME_CREATED, S.BATCH_ITEM_OUTCOME_EXISTING)
        ]


def wait_terminal(system: LocalSystem, limit_s: float) -> dict[str, int]:
    """Poll ListTransfers until every transfer is terminal; idempotency key -> state."""
    give_up = time.monotonic() + limit_s
    while True:
        try:
            states: dict[str, int] = {t.idempotency_key: t.state for t in system.list_transfers()}
        except grpc.RpcError:
            states = {}
        if states and all(s in TERMINAL for s in states.values()):
            return states
        if time.monotonic() > give_up:
            open_ = sum(1 for s in states.values() if s not in TERMINAL)
            raise TimeoutError(f"{open_} transfers still open after {limit_s:.0f} s")
        time.sleep(1.0)


def check(
    system: LocalSystem, moves: list[Move], states: dict[str, int], holders: list[DevAccount],
    outsider: str, supply: int,
) -> list[str]:  # fmt: skip
    """Every invariant, as a list of violations (empty: all hold)."""
    bad: list[str] = []
    ledgers = system.all_ledgers
    expected = {(h.address.lower(), led): UNITS for h in holders for led in ledgers}
    for m in moves:
        state = states.get(m.key)
        if state is None:
            bad.append(f"transfer {m.key} missing")
        elif state == S.TRANSFER_STATE_COMMITTED:
            if m.recipient == outsider:
                bad.append(f"transfer {m.key} to an ineligible recipient committed")
            expected[(m.holder, m.src)] -= m.amount
            expected[(m.holder, m.dst)] += m.amount
    for (holder, led), units in expected.items():
        got = system.handle(led).balance(DEMO_ISIN, holder)
        if got != units:
            bad.append(f"{holder} on {led}: {got} units, outcomes imply {units}")
    for led in ledgers:
        if system.handle(led).balance(DEMO_ISIN, outsider):
            bad.append(f"the ineligible outsider holds units on {led}")
        if system.handle(led).escrowed(DEMO_ISIN):
            bad.append(f"escrow left on {led}")
    total = sum(system.handle(led).total_supply(DEMO_ISIN) for led in ledgers)
    if total != supply:
        bad.append(f"total supply {total} != {supply}")
    if len(states) != len(moves):
        bad.append(f"{len(states)} transfers for {len(moves)} idempotency keys")
    return bad


# ---- batched steps (issue 14 item 6)
def transactions_used(system: LocalSystem) -> tuple[int, int]:
    """(step transactions recorded over all transfers, distinct ledger transactions among
    them): with batched steps many transfers' steps share one transaction."""
    steps = 0
    distinct: set[str] = set()
    for t in system.list_transfers():
        for step, tx in t.transactions.items():
            ledger = t.source_ledger if step in SOURCE_STEPS else t.target_ledger
            steps += 1
            distinct.add(f"{ledger}:{tx}")
    return steps, len(distinct)


def _events(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``path`` whose event is ``event`` (others skipped)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            out.append(entry)
    return out


def batching_figures(system: LocalSystem) -> dict[str, Any]:
    """Batched ledger transactions per ledger (the relayers' "batch applied" lines that
    moved at least one item: count and items) and batch signatures (the members'
    "claims signed" lines, the most over members, since a certificate needs t of them)."""
    logs = system.workdir / "logs"
    txs: dict[str, int] = {}
    items: dict[str, int] = {}
    skipped_only = 0
    for led in system.all_ledgers:
        for e in _events(logs / f"relayer-{led}.log", "batch applied"):
            moved = int(e.get("applied", e.get("count", 0)) or 0)
            if not moved:
                skipped_only += 1  # every item already applied (a re-sent or re-driven batch)
                continue
            txs[led] = txs.get(led, 0) + 1
            items[led] = items.get(led, 0) + moved
    signed = [len(_events(path, "claims signed")) for path in sorted(logs.glob("verifier-*.log"))]
    return {
        "batched ledger transactions": sum(txs.values()),
        "batched items": sum(items.values()),
        "per ledger": {led: f"{txs[led]} tx, {items[led]} items" for led in sorted(txs)},
        "batch answers that moved nothing": skipped_only,
        "batch signing rounds (most over members)": max(signed, default=0),
    }


def governance_violations(system: LocalSystem, done: dict[str, float]) -> list[str]:
    """The halt was released and epoch 2 is in force on every ledger."""
    bad = [f"governance step {k} did not run" for k in ("halt", "release", "rotation")
           if k not in done]  # fmt: skip
    with system.channel("bridge-operator") as ch:
        rotation = operator_pb2_grpc.OperatorServiceStub(ch).GetRotation(
            operator_pb2.GetRotationRequest(next_epoch=2), timeout=30
        )
    for x in rotation.ledgers:
        if x.status not in ("active", "old-epoch-expired"):
            bad.append(f"epoch 2 on {x.ledger_id}: {x.status}")
    return bad


def main() -> int:
    """Run the soak; returns the exit code."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--transfers", type=int, default=200)
    p.add_argument("--rate", type=float, default=4.0, help="offered transfers per second")
    p.add_argument("--block-time", type=float, default=1.0)
    p.add_argument("--holders", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-stalls", action="store_true", help="only kill processes")
    p.add_argument(
        "--fabric", action="store_true", help="add a native Fabric ledger (lanes to/from it)"
    )
    p.add_argument(
        "--ledgers",
        default="",
        help="devnet ledgers, comma-separated: anvil, fabric or a devnet starter "
        f"({', '.join(starter_names())}); default anvil,anvil (plus fabric with --fabric)",
    )
    p.add_argument(
        "--no-governance",
        action="store_true",
        help="no halt/release and no committee rotation in the fault schedule",
    )
    p.add_argument("--halt-at", type=int, default=3, help="fault slot of the depository's halt")
    p.add_argument("--hold", type=int, default=3, help="fault slots the halt lasts")
    p.add_argument("--rotate-at", type=int, default=8, help="fault slot of the rotation")
    p.add_argument("--settle", type=float, default=600.0, help="limit for reaching terminal states")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="submit through SubmitTransfers, N transfers per batch (0: one by one)",
    )
    p.add_argument(
        "--step-batching",
        type=int,
        default=0,
        metavar="N",
        help="the coordinator batches its steps, up to N transfers per ledger transaction"
        " and committee signature ([batching]); 0: off (default, or env KSTB_DEVNET_BATCHING)",
    )
    # ---- PostgreSQL and active/passive coordinators (ADR 0013, ADR 0017)
    p.add_argument(
        "--postgres", action="store_true", help="the coordinators' store on a PostgreSQL cluster"
    )
    p.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="active/passive coordinators (needs --postgres); the schedule then kills, hangs"
        " and cuts from the database the LEADER instead of killing the coordinator",
    )
    args = p.parse_args()
    kinds = [k.strip() for k in args.ledgers.split(",") if k.strip()] or (
        ["anvil", "anvil"] + (["fabric"] if args.fabric else [])
    )
    if len(kinds) < 2 or any(k not in BUILT_IN and k not in starter_names() for k in kinds):
        p.error(f"--ledgers needs two or more of anvil, fabric, {', '.join(starter_names())}")
    layout = ledger_layout(kinds)
    if args.coordinators > 1 and not args.postgres:
        p.error("--coordinators above 1 needs --postgres")
    if not 0 <= args.batch <= 1000:
        p.error("--batch must be 0 (off) or 1 .. 1000 (the coordinator's max_batch_items)")
    if args.step_batching < 0:
        p.error("--step-batching must be 0 (off) or a positive max_items")
    exit_on_sigterm()
    workdir = REPO_ROOT / ".run" / "soak" / time.strftime("run-%Y%m%d-%H%M%S")
    cluster = start_cluster(workdir / "postgres") if args.postgres else None
    system = LocalSystem(
        workdir,
        block_time=args.block_time,
        transfer_ttl=600,
        ledger_names=[(n, 31001 + i) for i, (n, k) in enumerate(layout) if k == "anvil"],
        fabric_ledger_names=[n for n, k in layout if k == "fabric"],
        extra_ledgers=[(n, k) for n, k in layout if k not in BUILT_IN],
        spare_members=0 if args.no_governance else 1,
        store="postgres" if cluster is not None else "sqlite",
        postgres_server=cluster.url("postgres") if cluster is not None else "",
        coordinators=args.coordinators,
        database_proxies=args.coordinators > 1,
    )
    if args.step_batching:  # ---- batched steps (issue 14); else the env default
        system.batching = {"enabled": True, "max_items": args.step_batching}
    try:
        print(f"starting the system under {workdir} ...", flush=True)
        system.start()
        ledgers = system.all_ledgers
        first = ledgers[0]
        holders = [system.handle(first).make_holder(DEMO_ISIN, UNITS) for _ in range(args.holders)]
        for h in holders:
            for led in ledgers:
                if led == first:
                    continue
                system.handle(led).set_eligible(DEMO_ISIN, h.address)
                system.handle(led).issue(DEMO_ISIN, h.address, UNITS)
        outsider = DevAccount.generate().address.lower()
        supply = sum(system.handle(led).total_supply(DEMO_ISIN) for led in ledgers)
        target = system.coordinator_target
        depository = system.identity("depository")
        feed_start = asyncio.run(
            settled_position(target, DEMO_ISIN, time.time(), 120, identity=depository)
        )
        moves = plan_moves(args.transfers, holders, outsider, args.seed, ledgers)
        plan = None
        if not args.no_governance:
            plan = GovernancePlan(halt_at=args.halt_at, hold=args.hold, rotate_at=args.rotate_at)
        chaos = ChaosScheduler(
            system, seed=args.seed, stall_ledgers=not args.no_stalls, governance=plan
        )
        print(f"offering {len(moves)} transfers at {args.rate}/s with faults ...", flush=True)
        started = time.monotonic()
        chaos.start()
        batch_problems: list[str] = []
        pool = ThreadPoolExecutor(max_workers=16)
        try:
            futures = []
            batches = []
            for i, group in plan_batches(moves, args.batch) if args.batch else ():
                time.sleep(max(0.0, started + i / args.rate - time.monotonic()))
                batches.append(pool.submit(submit_batch, system, group, 300))
            for i, m in enumerate(moves if not args.batch else ()):
                time.sleep(max(0.0, started + i / args.rate - time.monotonic()))
                req = S.SubmitTransferRequest(
                    idempotency_key=m.key, security_id=DEMO_ISIN, source_ledger=m.src,
                    target_ledger=m.dst, sender=m.holder, recipient=m.recipient,
                    amount=str(m.amount),
                )  # fmt: skip
                futures.append(pool.submit(system.submit, req, 120))
            for f in futures:
                f.result()
            for b in batches:
                batch_problems += b.result()
        except BaseException:  # Ctrl-C or SIGTERM: stop the workers, then the system
            STOP.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        give_up = time.monotonic() + 300  # a short run: inject until the plan is done
        while not chaos.governance_done() and time.monotonic() < give_up:
            time.sleep(0.5)
        faults = chaos.stop()
        for name, proc in system.processes.items():
            if not proc.alive():
                system.start_process(name)
        states = wait_terminal(system, args.settle)
        recovered = time.monotonic() - faults.last_fault_at
        elapsed = time.monotonic() - started
        violations = check(system, moves, states, holders, outsider, supply)
        violations += batch_problems
        # The supply identity in every attestation produced under the faults.
        target = system.coordinator_target  # the leader now (several coordinators)
        asyncio.run(settled_position(target, DEMO_ISIN, time.time(), 120, identity=depository))
        assert system.committee is not None
        records, feed_problems = asyncio.run(
            audit_feed(
                target, system.committee, feed_start, DEMO_ISIN, limit_s=300, identity=depository
            )
        )
        violations += feed_problems
        violations += faults.governance_errors
        if plan is not None:
            violations += governance_violations(system, faults.governance)
        step_txs, distinct_txs = transactions_used(system)
        step_batching = dict(system.batching or {})
        batching = bool(step_batching.get("enabled", False))
        figures = batching_figures(system) if batching else {}
        outcomes = Counter(
            S.TransferState.Name(S.TransferState.ValueType(s)).removeprefix("TRANSFER_STATE_")
            for s in states.values()
        )
        rows: list[tuple[str, Any]] = [
            ("transfers", len(moves)),
            ("batches", len(plan_batches(moves, args.batch)) if args.batch else "off"),
            ("step batching", step_batching.get("max_items", "on") if batching else "off"),
            ("step transactions recorded", step_txs),
            ("  distinct ledger transactions", distinct_txs),
            *(
                row
                for k, v in figures.items()
                for row in (
                    [(f"  batched on {led}", x) for led, x in v.items()]
                    if isinstance(v, dict)
                    else [(f"  {k}", v)]
                )
            ),
            *((f"  {k.lower()}", v) for k, v in sorted(outcomes.items())),
            ("process kills", sum(faults.kills.values())),
            *((f"  {k}", v) for k, v in sorted(faults.kills.items())),
            ("ledger stalls and outages", sum(faults.stalls.values())),
            *((f"  {k}", v) for k, v in sorted(faults.stalls.items())),
            *(
                (f"max restart-to-listening, {k} (s)", f"{v:.1f}")
                for k, v in sorted(faults.restart_seconds.items())
            ),
            ("all terminal after the last fault (s)", f"{recovered:.1f}"),
            ("elapsed (s)", f"{elapsed:.1f}"),
            *(
                (f"{k}: applied everywhere after (s)", f"{v:.1f}")
                for k, v in faults.governance.items()
            ),
            ("supply records verified", records),
            ("invariants", "HOLD" if not violations else f"{len(violations)} VIOLATED"),
        ]
        width = max(len(k) for k, _ in rows)
        print()
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        for v in violations[:20]:
            print("  violation:", v)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps({k.strip(): v for k, v in rows} | {"violations": violations}, indent=2)
            )
        return 0 if not violations else 1
    finally:
        print(f"stopping (logs in {workdir / 'logs'}) ...", flush=True)
        system.stop()
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
