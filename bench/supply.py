"""Benchmark of the supply-attestation feed: subscriber lag, and cost per record at scale.

**Lag** (real processes): starts a :class:`~bridge.devnet.system.LocalSystem` with two
anvil ledgers (``--block-time``), a 3-of-4 committee, relayers and the coordinator under
``.run/bench-supply/``, with the heartbeat off so every record is produced by a change.
A subscriber follows ``StreamAttestations`` while ``--transfers`` transfers run at
``--rate`` per second in both directions, and a poller records when each block number
first appears on each ledger (finality depth 0: that is when it is final). For every block
holding a transfer step (lock, prepare, burn, mint, release...), the lag is the time from
that block becoming final to the arrival, at the subscriber, of the first record whose cut
includes it. Goal: p99 <= one block interval + 0.3 s. The coordinator's own time per record
(read the ledgers through the relayers, collect t signatures, append) comes from its log.

**Scale** (in process, real SQLite): a coordinator supply store holding ``--securities``
registered securities, each with a record, against one holding a single security: the
store work of one publication (registration, latest record, confirmations, append) per
record, averaged over ``--records`` records of one security. The ledger reads and the
committee round trip of a publication read only the security that changed, so they do not
depend on how many are registered; the store is the only part that could.

``--json PATH`` writes every figure. Everything is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eth_typing import HexStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.coordinator.supply_store import SqliteSupplyStore, StoredRegistration
from bridge.devnet.processes import exit_on_sigterm
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.ids import isin_check_digit
from bridge.domain.issuance import Registration
from bridge.domain.supply import (
    GENESIS_HASH,
    Assessment,
    SignedRecord,
    SupplyReading,
    assess,
    make_record,
)
from bridge.supply_client import SupplyFeed
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
A, B = "brokerage-a", "brokerage-b"
SOURCE_STEPS, TARGET_STEPS = ("lock", "burn", "release"), ("prepare", "mint", "abort", "expire")


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def percentiles(values: Sequence[float], digits: int) -> dict[str, float]:
    """p50, p95 and p99 of ``values`` (empty when there are none)."""
    if not values:
        return {}
    return {f"p{p}": round(pct(values, p), digits) for p in (50, 95, 99)}


# -- lag ---------------------------------------------------------------------------------------


class BlockClock(threading.Thread):
    """Records when each block number first appears on each ledger (polled every 10 ms)."""

    def __init__(self, system: LocalSystem) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.seen: dict[str, dict[int, float]] = {n: {} for n in system.ledgers}
        self.stop = threading.Event()

    def run(self) -> None:
        w3s = {n: h.w3 for n, h in self.system.ledgers.items()}
        last = {n: w3.eth.block_number for n, w3 in w3s.items()}
        while not self.stop.is_set():
            for name, w3 in w3s.items():
                now_height = w3.eth.block_number
                if now_height > last[name]:
                    t = time.time()
                    for h in range(last[name] + 1, now_height + 1):
                        self.seen[name][h] = t
                    last[name] = now_height
            self.stop.wait(0.01)


async def subscribe(system: LocalSystem, out: list[tuple[float, Any]]) -> None:
    """Append (arrival time, attestation) for every record of the feed until cancelled."""
    feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
    try:
        async for a in feed.stream("", 1):
            out.append((time.time(), a))
    finally:
        await feed.close()


def run_lag(a: argparse.Namespace) -> dict[str, Any]:
    work = ROOT / ".run" / "bench-supply"
    system = LocalSystem(
        work / str(int(time.time())), block_time=a.block_time, supply_heartbeat=0.0
    )
    system.start()
    clock = BlockClock(system)
    try:
        holders = {
            n: [system.handle(n).make_holder(DEMO_ISIN, 1000) for _ in range(4)] for n in (A, B)
        }
        for n, other in ((A, B), (B, A)):
            for h in holders[n]:
                system.handle(other).set_eligible(DEMO_ISIN, h.address)
        clock.start()
        arrivals: list[tuple[float, Any]] = []

        async def drive() -> list[str]:
            sub = asyncio.create_task(subscribe(system, arrivals))
            t0, tids = time.monotonic(), []
            for i in range(a.transfers):
                await asyncio.sleep(max(0.0, t0 + i / a.rate - time.monotonic()))
                src, dst = (A, B) if i % 2 == 0 else (B, A)
                h = holders[src][i % 4]
                req = S.SubmitTransferRequest(
                    idempotency_key=str(uuid.uuid4()),
                    security_id=DEMO_ISIN,
                    source_ledger=src,
                    target_ledger=dst,
                    sender=h.address,
                    recipient=h.address,
                    amount="1",
                )
                tids.append(await asyncio.to_thread(system.submit, req))
            await asyncio.to_thread(wait_terminal, system, tids)
            await asyncio.sleep(3 * a.block_time + 2)  # the last records arrive
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
            return tids

        tids = asyncio.run(drive())
        clock.stop.set()
        blocks = step_blocks(system, tids)
        lags = []
        for ledger, height in sorted(blocks):
            final_at = clock.seen[ledger].get(height)
            arrived = next(
                (t for t, att in arrivals if includes(att, ledger, height)),
                None,
            )
            if final_at is not None and arrived is not None:
                lags.append(arrived - final_at)
        costs = publication_costs(system.workdir / "logs" / "coordinator.log")
    finally:
        clock.stop.set()
        system.stop()
    goal = a.block_time + 0.3
    return {
        "transfers": a.transfers,
        "rate": a.rate,
        "block_time_s": a.block_time,
        "records_received": len(arrivals),
        "blocks_measured": len(lags),
        "blocks_with_steps": len(blocks),
        "lag_s": percentiles(lags, 3),
        "lag_goal_s": goal,
        "lag_goal_met": bool(lags) and pct(lags, 99) <= goal,
        "publication_s": percentiles(costs, 4),
    }


def includes(attestation: Any, ledger: str, height: int) -> bool:
    """Whether the attestation's cut includes ``height`` on ``ledger``."""
    return any(
        r.ledger == ledger and r.height >= height for r in attestation.signed.record.readings
    )


def wait_terminal(system: LocalSystem, tids: list[str], limit: float = 180.0) -> None:
    terminal = (S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED)
    give_up = time.monotonic() + limit
    with system.channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        pending = set(tids)
        while pending and time.monotonic() < give_up:
            for t in list(pending):
                if stub.GetTransfer(S.GetTransferRequest(transfer_id=t)).state in terminal:
                    pending.discard(t)
            time.sleep(0.2)
    if pending:
        raise TimeoutError(f"{len(pending)} transfers not terminal")


def step_blocks(system: LocalSystem, tids: list[str]) -> set[tuple[str, int]]:
    """(ledger, block) of every step transaction of the transfers."""
    out: set[tuple[str, int]] = set()
    with system.channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        for tid in tids:
            t = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid))
            for step, tx in t.transactions.items():
                ledger = t.source_ledger if step in SOURCE_STEPS else t.target_ledger
                receipt = system.ledgers[ledger].w3.eth.get_transaction_receipt(HexStr(tx))
                out.add((ledger, int(receipt["blockNumber"])))
    return out


def publication_costs(log: Path) -> list[float]:
    costs = []
    for line in log.read_text().splitlines():
        if '"supply record published"' in line:
            costs.append(float(json.loads(line)["elapsed_s"]))
    return costs


# -- scale -------------------------------------------------------------------------------------


def isins(n: int) -> list[str]:
    out = []
    for i in range(n):
        body = f"KR9{i:08d}"
        out.append(body + str(isin_check_digit(body)))
    return out


def reading(ledger: str, height: int, total: int) -> SupplyReading:
    return SupplyReading(ledger, height, height.to_bytes(32, "big"), total, 0, 0, 0, 0)


async def store_cost(n_securities: int, records: int, path: Path) -> float:
    """Mean seconds of the store work of one publication, with ``n_securities`` registered."""
    store = SqliteSupplyStore(path)
    now_ms = int(time.time() * 1000)
    names = isins(n_securities)
    for isin in names:
        reg = Registration.of(isin, 1, {A: 1000, B: 0}, now_ms)
        await store.register(StoredRegistration(reg, b"\0" * 65, b"\0" * 20))
        rec = make_record(
            isin,
            1,
            GENESIS_HASH,
            1,
            now_ms,
            [reading(A, 1, 1000), reading(B, 1, 0)],
            dict(reg.totals),
            1,
        )
        await store.append(SignedRecord(rec, ()), Assessment((), (), {}), time.time())
    target = names[n_securities // 2]
    began = time.perf_counter()
    for i in range(records):
        stored = await store.registration(target)
        latest = await store.latest(target)
        assert stored is not None
        assert latest is not None
        rec = make_record(
            target,
            latest.signed.record.sequence + 1,
            latest.signed.record.digest,
            1,
            now_ms,
            [reading(A, i + 2, 1000), reading(B, i + 2, 0)],
            dict(stored.registration.totals),
            1,
        )
        assessment = assess(rec, await store.confirmed(target))
        await store.append(SignedRecord(rec, ()), assessment, time.time())
    elapsed = (time.perf_counter() - began) / records
    store.close()
    return elapsed


def run_scale(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        one = asyncio.run(store_cost(1, a.records, Path(tmp) / "one.sqlite"))
        many = asyncio.run(store_cost(a.securities, a.records, Path(tmp) / "many.sqlite"))
    return {
        "securities": a.securities,
        "records_timed": a.records,
        "store_s_per_record_1": round(one, 6),
        f"store_s_per_record_{a.securities}": round(many, 6),
        "ratio": round(many / one, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--transfers", type=int, default=20)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--block-time", type=float, default=1.0)
    p.add_argument("--securities", type=int, default=10_000)
    p.add_argument("--records", type=int, default=300)
    p.add_argument("--skip-lag", action="store_true", help="only the scale measurement")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    a = p.parse_args(argv)
    exit_on_sigterm()
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    result: dict[str, Any] = {"machine": machine}
    if not a.skip_lag:
        result["lag"] = run_lag(a)
        lag = result["lag"]
        print(
            f"lag over {lag['blocks_measured']} blocks with transfer steps"
            f" ({lag['records_received']} records received):"
        )
        print(
            f"  p50 {lag['lag_s'].get('p50')} s  p95 {lag['lag_s'].get('p95')} s"
            f"  p99 {lag['lag_s'].get('p99')} s   goal p99 <= {lag['lag_goal_s']} s:"
            f" {'met' if lag['lag_goal_met'] else 'NOT met'}"
        )
        print(f"  coordinator time per record: {lag['publication_s']}")
    result["scale"] = run_scale(a)
    sc = result["scale"]
    print(
        f"store work per record: {sc['store_s_per_record_1'] * 1000:.3f} ms with 1 security,"
        f" {sc[f'store_s_per_record_{a.securities}'] * 1000:.3f} ms with {a.securities}"
        f" registered (ratio {sc['ratio']})"
    )
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
