"""Batch mode of the transfer benchmark (issue 14, batchfix): ``--batch N``, the end-of-day
scenario and the throughput-vs-offered-load curve (``bench/transfers.py``).

- ``--batch N``: the planned transfers (same schedule, offered rate still in transfers/s)
  are grouped per source ledger, in order, N at a time; a group is sent through
  ``SubmitTransfers`` when its last transfer is due. Each batch is followed with one
  ``WatchBatch`` stream (at most :data:`WATCH_STREAMS` at once: the coordinator bounds a
  caller's streams); a transfer's state times are the coordinator's ``at`` stamps, so a
  stream opened late loses no precision.
- ``--scenario end-of-day``: every transfer is due at once (a netted batch), over the
  EVM<->EVM and EVM<->Fabric lanes; the report adds the time to settle all, ledger
  transactions and gas per transfer from the receipts, each EVM ledger's block gas use and
  what saturated first (:func:`saturation`).
- ``--curve``: a short sweep of offered loads on one running system, stopping at
  saturation (:func:`saturated_point`).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cost_fit import BRIDGE_PROCESSES
from transfers_feed import feed_lines
from transfers_load import request_for
from transfers_metrics import percentile
from transfers_setup import (
    LOAD_MARGIN,
    SUBMIT_TIMEOUT,
    TERMINAL,
    Lane,
    Options,
    TransferResult,
    TransferSpec,
    _say,
)

from bridge.cli.main import STATE_NAMES
from bridge.devnet.client import instructed
from bridge.devnet.evm_endpoint import EvmEndpointLedger
from bridge.devnet.system import LocalSystem
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

WATCH_STREAMS = 3
"""WatchBatch streams the benchmark holds at once (the coordinator's per-caller bound,
``max_batch_watches``, is 4 by default)."""
RETRY_LIMIT = 8
"""Replays of one batch (UNAVAILABLE, or items answered RETRYABLE) before giving up."""
SOURCE_STEPS = frozenset({"lock", "burn", "release"})
"""Transfer.transactions steps sent to the source ledger (the others go to the target)."""
GAS_FULL = 0.9
"""A block at least this full of gas counts as full."""
FULL_SHARE = 0.1
"""A ledger whose full blocks are at least this share of the window's blocks saturated."""
HOST_BUSY = 90.0
"""Host CPU busy share (% of all cores) above which the host counts as saturated."""
CURVE_KNEE = 0.8
"""A curve point whose sustained throughput is below this share of its offered load is the
saturation point: the sweep stops there."""


# -- planning (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSpec:
    """One planned SubmitTransfers: when (s after the start), from which ledger, what."""

    index: int
    at: float
    source: str
    items: tuple[TransferSpec, ...]


BATCH_BY = ("source", "lane")
"""How the client groups transfers into batches: per source ledger (a brokerage's batch
mixes its target ledgers), or per lane (source and target ledger)."""


def plan_batches(specs: Sequence[TransferSpec], size: int, by: str = "source") -> list[BatchSpec]:
    """Group ``specs`` per source ledger (``by="lane"``: per source and target ledger), in
    their order, ``size`` at a time (a group's last batch may be smaller); a batch is due
    when its last transfer is. Sorted by due time (then source, then target), every spec in
    exactly one batch."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    if by not in BATCH_BY:
        raise ValueError(f"batches are grouped by one of {', '.join(BATCH_BY)}")
    grouped: dict[tuple[str, str], list[TransferSpec]] = {}
    for s in specs:
        grouped.setdefault((s.source, s.target if by == "lane" else ""), []).append(s)
    groups = [
        (chunk[-1].at, key, tuple(chunk))
        for key, mine in grouped.items()
        for chunk in (mine[i : i + size] for i in range(0, len(mine), size))
    ]
    groups.sort(key=lambda g: (g[0], g[1]))
    return [BatchSpec(i, at, key[0], items) for i, (at, key, items) in enumerate(groups)]


def submit_slots(batches: Sequence[BatchSpec], by: str = "source") -> dict[tuple[str, str], int]:
    """SubmitTransfers calls the client keeps open at once per group of ``plan_batches``:
    SUBMITS_PER_LEDGER per source ledger (the coordinator's bound on a ledger's running
    batches), shared evenly by its lanes when batching per lane (at least one each), so a
    lane whose target is slow to admit cannot hold every call of its source."""
    keys = sorted({slot_key(b, by) for b in batches})
    lanes: dict[str, int] = {}
    for source, _ in keys:
        lanes[source] = lanes.get(source, 0) + 1
    return {k: max(1, SUBMITS_PER_LEDGER // lanes[k[0]]) for k in keys}


def slot_key(batch: BatchSpec, by: str = "source") -> tuple[str, str]:
    """The group a batch's SubmitTransfers call counts against (:func:`submit_slots`)."""
    return (batch.source, batch.items[0].target if by == "lane" else "")


def plan_end_of_day(
    n: int, lanes: Sequence[Lane], senders: Sequence[str], recipients: Sequence[str]
) -> list[TransferSpec]:
    """``n`` transfers all due at once (at 0), round-robin over ``lanes``, rotating
    holders (sender and recipient never the same), amounts 1..5."""
    if len(senders) < 2 or len(senders) != len(recipients):
        raise ValueError("need at least two holders")
    out = []
    for i in range(n):
        source, target = lanes[i % len(lanes)]
        h = (i // len(lanes)) % len(senders)
        out.append(
            TransferSpec(
                i, 0.0, source, target, senders[h], recipients[(h + 1) % len(senders)], 1 + i % 5
            )
        )
    return out


def curve_rates(low: float, high: float, points: int) -> list[float]:
    """``points`` offered loads from ``low`` to ``high`` (transfers/s), geometric."""
    if points < 1 or low <= 0 or high < low:
        raise ValueError("need points >= 1 and 0 < low <= high")
    if points == 1:
        return [low]
    ratio = (high / low) ** (1 / (points - 1))
    return [round(low * ratio**i, 3) for i in range(points)]


def saturated_point(offered: float, sustained: float) -> bool:
    """True when the bridge no longer keeps up: sustained below CURVE_KNEE of offered."""
    return sustained < CURVE_KNEE * offered


def settle_stats(results: Sequence[TransferResult]) -> dict[str, Any]:
    """Time to settle all (from the first transfer being due to the last terminal state;
    coordinator stamps), sustained transfers/s over that span, how fast the API accepted
    them (from the first due to the last submit call answered), and latency percentiles
    of the terminal ones: from their submit call, and from when they were due (in batch
    mode that includes waiting for the batch to fill)."""
    done = [r for r in results if r.final_state and r.final_state in r.state_at]
    if not done or not results:
        return {"settled": 0, "time_to_settle_s": None, "sustained_per_s": None,
                "accepted_per_s": None}  # fmt: skip
    first_due = min(r.spec.at for r in results)
    ends = [r.submit_start + r.state_at[r.final_state] for r in done]
    span = max(ends) - first_due
    answered = [r.submit_start + r.submit_rpc for r in results if r.submit_rpc is not None]
    accept_span = max(answered, default=first_due) - first_due
    latency = [r.state_at[r.final_state] for r in done]
    from_due = [r.submit_start - r.spec.at + r.state_at[r.final_state] for r in done]
    return {
        "settled": len(done),
        "committed": sum(r.final_state == "COMMITTED" for r in done),
        "time_to_settle_s": span,
        "sustained_per_s": len(done) / span if span > 0 else None,
        "accepted_per_s": len(answered) / accept_span if accept_span > 0 else None,
        "latency_s": {f"p{q}": percentile(latency, q) for q in (50, 95, 99)},
        "latency_from_due_s": {f"p{q}": percentile(from_due, q) for q in (50, 95, 99)},
    }


def settle_by_lane(results: Sequence[TransferResult]) -> dict[str, dict[str, Any]]:
    """:func:`settle_stats` of each lane's transfers (``source->target``), in lane order of
    first appearance: with every transfer due at once, each lane's time to settle shows
    whether it ran at its own pace or waited for another's."""
    lanes: dict[str, list[TransferResult]] = {}
    for r in results:
        lanes.setdefault(f"{r.spec.source}->{r.spec.target}", []).append(r)
    return {lane: settle_stats(mine) for lane, mine in lanes.items()}


def distinct_transactions(recorded: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (step, transaction id) pairs the transfers recorded, each transaction once (in
    first-recorded order): every item of a batched step records the batch's one
    transaction, whose receipt must be counted once, not once per item."""
    return list(dict.fromkeys(recorded))


def gas_summary(
    receipts: dict[str, list[dict[str, int]]], transfers: int, batches: int
) -> dict[str, Any]:
    """Per EVM ledger: transactions and gas, per transfer and per batch (from receipts:
    ``gasUsed`` and ``step``, one per distinct transaction, :func:`distinct_transactions`);
    ``transfers`` counts the terminal transfers. ``gas_per_step_p50`` is per transaction:
    a batched step's transaction carries many items."""
    out: dict[str, Any] = {}
    for ledger, rows in receipts.items():
        gas = sum(r["gasUsed"] for r in rows)
        steps: dict[str, list[int]] = {}
        for r in rows:
            steps.setdefault(str(r.get("step", "?")), []).append(r["gasUsed"])
        out[ledger] = {
            "transactions": len(rows),
            "gas": gas,
            "transactions_per_transfer": len(rows) / transfers if transfers else None,
            "gas_per_transfer": gas / transfers if transfers else None,
            "gas_per_batch": gas / batches if batches else None,
            "gas_per_step_p50": {
                k: percentile([float(v) for v in vs], 50) for k, vs in steps.items()
            },
        }
    return out


def block_use(blocks: Sequence[dict[str, int]]) -> dict[str, Any]:
    """Gas use of a ledger's blocks in the window: mean and max share of the gas limit, the
    share of blocks at least GAS_FULL full, the most transactions in one block, and the
    transactions and gas of all of them (every transaction the ledger included, also steps
    whose id the coordinator did not record because a retry found them applied)."""
    if not blocks:
        return {"blocks": 0, "mean_gas_share": 0.0, "max_gas_share": 0.0, "full_share": 0.0,
                "max_transactions": 0, "transactions": 0, "gas": 0}  # fmt: skip
    shares = [b["gasUsed"] / b["gasLimit"] for b in blocks if b["gasLimit"]]
    return {
        "blocks": len(blocks),
        "transactions": sum(b.get("transactions", 0) for b in blocks),
        "gas": sum(b["gasUsed"] for b in blocks),
        "mean_gas_share": sum(shares) / len(shares) if shares else 0.0,
        "max_gas_share": max(shares, default=0.0),
        "full_share": sum(s >= GAS_FULL for s in shares) / len(blocks),
        "max_transactions": max(b.get("transactions", 0) for b in blocks),
    }


def saturation(cpu: dict[str, Any] | None, blocks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What saturated first, and why (the rule, in order):

    1. a ledger whose blocks were at least GAS_FULL full of gas in at least FULL_SHARE of
       the window's blocks: that ledger's block gas;
    2. else the host's CPU when it was at least HOST_BUSY % busy over the window (all
       cores): the process with the highest CPU share is named as the one that saturated
       it (a bridge process means the bridge is the bottleneck), unless processes outside
       the run used more CPU than all of the run's together: then the host was taken by
       them (a contended host) and the run's top process is only named;
    3. else nothing saturated (offered load below capacity); the top process is still named.
    """
    full = sorted(
        ((u["full_share"], name) for name, u in blocks.items() if u["full_share"] >= FULL_SHARE),
        reverse=True,
    )
    top_name, top_pct = None, 0.0
    if cpu and cpu.get("processes"):
        top_name, row = max(cpu["processes"].items(), key=lambda kv: kv[1]["avg_pct"])
        top_pct = float(row["avg_pct"])
    out: dict[str, Any] = {"top_process": top_name, "top_process_avg_pct": top_pct}
    if full:
        share, name = full[0]
        return out | {
            "what": f"ledger {name} block gas",
            "why": f"{share:.0%} of its blocks were >= {GAS_FULL:.0%} full of gas",
        }
    busy = float(cpu["host_busy_pct"]) if cpu else 0.0
    ours = sum(float(r["cpu_s"]) for r in cpu["processes"].values()) if cpu else 0.0
    others = float(cpu.get("other_processes_cpu_s", 0.0)) if cpu else 0.0
    if busy >= HOST_BUSY and top_name is not None and others > ours:
        return out | {
            "what": "host CPU, taken mostly by other processes (contended host)",
            "why": f"host {busy:.0f}% busy; processes outside the run used {others:.0f}"
            f" CPU-s, the run's {ours:.0f}; of the run's, {top_name} used the most"
            f" ({top_pct:.0f}% of one core)",
        }
    if busy >= HOST_BUSY and top_name is not None:
        return out | {
            "what": f"host CPU, led by {top_name}",
            "why": f"host {busy:.0f}% busy over the window; {top_name} used"
            f" {top_pct:.0f}% of one core, the most of any process",
        }
    return out | {
        "what": "nothing",
        "why": f"host {busy:.0f}% busy, no ledger's blocks full; top process"
        f" {top_name} at {top_pct:.0f}% of one core",
    }


def bridge_cpu_ms(cpu: dict[str, Any] | None, transfers: int) -> dict[str, float]:
    """CPU-ms per terminal transfer of every bridge process (coordinator, relayers,
    verifiers and, with ``--store postgres``, the coordinator's database server; not
    ledgers, not the benchmark client) and their sum under ``total``."""
    if not cpu or not transfers:
        return {}
    rows: dict[str, float] = {}
    for name, r in cpu.get("processes", {}).items():
        if name.startswith(BRIDGE_PROCESSES):
            key = "postgres" if name.startswith("postgres") else name  # its processes summed
            rows[key] = rows.get(key, 0.0) + r["cpu_s"] / transfers * 1000
    return rows | {"total": sum(rows.values())}


def one_core_at(cpu_ms: dict[str, float]) -> dict[str, float]:
    """Per bridge process of :func:`bridge_cpu_ms` (not the database server, whose work
    spreads over many processes): the transfers/s at which it would fill one core of its
    own, ``1000 / CPU-ms per transfer``, linear in its load, lowest first. Where each
    process runs on its own machine, the lowest bounds the deployment's rate (ADR 0026).
    The work a process does whatever the load is charged to each transfer here, so this is
    a floor; ``bench/cost_fit.py`` separates it over runs at several rates."""
    rows = {k: 1000 / v for k, v in cpu_ms.items() if k not in ("total", "postgres") and v > 0}
    return dict(sorted(rows.items(), key=lambda kv: kv[1]))


# -- the batch load --------------------------------------------------------------------------
SUBMITS_PER_LEDGER = 8
"""SubmitTransfers calls one source ledger's client has open at once: the coordinator's
default ``max_running_batches`` (a batch runs on after its call; more calls are refused
RESOURCE_EXHAUSTED)."""
RETRYABLE_OUTCOME = transfer_pb2.BATCH_ITEM_OUTCOME_RETRYABLE
REFUSED_OUTCOME = transfer_pb2.BATCH_ITEM_OUTCOME_REFUSED


async def submit_batch(
    system: LocalSystem, request: transfer_pb2.SubmitTransfersRequest, limit_s: float
) -> tuple[transfer_pb2.SubmitTransfersResponse, int]:
    """SubmitTransfers as the source ledger's brokerage; the same request is replayed on
    UNAVAILABLE / DEADLINE_EXCEEDED and while items are RETRYABLE (bounded), and sent again
    after RESOURCE_EXHAUSTED (the coordinator's bound on a ledger's running batches) until
    ``limit_s``. Returns the last response and the number of calls that reached a batch."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit_s
    calls = 0
    async with system.aio_channel(f"brokerage:{request.source_ledger}") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        while True:
            calls += 1
            try:
                response = await stub.SubmitTransfers(
                    request, timeout=max(1.0, min(SUBMIT_TIMEOUT * 4, give_up - loop.time()))
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and loop.time() < give_up:
                    calls -= 1  # the ledger's running batches are at their bound: wait
                    await asyncio.sleep(1.0)
                    continue
                retry = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not retry or calls >= RETRY_LIMIT or loop.time() > give_up:
                    raise
                await asyncio.sleep(0.5)
                continue
            waiting = any(r.outcome == RETRYABLE_OUTCOME for r in response.results)
            if not waiting or calls >= RETRY_LIMIT or loop.time() > give_up:
                return response, calls
            await asyncio.sleep(1.0)


async def _watch(
    system: LocalSystem,
    request: transfer_pb2.SubmitTransfersRequest,
    results: dict[int, TransferResult],
    walls: dict[int, float],
    deadline: float,
    streams: asyncio.Semaphore,
    group: int,
) -> None:
    """Follow one batch with WatchBatch until every item is terminal (state times from the
    coordinator's stamps), ``group`` reports per message at most; a broken stream is
    resumed from the last sequences received."""
    loop = asyncio.get_running_loop()
    after = [0] * len(request.items)
    async with streams, system.aio_channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        while loop.time() < deadline:
            watch = S_WatchBatchRequest(request, after, group)
            try:
                async for m in stub.WatchBatch(watch, timeout=max(1.0, deadline - loop.time())):
                    # A message without items is one report (a coordinator that predates
                    # max_items_per_message answers so, whatever was asked).
                    for item in m.items or (m,):
                        r = results.get(item.index)
                        if r is None or not item.HasField("update"):
                            continue
                        after[item.index] = item.update.sequence
                        name = STATE_NAMES.get(item.update.state, str(item.update.state))
                        r.state_at[name] = item.update.at.ToNanoseconds() / 1e9 - walls[item.index]
                        if name in TERMINAL:
                            r.final_state = name
                            r.end_to_end = r.state_at[name]
                            r.outcome = "committed" if name == "COMMITTED" else name.lower()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ):
                    for r in results.values():
                        r.error = r.error or f"WatchBatch {exc.code().name}: {exc.details()}"
                    return
                await asyncio.sleep(0.5)


def S_WatchBatchRequest(
    request: transfer_pb2.SubmitTransfersRequest, after: Sequence[int], group: int = 1
) -> transfer_pb2.WatchBatchRequest:
    """The WatchBatch request resuming ``request``'s batch after ``after``, asking for up
    to ``group`` reports per message."""
    return transfer_pb2.WatchBatchRequest(
        batch_id=request.batch_id,
        source_ledger=request.source_ledger,
        after_sequence=after,
        max_items_per_message=group,
    )


async def _run_batch(
    system: LocalSystem,
    batch: BatchSpec,
    t0: float,
    budget: float,
    streams: asyncio.Semaphore,
    stats: dict[str, Any],
    group: int,
    submits: asyncio.Semaphore,
) -> list[TransferResult]:
    """Wait for the batch's slot, submit it (at most ``submits`` calls of its source
    ledger at once; the wait counts in its items' latency), follow it; never raises."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + batch.at - loop.time()))
    start, wall = loop.time() - t0, time.time()
    results = [TransferResult(s, submit_start=start) for s in batch.items]
    deadline = loop.time() + budget
    try:
        async with submits:  # signed when sent, so a queued batch's instructions are fresh
            items = [instructed(system.brokerage.instruct, request_for(s)) for s in batch.items]
            request = transfer_pb2.SubmitTransfersRequest(
                batch_id=f"bench-{uuid.uuid4()}", source_ledger=batch.source, items=items
            )
            began = loop.time()
            response, calls = await submit_batch(system, request, budget)
        rpc = loop.time() - began
        stats["calls"] = stats.get("calls", 0) + calls
        stats["rpc_s"].append(rpc)
    except grpc.aio.AioRpcError as exc:
        for r in results:
            r.outcome, r.error = "error", f"SubmitTransfers {exc.code().name}: {exc.details()}"
        return results
    following: dict[int, TransferResult] = {}
    for r, item in zip(results, response.results, strict=True):
        r.submit_rpc = rpc
        if item.outcome in (REFUSED_OUTCOME, RETRYABLE_OUTCOME):
            r.outcome = "error"
            r.error = f"{item.error.code} {item.error.reason}: {item.error.message}"[:200]
            continue
        r.transfer_id = item.transfer.transfer_id
        following[item.index] = r
    if following:
        walls = dict.fromkeys(following, wall)
        await _watch(system, request, following, walls, deadline, streams, group)
    for r in following.values():
        if not r.final_state and r.outcome == "pending":
            r.outcome = "timed-out"
    return results


async def run_batch_load(
    system: LocalSystem, batches: Sequence[BatchSpec], opts: Options, sampler: Any
) -> tuple[list[TransferResult], dict[str, Any]]:
    """Offer every batch on schedule; returns the results (in spec order) and the batch
    statistics (SubmitTransfers calls and round trips)."""
    stop = asyncio.Event()
    streams = asyncio.Semaphore(WATCH_STREAMS)
    # A brokerage's client keeps at most the coordinator's bound of its batches running
    # (``max_running_batches``): a thousand batches due at once otherwise each re-sent
    # every second on RESOURCE_EXHAUSTED (a 100,000-transfer run: about a tenth of the
    # coordinator's CPU spent refusing them).
    submits = {k: asyncio.Semaphore(n) for k, n in submit_slots(batches, opts.batch_by).items()}
    stats: dict[str, Any] = {"batches": len(batches), "rpc_s": []}
    sampling = asyncio.create_task(sampler.run(stop)) if sampler else None
    t0 = asyncio.get_running_loop().time()
    bound = (batches[-1].at if batches else 0.0) + opts.timeout + LOAD_MARGIN
    try:
        async with asyncio.timeout(bound):
            groups = await asyncio.gather(
                *(
                    _run_batch(
                        system,
                        b,
                        t0,
                        opts.timeout,
                        streams,
                        stats,
                        opts.watch_group,
                        submits[slot_key(b, opts.batch_by)],
                    )
                    for b in batches
                )
            )
    finally:
        stop.set()
        if sampling is not None:
            await sampling
    results = sorted((r for g in groups for r in g), key=lambda r: r.spec.index)
    rpc = stats.pop("rpc_s")
    stats["submit_rpc_p50_s"] = percentile(rpc, 50)
    stats["submit_rpc_max_s"] = max(rpc, default=float("nan"))
    return results, stats


# -- receipts and blocks (EVM) ---------------------------------------------------------------
def _rpc_batch(url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    """One JSON-RPC batch request to a loopback node (anvil itself, not the proxy)."""
    body = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    ).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        replies = json.loads(resp.read())
    by_id = {r["id"]: r.get("result") for r in replies}
    return [by_id.get(i) for i in range(len(calls))]


def node_url(system: LocalSystem, ledger: str) -> str | None:
    """The JSON-RPC URL the devnet administers an EVM ledger through (anvil itself, a geth
    network's leader, a Kaia-like node), where its receipts and blocks are read; None for a
    ledger without one (Fabric, CometBFT: transactions counted, no gas)."""
    dev = system.dev_ledgers[ledger]
    return dev.admin_rpc_url if isinstance(dev, EvmEndpointLedger) else None


async def ledger_transactions(
    system: LocalSystem, results: Sequence[TransferResult]
) -> tuple[dict[str, list[dict[str, int]]], dict[str, int], dict[str, dict[str, Any]]]:
    """The ledger transactions of the terminal transfers (``Transfer.transactions``, read
    with ListTransfers): per EVM ledger the receipts (gas, block, step), per ledger the
    transaction count, and per EVM ledger the gas use of the blocks they landed in."""
    wanted = {r.transfer_id: r for r in results if r.transfer_id and r.final_state}
    txs: dict[str, list[tuple[str, str]]] = {}
    async with system.aio_channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListTransfers(
                transfer_pb2.ListTransfersRequest(page_size=500, page_token=token), timeout=30
            )
            for t in page.transfers:
                if t.transfer_id not in wanted:
                    continue
                for step, tx in t.transactions.items():
                    ledger = t.source_ledger if step in SOURCE_STEPS else t.target_ledger
                    txs.setdefault(ledger, []).append((step, tx))
            token = page.next_page_token
            if not token:
                break
    counts = {ledger: len(rows) for ledger, rows in txs.items()}
    receipts: dict[str, list[dict[str, int]]] = {}
    blocks: dict[str, dict[str, Any]] = {}
    for ledger, recorded in txs.items():
        rows = distinct_transactions(recorded)
        url = node_url(system, ledger)
        if url is None:
            continue
        got: list[dict[str, Any]] = []
        for i in range(0, len(rows), 200):
            chunk = rows[i : i + 200]
            replies = await asyncio.to_thread(
                _rpc_batch, url, [("eth_getTransactionReceipt", [tx]) for _, tx in chunk]
            )
            for (step, _), rec in zip(chunk, replies, strict=True):
                if rec:
                    got.append(
                        {"step": step, "gasUsed": int(rec["gasUsed"], 16),
                         "block": int(rec["blockNumber"], 16)}
                    )  # fmt: skip
        if len(got) < len(rows):
            # e.g. geth's "transaction indexing is in progress": said, not a silent figure
            _say(
                f"{ledger}: {len(rows) - len(got)} of {len(rows)} transactions' receipts not"
                " read; the gas figures below leave them out"
            )
        receipts[ledger] = got
        numbers = sorted({r["block"] for r in got})
        if numbers:
            span = list(range(numbers[0], numbers[-1] + 1))
            heads: list[dict[str, int]] = []
            for i in range(0, len(span), 200):
                replies = await asyncio.to_thread(
                    _rpc_batch,
                    url,
                    [("eth_getBlockByNumber", [hex(n), False]) for n in span[i : i + 200]],
                )
                heads += [
                    {"gasUsed": int(b["gasUsed"], 16), "gasLimit": int(b["gasLimit"], 16),
                     "transactions": len(b["transactions"])}
                    for b in replies if b
                ]  # fmt: skip
            blocks[ledger] = block_use(heads)
    return receipts, counts, blocks


# -- report ----------------------------------------------------------------------------------
def batch_report_lines(b: dict[str, Any]) -> list[str]:
    """The batch / end-of-day section of the printed report."""
    s = b["settle"]
    st = b["stats"]
    lines = [
        f"batch mode: {b['batch_size']} items per SubmitTransfers (one batch per"
        f" {b.get('batch_by', 'source')}), {st['batches']} batches,"
        f" {st.get('calls', 0)} calls (replays included), SubmitTransfers p50"
        f" {st['submit_rpc_p50_s']:.2f} s, max {st['submit_rpc_max_s']:.2f} s"
    ]
    if s["time_to_settle_s"] is not None:
        lines.append(
            f"time to settle all: {s['time_to_settle_s']:.1f} s for {s['settled']} transfers"
            f" ({s['committed']} committed); sustained {s['sustained_per_s']:.2f} transfers/s"
        )
    by_lane = [
        f"{lane} {x['time_to_settle_s']:.1f} s ({x['sustained_per_s']:.1f}/s)"
        for lane, x in b.get("settle_by_lane", {}).items()
        if x["time_to_settle_s"] is not None and x["sustained_per_s"] is not None
    ]
    if by_lane:
        lines.append("time to settle by lane: " + ", ".join(by_lane))
    cpu_ms = b["bridge_cpu_ms"]
    if cpu_ms:
        per = ", ".join(f"{k} {v:.1f}" for k, v in cpu_ms.items() if k != "total")
        lines.append(f"bridge CPU-ms per transfer: total {cpu_ms['total']:.1f} ({per})")
        alone = ", ".join(f"{k} ~{v:,.0f}/s" for k, v in b["one_core_at_per_s"].items())
        lines.append(
            "each bridge process would fill a core of its own at (linear in its CPU per"
            " transfer, its fixed work counted per transfer: a floor; bench/cost_fit.py over"
            f" runs at several rates separates it): {alone}"
        )
    settled = max(1, s["settled"])
    for ledger, n in b["transactions"].items():
        g = b["gas"].get(ledger)
        u = b["blocks"].get(ledger)
        if u:  # EVM: what the ledger's blocks over the window hold
            lines.append(
                f"ledger {ledger}: {u['transactions']} transactions in its {u['blocks']} blocks"
                f" over the window ({u['transactions'] / settled:.2f}/transfer), gas"
                f" {u['gas'] / settled:.0f}/transfer; the coordinator recorded {n} tx ids"
            )
        else:
            lines.append(f"ledger {ledger}: {n} transactions recorded ({n / settled:.2f}/transfer)")
        if g:
            steps = ", ".join(f"{k} {v:.0f}" for k, v in g["gas_per_step_p50"].items())
            lines.append(
                f"  gas per transaction by step, p50 of the {g['transactions']} distinct"
                f" receipts (a batched step's transaction carries many items): {steps}"
            )
        if u:
            lines.append(
                f"  block gas use mean {u['mean_gas_share']:.1%} max {u['max_gas_share']:.1%},"
                f" >= {GAS_FULL:.0%} full {u['full_share']:.0%} of blocks, most txs in a block"
                f" {u['max_transactions']}"
            )
    sat = b["saturation"]
    lines.append(f"saturated first: {sat['what']} ({sat['why']})")
    if b.get("supply_feed"):
        lines += feed_lines(b["supply_feed"])
    return lines


def curve_lines(points: Sequence[dict[str, Any]]) -> list[str]:
    """The throughput-vs-offered-load table."""
    lines = ["throughput vs offered load:",
             f"  {'offered/s':>9} {'accepted/s':>11} {'sustained/s':>11} {'p50 s':>7}"
             f" {'bridge ms/tr':>12} {'host busy':>9}  saturated"]  # fmt: skip
    for p in points:
        sus = p["sustained_per_s"] if p["sustained_per_s"] is not None else float("nan")
        acc = p["accepted_per_s"] if p["accepted_per_s"] is not None else float("nan")
        lat = p.get("latency_p50_s") or float("nan")
        cpu = p.get("bridge_cpu_ms") or float("nan")
        lines.append(
            f"  {p['offered_per_s']:9.2f} {acc:11.2f} {sus:11.2f} {lat:7.2f}"
            f" {cpu:12.1f} {p.get('host_busy_pct', float('nan')):8.0f}%  {p['saturated']}"
        )
    return lines
