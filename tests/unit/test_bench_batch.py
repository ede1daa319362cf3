"""The transfer benchmark's batch mode (issue 14, batchfix): argument handling, the batch
plan, the end-of-day plan and lanes, the curve's rates and stop rule, and the report maths
(settle time, gas per transfer, block gas use, what saturated first). Pure logic only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from transfers import parse_args
from transfers_batch import (
    CURVE_KNEE,
    SUBMITS_PER_LEDGER,
    block_use,
    bridge_cpu_ms,
    curve_rates,
    distinct_transactions,
    gas_summary,
    one_core_at,
    plan_batches,
    plan_end_of_day,
    saturated_point,
    saturation,
    settle_by_lane,
    settle_stats,
    slot_key,
    submit_slots,
)
from transfers_setup import (
    TransferResult,
    TransferSpec,
    end_of_day_lanes,
    lanes_of,
    make_system,
    mode_of,
)

pytestmark = [pytest.mark.unit, pytest.mark.batch]


def spec(i: int, source: str, at: float = 0.0) -> TransferSpec:
    return TransferSpec(i, at, source, "x", "0xs", "0xr", 1)


def test_batch_arguments() -> None:
    o = parse_args(["--batch", "50", "--transfers", "200", "--rate", "40"])
    assert (o.batch, o.scenario, o.rate, o.curve) == (50, "open-loop", 40.0, ())
    eod = parse_args(["--scenario", "end-of-day", "--transfers", "2000"])
    with pytest.raises(SystemExit):  # no EVM ledger for the hub: refused before anything starts
        parse_args(["--scenario", "end-of-day", "--ledgers", "cometbft,fabric"])
    assert eod.batch == 100 and eod.ledgers == ("anvil", "anvil", "fabric")
    assert eod.lanes == "custom"
    assert parse_args(["--scenario", "end-of-day", "--ledgers", "anvil,anvil"]).ledgers == (
        "anvil",
        "anvil",
    )
    curve = parse_args(["--curve", "--curve-from", "2", "--curve-to", "16", "--curve-points", "4"])
    assert curve.curve == (2.0, 4.0, 8.0, 16.0) and curve.batch == 0
    assert (o.block_gas_limit, mode_of(o)["block_gas_limit"]) == (0, 0), "anvil's default"
    big = parse_args(["--block-gas-limit", "300000000"])
    assert big.block_gas_limit == 300_000_000 and mode_of(big)["block_gas_limit"] == 300_000_000
    system = make_system(Path("/nonexistent"), big)
    assert system.block_gas_limit == 300_000_000, "each anvil gets --gas-limit"
    for bad in (
        ["--block-gas-limit", "-1"],
        ["--batch", "-1"],
        ["--batch", "2501"],
        ["--scenario", "end-of-day", "--curve"],
        ["--curve", "--curve-from", "0"],
        ["--curve", "--curve-from", "8", "--curve-to", "4"],
        ["--scenario", "end-of-day", "--ledgers", "fabric,fabric"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_batches_group_per_source_in_order_and_are_due_with_their_last_item() -> None:
    specs = [spec(i, "a" if i % 3 else "b", at=i / 10) for i in range(10)]
    batches = plan_batches(specs, 3)
    assert sorted(s.index for b in batches for s in b.items) == list(range(10))
    for b in batches:
        assert {s.source for s in b.items} == {b.source} and len(b.items) <= 3
        assert b.at == b.items[-1].at
        assert [s.index for s in b.items] == sorted(s.index for s in b.items)
    assert [b.at for b in batches] == sorted(b.at for b in batches)
    assert [b.index for b in batches] == list(range(len(batches)))
    a_items = [s.index for b in batches if b.source == "a" for s in b.items]
    assert a_items == [i for i in range(10) if i % 3]
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches(specs, 0)


def test_batches_per_lane_never_mix_targets_and_share_their_source_calls() -> None:
    lanes = [("A", "B"), ("B", "A"), ("A", "F"), ("F", "A")]
    specs = [
        TransferSpec(i, 0.0, *lanes[i % 4], "0xs", "0xr", 1)  # the end-of-day round-robin
        for i in range(40)
    ]
    mixed = plan_batches(specs, 5)
    assert any(len({s.target for s in b.items}) > 1 for b in mixed), "per source: mixed"
    batches = plan_batches(specs, 5, by="lane")
    assert sorted(s.index for b in batches for s in b.items) == list(range(40))
    for b in batches:
        assert len({(s.source, s.target) for s in b.items}) == 1 and len(b.items) == 5
        assert [s.index for s in b.items] == sorted(s.index for s in b.items)
    assert len(batches) == 8 and len(mixed) == 8
    slots = submit_slots(batches, "lane")
    # A's two lanes share its 8 calls; B and F have one lane each
    assert slots == {("A", "B"): 4, ("A", "F"): 4, ("B", "A"): 8, ("F", "A"): 8}
    assert {slot_key(b, "lane") for b in batches} == set(slots)
    assert submit_slots(mixed) == {("A", ""): 8, ("B", ""): 8, ("F", ""): 8}
    assert SUBMITS_PER_LEDGER == 8
    many = [TransferSpec(i, 0.0, "A", f"T{i}", "0xs", "0xr", 1) for i in range(12)]
    assert set(submit_slots(plan_batches(many, 1, by="lane"), "lane").values()) == {1}
    with pytest.raises(ValueError, match="grouped by one of source, lane"):
        plan_batches(specs, 5, by="target")
    o = parse_args(["--scenario", "end-of-day", "--batch-by", "lane", "--anvil-states", "64"])
    assert (o.batch_by, o.anvil_states) == ("lane", 64)
    assert mode_of(o)["batch_by"] == "lane" and make_system(Path("/x"), o).anvil_states == 64
    assert parse_args([]).anvil_states == 0 and parse_args([]).batch_by == "source"
    for bad in (["--anvil-states", "-1"], ["--batch-by", "target"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_settle_by_lane_is_each_lanes_own_span() -> None:
    def done(i: int, source: str, target: str, end: float) -> TransferResult:
        r = TransferResult(TransferSpec(i, 0.0, source, target, "0xs", "0xr", 1))
        r.final_state, r.state_at = "COMMITTED", {"COMMITTED": end}
        return r

    got = settle_by_lane(
        [done(0, "A", "B", 10.0), done(1, "A", "F", 40.0), done(2, "A", "B", 20.0)]
    )
    assert list(got) == ["A->B", "A->F"]
    assert (got["A->B"]["time_to_settle_s"], got["A->B"]["sustained_per_s"]) == (20.0, 0.1)
    assert got["A->F"]["time_to_settle_s"] == 40.0 and got["A->F"]["settled"] == 1


def test_the_runs_lanes_are_the_hubs_in_the_end_of_day_scenario() -> None:
    """The report's config line and the per-lane summary use these: a ring over three
    ledgers was printed for the end-of-day scenario, whose transfers run the hub's lanes."""
    geth = parse_args(["--scenario", "end-of-day", "--ledgers", "geth,geth,fabric"])
    hub, other, fabric = "brokerage-geth", "brokerage-geth2", "brokerage-f"
    assert lanes_of(geth) == ((hub, other), (other, hub), (hub, fabric), (fabric, hub))
    ring = parse_args(["--ledgers", "geth,geth,fabric"])
    assert lanes_of(ring) == ((hub, other), (other, fabric), (fabric, hub))


def test_end_of_day_lanes_and_plan() -> None:
    lanes = end_of_day_lanes(["A", "B", "F"], ["anvil", "anvil", "fabric"])
    assert lanes == (("A", "B"), ("B", "A"), ("A", "F"), ("F", "A"))
    assert end_of_day_lanes(["F", "A"], ["fabric", "anvil"]) == (("A", "F"), ("F", "A"))
    with pytest.raises(ValueError, match="needs an EVM ledger"):
        end_of_day_lanes(["F"], ["fabric"])
    hub_last = end_of_day_lanes(["C", "F", "G"], ["cometbft", "fabric", "geth"])
    assert hub_last == (("G", "C"), ("C", "G"), ("G", "F"), ("F", "G")), "CometBFT is no hub"
    holders = ["h0", "h1", "h2"]
    plan = plan_end_of_day(9, lanes, holders, holders)
    assert all(s.at == 0.0 for s in plan)
    assert [(s.source, s.target) for s in plan[:4]] == list(lanes)
    assert all(s.sender != s.recipient for s in plan)
    assert [s.amount for s in plan[:6]] == [1, 2, 3, 4, 5, 1]
    with pytest.raises(ValueError, match="two holders"):
        plan_end_of_day(1, lanes, ["h0"], ["h0"])


def test_curve_rates_and_stop_rule() -> None:
    assert curve_rates(2, 32, 5) == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert curve_rates(3, 3, 1) == [3.0]
    assert not saturated_point(10, 10 * CURVE_KNEE)
    assert saturated_point(10, 10 * CURVE_KNEE - 0.01)


def result(
    i: int, start: float, final: str | None, at: float, due: float = 0.0, rpc: float = 0.5
) -> TransferResult:
    r = TransferResult(spec(i, "a", at=due), submit_start=start, submit_rpc=rpc)
    if final is not None:
        r.final_state, r.state_at[final] = final, at
    return r


def test_settle_stats() -> None:
    results = [
        result(0, 0.0, "COMMITTED", 4.0),
        result(1, 1.0, "ABORTED", 9.0),  # ends at 10 s
        result(2, 2.0, "COMMITTED", 2.0),
        result(3, 2.0, None, 0.0),  # never terminal: not settled
    ]
    s = settle_stats(results)
    assert (s["settled"], s["committed"], s["time_to_settle_s"]) == (3, 2, 10.0)
    assert s["sustained_per_s"] == pytest.approx(0.3)
    assert s["latency_s"]["p50"] == 4.0
    assert s["accepted_per_s"] == pytest.approx(4 / 2.5)  # last call answered at 2.5 s
    # Batch mode: a transfer due at 0 s sent with its batch at 3 s waited 3 s for it.
    batched = [result(0, 3.0, "COMMITTED", 2.0, due=0.0), result(1, 3.0, "COMMITTED", 4.0, 3.0)]
    b = settle_stats(batched)
    assert b["time_to_settle_s"] == 7.0 and b["latency_from_due_s"]["p50"] == 4.5
    assert settle_stats([result(0, 0.0, None, 0.0)])["time_to_settle_s"] is None


def test_gas_and_block_use() -> None:
    receipts = {
        "a": [
            {"step": "lock", "gasUsed": 100, "block": 1},
            {"step": "lock", "gasUsed": 300, "block": 2},
            {"step": "burn", "gasUsed": 200, "block": 2},
        ]
    }
    g = gas_summary(receipts, transfers=2, batches=1)["a"]
    assert (g["transactions"], g["gas"], g["gas_per_transfer"], g["gas_per_batch"]) == (
        3,
        600,
        300.0,
        600.0,
    )
    assert g["transactions_per_transfer"] == 1.5
    assert g["gas_per_step_p50"] == {"lock": 200.0, "burn": 200.0}
    # A batched step's one transaction, recorded by each of its items, is counted once.
    recorded = [("lock", "0x1"), ("lock", "0x1"), ("burn", "0x2"), ("lock", "0x1"), ("lock", "0x3")]
    assert distinct_transactions(recorded) == [("lock", "0x1"), ("burn", "0x2"), ("lock", "0x3")]
    u = block_use(
        [
            {"gasUsed": 95, "gasLimit": 100, "transactions": 7},
            {"gasUsed": 10, "gasLimit": 100, "transactions": 1},
        ]
    )
    assert u["mean_gas_share"] == pytest.approx(0.525) and u["max_gas_share"] == 0.95
    assert u["full_share"] == 0.5 and u["max_transactions"] == 7
    assert (u["transactions"], u["gas"]) == (8, 105)
    assert block_use([])["blocks"] == 0


def cpu(busy: float, others: float = 0.0, **procs: float) -> dict[str, Any]:
    return {
        "host_busy_pct": busy,
        "other_processes_cpu_s": others,
        "processes": {n: {"avg_pct": p, "cpu_s": p / 10} for n, p in procs.items()},
    }


def test_what_saturated_first() -> None:
    idle_blocks = {"a": block_use([{"gasUsed": 1, "gasLimit": 100}])}
    full_blocks = {"a": block_use([{"gasUsed": 99, "gasLimit": 100}] * 3)}
    # Full blocks win over a busy host: the ledger was the limit.
    s = saturation(cpu(99, coordinator=80), full_blocks)
    assert s["what"] == "ledger a block gas" and s["top_process"] == "coordinator"
    # A busy host names the process with the highest CPU share.
    s = saturation(cpu(95, coordinator=40, **{"relayer-a": 70}), idle_blocks)
    assert s["what"] == "host CPU, led by relayer-a"
    # A busy host taken mostly by processes outside the run is a contended host.
    s = saturation(cpu(100, others=50.0, coordinator=40), idle_blocks)
    assert s["what"] == "host CPU, taken mostly by other processes (contended host)"
    assert "coordinator" in s["why"]
    # Neither: nothing saturated (the top process is still named).
    s = saturation(cpu(50, coordinator=40), idle_blocks)
    assert s["what"] == "nothing" and "coordinator" in s["why"]
    assert saturation(None, {})["what"] == "nothing"


def test_bridge_cpu_per_transfer_counts_bridge_processes_only() -> None:
    table = {
        "processes": {
            "coordinator": {"cpu_s": 1.0},
            "relayer-brokerage-a": {"cpu_s": 2.0},
            "verifier-0": {"cpu_s": 0.5},
            "anvil-brokerage-a": {"cpu_s": 9.0},
            "bench-client": {"cpu_s": 9.0},
        }
    }
    ms = bridge_cpu_ms(table, transfers=100)
    assert ms == {
        "coordinator": 10.0,
        "relayer-brokerage-a": 20.0,
        "verifier-0": 5.0,
        "total": 35.0,
    }
    assert bridge_cpu_ms(None, 10) == {} and bridge_cpu_ms(table, 0) == {}
    # --store postgres: the database server's processes are the bridge's, summed
    table["processes"] |= {"postgres:postmaster": {"cpu_s": 0.1}, "postgres:77": {"cpu_s": 0.4}}
    assert bridge_cpu_ms(table, transfers=100)["postgres"] == pytest.approx(5.0)
    assert bridge_cpu_ms(table, transfers=100)["total"] == pytest.approx(40.0)


def test_each_bridge_process_alone_fills_a_core_at_its_own_rate() -> None:
    """``one_core_at``: 1000 / CPU-ms per transfer per bridge process, lowest first; not the
    total, not the database server (many processes), never a division by zero."""
    ms = {"relayer-brokerage-a": 1.25, "coordinator": 2.5, "verifier-0": 0.4, "postgres": 3.0}
    alone = one_core_at(ms | {"idle": 0.0, "total": 7.15})
    assert list(alone) == ["coordinator", "relayer-brokerage-a", "verifier-0"]
    assert alone["coordinator"] == pytest.approx(400.0)
    assert alone["relayer-brokerage-a"] == pytest.approx(800.0)
    assert alone["verifier-0"] == pytest.approx(2500.0)
    assert one_core_at({}) == {}


def test_store_argument_and_the_database_servers_processes(tmp_path: Path) -> None:
    """``--store postgres`` reaches the system (on the cluster the run starts) and its
    mode; ``postgres_pids`` finds the postmaster listening on the port and what it forked,
    never another cluster's nor an unrelated process."""
    from transfers_metrics import postgres_pids

    assert (parse_args([]).store, mode_of(parse_args([]))["store"]) == ("sqlite", "sqlite")
    pg = parse_args(["--store", "postgres"])
    system = make_system(Path("/nonexistent"), pg, "postgresql://postgres@127.0.0.1:5999/postgres")
    assert (system.store, system.postgres_server, mode_of(pg)["store"]) == (
        "postgres", "postgresql://postgres@127.0.0.1:5999/postgres", "postgres",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parse_args(["--store", "mysql"])

    def proc(pid: int, ppid: int, *argv: str, comm: str = "postgres") -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    proc(10, 1, "/usr/lib/postgresql/15/bin/postgres", "-D", "/d", "-p", "5999", "-k", "/s")
    proc(11, 10, "postgres: checkpointer")
    proc(12, 10, "postgres: postgres bench 127.0.0.1(4242) idle")
    proc(20, 1, "/usr/lib/postgresql/15/bin/postgres", "-D", "/e", "-p", "6000")  # another
    proc(21, 20, "postgres: checkpointer")
    proc(30, 1, "/bin/sleep", "-p", "5999", comm="sleep (x) y")  # not a postmaster
    (tmp_path / "self").mkdir()
    assert postgres_pids(5999, tmp_path) == {
        "postgres:postmaster": 10, "postgres:11": 11, "postgres:12": 12,
    }  # fmt: skip
    assert postgres_pids(6001, tmp_path) == {}, "nothing listens there"


def test_the_soak_batches_consecutive_moves_per_source_and_sends_each_when_complete() -> None:
    from soak import Move
    from soak import plan_batches as soak_batches

    moves = [Move(f"k{i}", "h", "r", "a" if i % 2 else "b", "x", 1) for i in range(7)]
    batches = soak_batches(moves, 2)
    assert sorted(m.key for _, group in batches for m in group) == sorted(m.key for m in moves)
    for due, group in batches:
        assert len({m.src for m in group}) == 1 and len(group) <= 2
        assert due >= max(moves.index(m) for m in group)  # sent once its last move is due
    assert [(due, [m.key for m in g]) for due, g in batches[:2]] == [
        (2, ["k0", "k2"]),
        (3, ["k1", "k3"]),
    ]
    assert [len(g) for _, g in batches] == [2, 2, 2, 1]


def test_geth_request_counts_are_read_per_method() -> None:
    """Each method's success and failure counts, but the devnet authority's."""
    from transfers_metrics import geth_rpc_counts

    text = "\n".join(
        [
            "# TYPE rpc_duration_all_count counter",
            "rpc_duration_all_count 14",
            "rpc_duration_eth_blockNumber_success_count 4",
            'rpc_duration_eth_blockNumber_success {quantile="0.5"} 27073.5',
            "rpc_duration_eth_call_success_count 7",
            "rpc_duration_eth_call_failure_count 2",
            "rpc_duration_eth_chainId_success_count 0",
            "rpc_duration_engine_forkchoiceUpdatedV3_success_count 1",
            "rpc_requests 99",
        ]
    )
    # every method together (no _success/_failure), zero counts and the block authority's
    # Engine API calls are not the bridge's methods
    assert geth_rpc_counts(text) == {"eth_blockNumber": 4, "eth_call": 9}


def _log(path: Path, *entries: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as out:
        for e in entries:
            out.write(json.dumps(e) + "\n")


def test_the_supply_feed_is_counted_from_the_log_fields(tmp_path: Path) -> None:
    """Records published and given up (coordinator), each member's signed records and its
    refused supply proposals by reason; other refusals, other events and non-JSON lines do
    not count; the delta is the load's window."""
    from transfers_feed import FeedCounts, feed_delta, feed_lines, read_feed_counts

    published = {"event": "supply record published", "security": "KR", "sequence": 1}
    gave_up = {"event": "supply record not produced; retried on the next change or heartbeat"}
    signed = {"event": "supply record signed"}
    refused = {"event": "request refused", "method": "supply", "reason": "SupplyRefused"}
    _log(tmp_path / "coordinator.log", published, {"event": "authorisation", "x": "supply"})
    _log(tmp_path / "verifier-0.log", signed, refused)
    _log(tmp_path / "verifier-1.log", signed)
    before = read_feed_counts(tmp_path)
    assert before == FeedCounts(1, 0, {"verifier-0": 1, "verifier-1": 1},
                                {"verifier-0": {"SupplyRefused": 1}, "verifier-1": {}})  # fmt: skip
    _log(tmp_path / "coordinator.log", published, published, gave_up)
    with (tmp_path / "coordinator.log").open("a") as out:
        out.write("not json, supply\n")
    _log(tmp_path / "verifier-0.log", signed, signed, refused, refused,
         {**refused, "reason": "SupplyAnchorInvalid"},
         {**refused, "method": "sign"})  # fmt: skip
    _log(tmp_path / "verifier-1.log", signed, signed)
    feed = feed_delta(before, read_feed_counts(tmp_path))
    assert feed == {
        "published": 2,
        "gave_up": 1,
        "signed": {"verifier-0": 2, "verifier-1": 2},
        "refused": {"verifier-0": {"SupplyRefused": 2, "SupplyAnchorInvalid": 1}, "verifier-1": {}},
    }
    assert feed_lines(feed) == [
        "supply feed during the load: 2 records published, 1 publications given up;"
        " verifier-0 signed 2 refused 3, verifier-1 signed 2 refused 0"
        " (SupplyRefused 2, SupplyAnchorInvalid 1)"
    ]
    assert read_feed_counts(tmp_path / "absent") == FeedCounts()
