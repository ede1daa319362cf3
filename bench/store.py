"""Throughput of the coordinator's store alone: PostgreSQL vs SQLite (ADR 0013).

Each engine runs the same workload through the real store classes (``SqlTransferStore``,
``SqlSupplyStore``; every call a durable transaction in the database's worker thread, as
the coordinator uses them): ``--transfers`` transfers, each created and driven through the
coordinator's write pattern (create; SOURCE_LOCKED, TARGET_PREPARED, COMMITTING with a
recorded decision and two transactions; COMMITTED; a history read), ``--concurrency`` of
them at a time, plus ``--records`` supply-feed appends. Then the driver's read pattern:
``--reads`` rounds of ``get`` for every transfer (the record a driver reads before each
step), ``--concurrency`` at a time, and the same rounds of ``get_many`` by pages of 500
(a batch's answer), with the process CPU (all threads) per record read. SQLite writes a
WAL file with ``synchronous=FULL`` under a temporary directory; PostgreSQL is a throwaway cluster
(``initdb``/``pg_ctl``, default settings: fsync on, synchronous_commit on) on loopback.

``--unfinished N`` then leaves N more transfers unfinished and times what the coordinator's
periodic passes read of them (issue 14): ``unfinished()`` (every record, parsed: what the
driver sweep and the metrics refresh read before), ``unfinished_sources()`` (the sweep now) and
``unfinished_summary()`` (the metrics refresh now), as process CPU milliseconds per call.

``--batches N`` then records N batches of ``--batch-items`` new transfers with
``create_many`` (what a ``SubmitTransfers`` call's admission writes, one transaction per
batch), one batch after the other, and reports records/s and the process CPU (all threads)
per record; then each batch's COMMIT decisions with one ``record_decisions`` (what a
certified batch's step records), decisions/s and CPU per decision.

``--queued N`` then records N QUEUED transfers on one flow-limited lane and times a round of
their gates' backlog questions (``lane_backlog`` for the source's and the target's states,
2N questions; review helper-117 #2): with the lane's reads kept (at most a second old, the
coordinator's way) and with every question reading the lane (``MAX_AGE_S`` below zero),
as seconds and process CPU per round.

``--state-writes N`` then records N new transfers and moves them through four states,
``--concurrency`` of them at a time in one loop turn (what the drivers a flushed step
answered do), once with a ``set_state`` each (a write job, a savepoint and four statements
per change, grouped by the database thread) and once through ``StateWrites`` (the changes of
a turn in one ``set_states`` write, issue 14): state writes per second and process CPU
microseconds per write, for each. The parsed-record cache holds 4,096 transfers, so keep N
at most that (the coordinator's drivers re-read the transfers they drive).

Reported per engine: transfers/s, feed appends/s; then the PostgreSQL/SQLite ratios and the
machine (CPU count and model, kernel). ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge.coordinator.db import Database, open_database
from bridge.coordinator.records import Decision, TransferRecord, TransferRequest
from bridge.coordinator.store import SqlTransferStore
from bridge.coordinator.supply_store import SqlSupplyStore
from bridge.devnet.postgres import start_cluster
from bridge.domain.claims import ClaimKind
from bridge.domain.legs import SignatureSet
from bridge.domain.supply import (
    GENESIS_HASH,
    Assessment,
    SignedRecord,
    SupplyReading,
    make_record,
)
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState

ADDR = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def transfer(n: int) -> TransferRecord:
    """A distinct transfer record (``n`` makes the nonce and key)."""
    w = bytes(32)
    terms = TransferTerms(
        nonce=secrets.token_bytes(24) + n.to_bytes(8, "big"),
        security=b"KR7005930003".ljust(32, b"\0"),
        amount=100,
        src_ledger=b"\xa0" * 32,
        src_bridge=w,
        dst_ledger=b"\xa1" * 32,
        dst_bridge=w,
        sender=bytes(12) + bytes.fromhex(ADDR[2:]),
        recipient=bytes(12) + bytes.fromhex(ADDR[2:]),
        instructor=bytes(12) + b"\x1e" * 20,
        deadline=1_900_000_000,
    )
    request = TransferRequest(f"k-{n}", "KR7005930003", "a", "b", ADDR, ADDR, 100)
    now = time.time()
    return TransferRecord(terms.transfer_id, request, terms, TransferState.SUBMITTED, "", now, now)


async def drive(store: SqlTransferStore, n: int) -> bytes:
    """One transfer through the coordinator's write pattern; returns its id."""
    rec = transfer(n)
    await store.create(rec)
    tid = rec.transfer_id
    await store.set_state(tid, TransferState.SOURCE_LOCKED, "", "locked")
    await store.add_transaction(tid, "lock", f"0x{n:064x}")
    await store.set_state(tid, TransferState.TARGET_PREPARED, "", "prepared")
    cert = SignatureSet(1, (b"\x01" * 65, b"\x02" * 65, b"\x03" * 65))
    await store.record_decision(tid, Decision(ClaimKind.COMMIT, {"a": cert, "b": cert}))
    await store.set_state(tid, TransferState.COMMITTING, "", "committing")
    await store.add_transaction(tid, "mint", f"0x{n + 1:064x}")
    await store.set_state(tid, TransferState.COMMITTED, "", "done")
    await store.history(tid, 0)
    return tid


async def read_records(
    store: SqlTransferStore, tids: list[bytes], concurrency: int, rounds: int
) -> dict[str, float]:
    """``rounds`` of ``get`` per transfer, then of ``get_many`` by pages of 500: records
    read per second and process CPU microseconds per record, for each."""
    sem = asyncio.Semaphore(concurrency)

    async def one(tid: bytes) -> None:
        async with sem:
            assert await store.get(tid) is not None

    out: dict[str, float] = {}
    for name in ("get", "get_many"):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            if name == "get":
                await asyncio.gather(*(one(tid) for tid in tids))
            else:
                for start in range(0, len(tids), 500):
                    page = tids[start : start + 500]
                    many = await store.get_many(page)
                    assert not many.unreadable
                    assert len(many.found) == len(page)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = len(tids) * rounds
        out[f"{name}_records_per_s"] = n / wall if wall else 0.0
        out[f"{name}_cpu_us_per_record"] = cpu / n * 1e6 if n else 0.0
    return out


async def time_unfinished(store: SqlTransferStore, count: int) -> dict[str, float]:
    """Leave ``count`` more transfers unfinished, then the process CPU milliseconds of one
    call (best of three) of each periodic read of them."""
    for start in range(0, count, 500):
        page = [transfer(10_000_000 + n) for n in range(start, min(count, start + 500))]
        await store.create_many(page)
    reads: dict[str, Callable[[], Awaitable[object]]] = {
        "unfinished": store.unfinished,
        "unfinished_sources": store.unfinished_sources,
        "unfinished_summary": lambda: store.unfinished_summary(time.time()),
    }
    out: dict[str, float] = {}
    for name, read in reads.items():
        best = float("inf")
        for _ in range(3):
            c0 = time.process_time()
            await read()
            best = min(best, time.process_time() - c0)
        out[f"{name}_cpu_ms"] = best * 1e3
    return out


async def time_create_many(store: SqlTransferStore, batches: int, items: int) -> dict[str, float]:
    """Record ``batches`` batches of ``items`` new transfers, one ``create_many`` each, one
    after the other: records per second and process CPU microseconds per record. Then each
    batch's COMMIT decisions, one ``record_decisions`` a batch (what a certified batch's
    step records), each item naming the batch's certificate on two ledgers with its own
    proof: decisions per second and process CPU microseconds per decision."""
    from bridge.core.batch import BatchCertificate
    from bridge.domain.batch_certified import BatchCertified

    t0, c0 = time.perf_counter(), time.process_time()
    pages: list[list[TransferRecord]] = []
    for b in range(batches):
        page = [transfer(20_000_000 + b * items + n) for n in range(items)]
        outcomes = await store.create_many(page)
        assert all(o == (r, True) for o, r in zip(outcomes, page, strict=True))
        pages.append(page)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    for b, page in enumerate(pages):
        cert = BatchCertificate(3, int(ClaimKind.COMMIT), b.to_bytes(32, "big"), items,
                                (b"\x01" * 65, b"\x02" * 65, b"\x03" * 65))  # fmt: skip
        decided = [
            (r.transfer_id, Decision(ClaimKind.COMMIT, {
                ledger: BatchCertified(cert, (r.transfer_id, bytes(32), bytes(32)))
                for ledger in ("brokerage-a", "brokerage-b")}))
            for r in page
        ]  # fmt: skip
        stored = await store.record_decisions(decided)
        assert stored == [d for _, d in decided]
    d_wall, d_cpu = time.perf_counter() - t0, time.process_time() - c0
    n = batches * items
    return {
        "create_many_records_per_s": n / wall if wall else 0.0,
        "create_many_cpu_us_per_record": cpu / n * 1e6 if n else 0.0,
        "record_decisions_per_s": n / d_wall if d_wall else 0.0,
        "record_decisions_cpu_us": d_cpu / n * 1e6 if n else 0.0,
    }


async def time_state_writes(
    store: SqlTransferStore, count: int, concurrency: int
) -> dict[str, float]:
    """``count`` new transfers moved through four states, ``concurrency`` changes at once,
    with a ``set_state`` each and then through ``StateWrites``: state writes per second
    and process CPU microseconds per write, for each."""
    from bridge.coordinator.state_writes import StateWrites

    out: dict[str, float] = {}
    steps = (TransferState.SOURCE_LOCKED, TransferState.TARGET_PREPARED,
             TransferState.COMMITTING, TransferState.COMMITTED)  # fmt: skip
    for label, base in (("alone", 40_000_000), ("coalesced", 50_000_000)):
        records = [transfer(base + n) for n in range(count)]
        for start in range(0, count, 500):
            await store.create_many(records[start : start + 500])
        tids = [r.transfer_id for r in records]
        writer = StateWrites(store, max_in_flight=2) if label == "coalesced" else store
        t0, c0 = time.perf_counter(), time.process_time()
        for state in steps:
            for start in range(0, count, concurrency):
                page = tids[start : start + concurrency]
                done = await asyncio.gather(*(writer.set_state(t, state, "", "") for t in page))
                assert all(w.record.state is state for w in done)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = count * len(steps)
        out[f"state_writes_{label}_per_s"] = n / wall if wall else 0.0
        out[f"state_writes_{label}_cpu_us"] = cpu / n * 1e6 if n else 0.0
    return out


async def time_queued(store: SqlTransferStore, count: int) -> dict[str, float]:
    """A round of ``count`` queued transfers' backlog questions, kept and uncached."""
    from bridge.coordinator import lane_backlogs
    from bridge.coordinator.flow_queue import AHEAD_AT_SOURCE, AHEAD_AT_TARGET

    queued = []
    for n in range(count):
        r = transfer(30_000_000 + n)
        queued.append(dataclasses.replace(r, state=TransferState.QUEUED))
    for start in range(0, count, 500):
        await store.create_many(queued[start : start + 500])
    out: dict[str, float] = {}
    kept = lane_backlogs.MAX_AGE_S
    try:
        for label, age in (("kept", kept), ("uncached", -1.0)):
            lane_backlogs.MAX_AGE_S = age
            t0, c0 = time.perf_counter(), time.process_time()
            for r in queued:
                await store.lane_backlog(r.transfer_id, AHEAD_AT_SOURCE)
                await store.lane_backlog(r.transfer_id, AHEAD_AT_TARGET)
            out[f"queued_{label}_round_s"] = time.perf_counter() - t0
            out[f"queued_{label}_round_cpu_s"] = time.process_time() - c0
    finally:
        lane_backlogs.MAX_AGE_S = kept
    return out


async def run_engine(
    db: Database,
    transfers: int,
    concurrency: int,
    records: int,
    reads: int = 0,
    unfinished: int = 0,
    batches: int = 0,
    batch_items: int = 50,
    queued: int = 0,
    state_writes: int = 0,
) -> dict[str, float]:
    """The workload on ``db``; figures in operations per second (reads: see read_records)."""
    store, supply = SqlTransferStore(db), SqlSupplyStore(db)
    sem = asyncio.Semaphore(concurrency)

    async def one(n: int) -> bytes:
        async with sem:
            return await drive(store, n)

    t0 = time.perf_counter()
    tids = list(await asyncio.gather(*(one(n) for n in range(transfers))))
    t_transfers = time.perf_counter() - t0
    read_figures = await read_records(store, tids, concurrency, reads) if reads else {}
    t0 = time.perf_counter()
    previous = GENESIS_HASH
    for seq in range(1, records + 1):
        reading = SupplyReading("a", seq, bytes([seq % 256]) * 32, 10, 0, 0, 0, 0)
        rec = make_record("BENCH0000001", seq, previous, 1, seq, [reading], {"a": 10},
                          registration_version=1)  # fmt: skip
        await supply.append(SignedRecord(rec, (b"\x5a" * 65,)), Assessment((), (), {}), seq)
        previous = rec.digest
    t_records = time.perf_counter() - t0
    sweep = await time_unfinished(store, unfinished) if unfinished else {}
    created = await time_create_many(store, batches, batch_items) if batches else {}
    lanes = await time_queued(store, queued) if queued else {}
    states = await time_state_writes(store, state_writes, concurrency) if state_writes else {}
    store.close()
    supply.close()
    return (
        {
            "transfers_per_s": transfers / t_transfers,
            "feed_appends_per_s": records / t_records,
            "transfer_seconds": t_transfers,
            "record_seconds": t_records,
        }
        | read_figures
        | sweep
        | created
        | lanes
        | states
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version()}  # fmt: skip


def main() -> None:
    """Run both engines and print (and optionally write) the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--transfers", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--reads", type=int, default=3, help="rounds of record reads (3; 0: none)")
    p.add_argument(
        "--unfinished",
        type=int,
        default=0,
        help="then leave N transfers unfinished and time the periodic reads of them",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=0,
        help="then record N batches of --batch-items new transfers with create_many, and"
        " their decisions with record_decisions",
    )
    p.add_argument("--batch-items", type=int, default=50)
    p.add_argument(
        "--queued",
        type=int,
        default=0,
        help="then queue N transfers on one lane and time a round of their backlog questions",
    )
    p.add_argument(
        "--state-writes",
        type=int,
        default=0,
        help="then move N new transfers through four states, --concurrency at once, with a"
        " set_state each and through StateWrites",
    )
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    out: dict[str, Any] = {"machine": machine(), "params": vars(a) | {"json": str(a.json)}}
    with tempfile.TemporaryDirectory(prefix="kstb-bench-store-") as tmp:

        def workload(db: Database) -> dict[str, float]:
            return asyncio.run(
                run_engine(
                    db,
                    a.transfers,
                    a.concurrency,
                    a.records,
                    a.reads,
                    a.unfinished,
                    a.batches,
                    a.batch_items,
                    a.queued,
                    a.state_writes,
                )
            )

        out["sqlite"] = workload(open_database(Path(tmp) / "coordinator.sqlite"))
        cluster = start_cluster(Path(tmp) / "pg")
        try:
            out["postgres"] = workload(open_database(cluster.create_database("bench")))
        finally:
            cluster.stop()
    out["ratio_postgres_over_sqlite"] = {
        k: out["postgres"][k] / out["sqlite"][k] for k in ("transfers_per_s", "feed_appends_per_s")
    }
    for engine in ("sqlite", "postgres"):
        f = out[engine]
        print(f"{engine:9s} {f['transfers_per_s']:8.1f} transfers/s"
              f" {f['feed_appends_per_s']:8.1f} feed appends/s")  # fmt: skip
        if a.reads:
            print(f"{'':9s} reads: get {f['get_records_per_s']:8.0f} records/s"
                  f" ({f['get_cpu_us_per_record']:.0f} CPU-us each),"
                  f" get_many {f['get_many_records_per_s']:8.0f} records/s"
                  f" ({f['get_many_cpu_us_per_record']:.0f} CPU-us each)")  # fmt: skip
        if a.unfinished:
            print(f"{'':9s} {a.unfinished} unfinished, CPU ms per call:"
                  f" unfinished() {f['unfinished_cpu_ms']:.1f},"
                  f" unfinished_sources() {f['unfinished_sources_cpu_ms']:.1f},"
                  f" unfinished_summary() {f['unfinished_summary_cpu_ms']:.1f}")  # fmt: skip
        if a.batches:
            print(f"{'':9s} create_many of {a.batch_items}: {f['create_many_records_per_s']:8.0f}"
                  f" records/s ({f['create_many_cpu_us_per_record']:.0f} CPU-us each),"
                  f" then record_decisions: {f['record_decisions_per_s']:8.0f} decisions/s"
                  f" ({f['record_decisions_cpu_us']:.0f} CPU-us each)")  # fmt: skip
        if a.state_writes:
            print(f"{'':9s} state writes, {a.concurrency} at once:"
                  f" set_state each {f['state_writes_alone_per_s']:8.0f}/s"
                  f" ({f['state_writes_alone_cpu_us']:.0f} CPU-us each),"
                  f" StateWrites {f['state_writes_coalesced_per_s']:8.0f}/s"
                  f" ({f['state_writes_coalesced_cpu_us']:.0f} CPU-us each)")  # fmt: skip
        if a.queued:
            print(f"{'':9s} a round of {a.queued} queued transfers' backlog questions:"
                  f" kept {f['queued_kept_round_s']:.2f} s ({f['queued_kept_round_cpu_s']:.2f}"
                  f" CPU-s), every question reading the lane {f['queued_uncached_round_s']:.2f} s"
                  f" ({f['queued_uncached_round_cpu_s']:.2f} CPU-s)")  # fmt: skip
    r = out["ratio_postgres_over_sqlite"]
    print(f"ratio pg/sqlite: transfers {r['transfers_per_s']:.2f}x,"
          f" feed appends {r['feed_appends_per_s']:.2f}x")  # fmt: skip
    m = out["machine"]
    print(f"machine: {m['cpus']} CPUs, {m['cpu_model']}, kernel {m['kernel']}")
    if a.json is not None:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
