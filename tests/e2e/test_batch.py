"""End to end: the batch API (ADR 0023) on the running system (mTLS, anvil ledgers).

One batch from brokerage-a mixes transfers to eligible and to ineligible recipients with
items the coordinator refuses (malformed, another ledger's sender, duplicate keys): the
refused items record nothing, the eligible ones commit, the ineligible ones abort on the
target ledger, each alone, and the balances are exact. A replay returns the same results,
the same batch id with other items is ALREADY_EXISTS, an oversized batch or one from
another brokerage's ledger is refused whole, and WatchBatch reports every item.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bridge.cli import journal
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import demo_request, eligible_everywhere

pytestmark = [pytest.mark.e2e, pytest.mark.batch, pytest.mark.security]

A, B = "brokerage-a", "brokerage-b"
OUT = S.BatchItemOutcome


@pytest.fixture
def brokerage_a(system: LocalSystem) -> Iterator[transfer_pb2_grpc.TransferServiceStub]:
    with system.channel(f"brokerage:{A}") as ch:
        yield transfer_pb2_grpc.TransferServiceStub(ch)


def _batch(
    system: LocalSystem, items: list[S.SubmitTransferRequest], batch_id: str | None = None
) -> S.SubmitTransfersRequest:
    """A batch from brokerage-a, every well-formed item instructed by its devnet key."""
    signed = []
    for item in items:
        try:
            signed.append(system.brokerage.instruct(item))
        except Exception:  # malformed: sent as it is, refused by the coordinator
            signed.append(item)
    return S.SubmitTransfersRequest(
        batch_id=batch_id or str(uuid.uuid4()), source_ledger=A, items=signed
    )


def _status(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()


def test_a_batch_commits_the_eligible_items_and_aborts_the_ineligible(
    system: LocalSystem, brokerage_a, stub
) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, holder.address)
    good = [DevAccount.generate() for _ in range(2)]
    for r in good:
        b.set_eligible(DEMO_ISIN, r.address)
    bad = [DevAccount.generate() for _ in range(2)]  # never made eligible on brokerage-b
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    foreign = demo_request(holder.address, good[0].address, "1", source=B, target=A)
    dup = "dup-" + uuid.uuid4().hex
    items = [
        demo_request(holder.address, good[0].address, "10"),  # 0 commits
        demo_request(holder.address, bad[0].address, "5"),  # 1 aborts on brokerage-b
        demo_request(holder.address, good[0].address, "0"),  # 2 malformed amount
        foreign,  # 3 another brokerage's ledger
        demo_request(holder.address, good[1].address, "20"),  # 4 commits
        demo_request(holder.address, bad[1].address, "7"),  # 5 aborts
    ]
    for _ in range(2):  # 6, 7 the same key twice: both refused
        twin = demo_request(holder.address, good[1].address, "1")
        twin.idempotency_key = dup
        items.append(twin)
    request = _batch(system, items)
    resp = brokerage_a.SubmitTransfers(request, timeout=60)
    assert resp.created and resp.batch_id == request.batch_id
    outcomes = [r.outcome for r in resp.results]
    assert outcomes == [
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_REFUSED,
        OUT.BATCH_ITEM_OUTCOME_REFUSED,
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_REFUSED,
        OUT.BATCH_ITEM_OUTCOME_REFUSED,
    ]
    assert [r.index for r in resp.results] == list(range(8))
    errors = {r.index: (r.error.code, r.error.reason) for r in resp.results if r.HasField("error")}
    assert errors == {
        2: ("INVALID_ARGUMENT", "INVALID_REQUEST"),
        3: ("PERMISSION_DENIED", "PERMISSION_DENIED"),
        6: ("INVALID_ARGUMENT", "INVALID_REQUEST"),
        7: ("INVALID_ARGUMENT", "INVALID_REQUEST"),
    }
    assert "occurs 2 times" in resp.results[6].error.message
    assert resp.results[2].error.metadata["retryable"] == "false"
    # Nothing was recorded for a refused item: its key is still free.
    for index in (3, 6):
        assert not any(
            t.idempotency_key == items[index].idempotency_key
            for t in stub.ListTransfers(S.ListTransfersRequest(page_size=500), timeout=10).transfers
        )

    # A replay (same batch id, same items) answers the recorded results, creates nothing.
    again = brokerage_a.SubmitTransfers(request, timeout=60)
    assert not again.created
    assert [
        (r.index, r.outcome, r.transfer.transfer_id, r.error.reason) for r in again.results
    ] == [(r.index, r.outcome, r.transfer.transfer_id, r.error.reason) for r in resp.results]
    # The same batch id with other items is refused whole.
    other = S.SubmitTransfersRequest()
    other.CopyFrom(request)
    del other.items[-1]
    with pytest.raises(grpc.RpcError) as info:
        brokerage_a.SubmitTransfers(other, timeout=30)
    assert _status(info.value) == grpc.StatusCode.ALREADY_EXISTS

    # Watching the batch reports every item until each is terminal.
    final: dict[int, int] = {}
    errors_seen: set[int] = set()
    for m in brokerage_a.WatchBatch(
        S.WatchBatchRequest(batch_id=request.batch_id, source_ledger=A), timeout=110
    ):
        if m.HasField("error"):
            errors_seen.add(m.index)
        else:
            final[m.index] = m.update.state
    assert errors_seen == {2, 3, 6, 7}
    assert final == {
        0: S.TRANSFER_STATE_COMMITTED,
        1: S.TRANSFER_STATE_ABORTED,
        4: S.TRANSFER_STATE_COMMITTED,
        5: S.TRANSFER_STATE_ABORTED,
    }
    # Resuming after the last update of every item: only nothing new (the stream ends).
    last = [0] * 8
    single = []
    for m in brokerage_a.WatchBatch(
        S.WatchBatchRequest(batch_id=request.batch_id, source_ledger=A), timeout=30
    ):
        single.append(m)
        if m.HasField("update"):
            last[m.index] = m.update.sequence
    # Asking for up to 100 reports per message: the same reports in fewer messages.
    grouped = list(
        brokerage_a.WatchBatch(
            S.WatchBatchRequest(
                batch_id=request.batch_id, source_ledger=A, max_items_per_message=100
            ),
            timeout=30,
        )
    )
    assert 1 <= len(grouped) < len(single)
    assert [S.WatchBatchResponse(**_fields(i)) for m in grouped for i in m.items] == single
    resumed = list(
        brokerage_a.WatchBatch(
            S.WatchBatchRequest(
                batch_id=request.batch_id,
                source_ledger=A,
                after_sequence=[s or 1 for s in last],
            ),
            timeout=30,
        )
    )
    assert resumed == []

    # Balances exact: 30 moved, the aborted 12 back with the holder, nothing in escrow.
    assert a.balance(DEMO_ISIN, holder.address) == 70
    assert b.balance(DEMO_ISIN, good[0].address) == 10
    assert b.balance(DEMO_ISIN, good[1].address) == 20
    assert all(b.balance(DEMO_ISIN, r.address) == 0 for r in bad)
    assert a.escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == 0
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply


def _fields(item: S.WatchBatchItem) -> dict[str, object]:
    """A grouped report's fields, as a one-report message holds them."""
    return {f.name: v for f, v in item.ListFields()}


def test_a_batch_is_refused_whole_when_oversized_or_from_another_ledger(
    system: LocalSystem, brokerage_a, stub
) -> None:
    holder = system.ledgers[A].make_holder(DEMO_ISIN, 10)
    eligible_everywhere(system, holder.address)
    recipient = DevAccount.generate()
    one = demo_request(holder.address, recipient.address, "1")
    # The devnet's routed client submits a batch as the source ledger's brokerage.
    routed = stub.SubmitTransfers(
        S.SubmitTransfersRequest(batch_id=str(uuid.uuid4()), source_ledger=A, items=[one]),
        timeout=30,
    )
    assert [r.outcome for r in routed.results] == [OUT.BATCH_ITEM_OUTCOME_CREATED]
    # Over max_batch_items (the devnet's default, 1000): INVALID_ARGUMENT, nothing recorded.
    oversized = S.SubmitTransfersRequest(
        batch_id=str(uuid.uuid4()), source_ledger=A, items=[one] * 1001
    )
    with pytest.raises(grpc.RpcError) as info:
        brokerage_a.SubmitTransfers(oversized, timeout=30)
    assert _status(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000 items" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        brokerage_a.WatchBatch(
            S.WatchBatchRequest(batch_id=oversized.batch_id, source_ledger=A), timeout=10
        ).__next__()
    assert _status(info.value) == grpc.StatusCode.NOT_FOUND
    # SECURITY: brokerage-a may not submit a batch from brokerage-b's ledger, nor watch one.
    foreign = S.SubmitTransfersRequest(batch_id=str(uuid.uuid4()), source_ledger=B, items=[one])
    with pytest.raises(grpc.RpcError) as info:
        brokerage_a.SubmitTransfers(foreign, timeout=30)
    assert _status(info.value) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        brokerage_a.WatchBatch(
            S.WatchBatchRequest(batch_id=foreign.batch_id, source_ledger=B), timeout=10
        ).__next__()
    assert _status(info.value) == grpc.StatusCode.PERMISSION_DENIED
    # An empty batch and a malformed batch id are refused whole.
    for bad in (
        S.SubmitTransfersRequest(batch_id=str(uuid.uuid4()), source_ledger=A),
        S.SubmitTransfersRequest(batch_id="has space", source_ledger=A, items=[one]),
    ):
        with pytest.raises(grpc.RpcError) as info:
            brokerage_a.SubmitTransfers(bad, timeout=30)
        assert _status(info.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_the_cli_submits_a_batch_file_with_one_result_per_item(
    system: LocalSystem, tmp_path: Path
) -> None:
    holder = system.ledgers[A].make_holder(DEMO_ISIN, 10)
    eligible_everywhere(system, holder.address)
    recipient = DevAccount.generate()
    lines = [
        {"security": DEMO_ISIN, "to": B, "sender": holder.address,
         "recipient": recipient.address, "amount": "3", "idempotency_key": "cli-" + uuid.uuid4().hex},
        {"security": DEMO_ISIN, "to": B, "sender": holder.address,
         "recipient": recipient.address, "amount": "-1"},
    ]  # fmt: skip
    batch_file = tmp_path / "batch.jsonl"
    batch_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch_id = "cli-" + uuid.uuid4().hex
    run = subprocess.run(
        [
            sys.executable, "-m", "bridge.cli.main", "--coordinator", system.coordinator_target,
            *system.cli_tls_args(f"brokerage:{A}"), "--json", "transfer", "submit-batch",
            str(batch_file), "--from", A, "--batch-id", batch_id,
            "--network", str(system.workdir / "network.toml"),
            "--instruction-key", str(system.workdir / "keys" / f"instruction-{A}.key"),
        ],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, PLAINTEXT_KEYS_ENV: "1"},
    )  # fmt: skip
    assert run.returncode == 3, run.stderr  # recorded, one item refused
    # (the key loader's INSECURE warning is a log line, not a result)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [(r["batch_id"], r.get("index", 0), r["outcome"]) for r in rows] == [
        (batch_id, 0, "BATCH_ITEM_OUTCOME_CREATED"),
        (batch_id, 1, "BATCH_ITEM_OUTCOME_REFUSED"),
    ]
    assert rows[0]["idempotency_key"] == lines[0]["idempotency_key"]
    assert rows[1]["error"]["code"] == "INVALID_ARGUMENT"
    assert "negative" in rows[1]["error"]["message"]


# ---- CLI retries (review F7): a run killed mid-batch, rerun, settles every item once


def _cli_batch_argv(
    system: LocalSystem, batch_file: Path, batch_id: str, timeout: float
) -> list[str]:
    return [
        sys.executable, "-m", "bridge.cli.main", "--coordinator", system.coordinator_target,
        "--timeout", str(timeout), *system.cli_tls_args(f"brokerage:{A}"), "--json",
        "transfer", "submit-batch", str(batch_file), "--from", A, "--batch-id", batch_id,
        "--network", str(system.workdir / "network.toml"),
        "--instruction-key", str(system.workdir / "keys" / f"instruction-{A}.key"),
    ]  # fmt: skip


def _cli_batch(
    system: LocalSystem, batch_file: Path, batch_id: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli_batch_argv(system, batch_file, batch_id, timeout),
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, PLAINTEXT_KEYS_ENV: "1"},
    )  # fmt: skip


def _recorded(system: LocalSystem, keys: list[str]) -> int:
    """How many of ``keys`` brokerage-a has recorded transfers for."""
    marks = ",".join("?" * len(keys))
    rows = system.query_coordinator(
        f"SELECT COUNT(*) FROM transfers WHERE source_ledger = ? AND idempotency_key IN ({marks})",
        (A, *keys),
    )
    return int(rows[0][0])


def test_a_cli_batch_killed_mid_way_is_rerun_and_settles_every_item_exactly_once(
    system: LocalSystem, brokerage_a: transfer_pb2_grpc.TransferServiceStub, tmp_path: Path
) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, holder.address)
    recipient = DevAccount.generate()
    b.set_eligible(DEMO_ISIN, recipient.address)
    explicit = "cli-retry-" + uuid.uuid4().hex
    lines = [
        {"security": DEMO_ISIN, "to": B, "sender": holder.address,
         "recipient": recipient.address, "amount": str(n + 1)}
        for n in range(6)
    ]  # fmt: skip
    lines[0]["idempotency_key"] = explicit  # the others have none: keys derived
    batch_file = tmp_path / "eod.jsonl"
    batch_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch_id = "cli-retry-" + uuid.uuid4().hex

    # The first run is killed mid-batch, once the coordinator has recorded its first item
    # (the connection drops: the coordinator stops there, no batch row is written).
    first = subprocess.Popen(
        _cli_batch_argv(system, batch_file, batch_id, timeout=60),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, PLAINTEXT_KEYS_ENV: "1"},
    )  # fmt: skip
    try:
        until = time.monotonic() + 60
        while first.poll() is None and time.monotonic() < until:
            if _recorded(system, [explicit]):
                first.kill()
                break
            time.sleep(0.01)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    derived = [journal.derived_key(batch_id, A, n, lines[n]) for n in range(1, 6)]
    print(f"killed with {_recorded(system, [explicit, *derived])} of 6 items recorded")
    # The operator reruns the same command: the journaled request, byte for byte.
    rerun = _cli_batch(system, batch_file, batch_id, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert "resending the batch journaled in" in rerun.stderr
    rows = [json.loads(line) for line in rerun.stdout.splitlines() if line.startswith("{")]
    assert [r.get("index", 0) for r in rows] == list(range(6))
    assert {r["outcome"] for r in rows} <= {
        "BATCH_ITEM_OUTCOME_CREATED", "BATCH_ITEM_OUTCOME_EXISTING"
    }  # fmt: skip
    assert rows[0]["idempotency_key"] == explicit
    assert [bool(r.get("key_derived")) for r in rows] == [False] + [True] * 5
    keys = [r["idempotency_key"] for r in rows]
    assert keys == [explicit, *derived]
    for key in keys:  # every item recorded exactly once
        assert _recorded(system, [key]) == 1, key

    # A third run prints the recorded results (the batch row), the same transfers.
    third = _cli_batch(system, batch_file, batch_id, timeout=60)
    assert third.returncode == 0, third.stderr
    again = [json.loads(line) for line in third.stdout.splitlines() if line.startswith("{")]
    assert [r["transfer"]["transfer_id"] for r in again] == [
        r["transfer"]["transfer_id"] for r in rows
    ]
    assert [r["outcome"] for r in again] == [r["outcome"] for r in rows]  # as recorded

    # Another file under the same batch id: refused before anything is sent.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**lines[1], "amount": "50"}) + "\n")
    refused = _cli_batch(system, other, batch_id, timeout=60)
    assert refused.returncode == 2
    assert f"the batch id {batch_id!r} was already used for another input" in refused.stderr

    # Everything settles once: 21 units moved, nothing twice, nothing left in escrow.
    for _m in brokerage_a.WatchBatch(
        S.WatchBatchRequest(batch_id=batch_id, source_ledger=A), timeout=110
    ):
        pass
    assert a.balance(DEMO_ISIN, holder.address) == 100 - 21
    assert b.balance(DEMO_ISIN, recipient.address) == 21
    assert a.escrowed(DEMO_ISIN) == 0
