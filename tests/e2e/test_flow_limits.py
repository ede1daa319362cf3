"""Flow limits end to end (ADR 0010): a burst above a lane's limit queues, says why, and
drains at the refill rate; an amount above the capacity is refused at submit; a large
transfer waits its delay on the target before it is minted. Conservation is exact.

Two anvil ledgers, the committee, the relayers and the coordinator as processes
(``LocalSystem``); the limits are set on the ledgers by their admins.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hexbytes import HexBytes

from bridge.cli.main import main as cli_main
from bridge.devnet.system import DEMO_ISIN, LedgerHandle, LocalSystem
from bridge.domain.flow import FlowLimit
from bridge.v1 import flow_pb2, operator_pb2_grpc, transfer_pb2_grpc
from bridge.v1 import transfer_pb2 as S
from tests.e2e.conftest import demo_request
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.governance]

A, B = "brokerage-a", "brokerage-b"
CAPACITY, WINDOW = 20, 10  # 2 units per second
PART, PARTS = 10, 5  # a burst of 50: 20 at once, then one part per 5 s (15 s for the rest)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(Path(tmp_path_factory.mktemp("flow")), block_time=0.5, transfer_ttl=120) as s:
        yield s


def lock_time(h: LedgerHandle, t: S.Transfer) -> int:
    """The block timestamp of the transfer's lock on ``h``, from the ledger's own event (the
    coordinator may not have recorded the lock's transaction if it was killed meanwhile)."""
    tid = bytes.fromhex(t.transfer_id.removeprefix("0x"))
    endpoint = h.w3.eth.contract(address=h.endpoint.address, abi=h.endpoint.abi)
    logs = endpoint.events.TransferLocked().get_logs(
        argument_filters={"transferId": tid}, from_block=0
    )
    assert len(logs) == 1, logs
    return int(h.w3.eth.get_block(logs[0]["blockNumber"])["timestamp"])


def test_a_burst_queues_in_order_and_drains_at_the_refill_rate(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    s = system
    a, b = s.ledgers[A], s.ledgers[B]
    s.set_flow_limit(A, DEMO_ISIN, B, FlowLimit(outbound_capacity=CAPACITY, window=WINDOW))
    holder = a.make_holder(DEMO_ISIN, PART * PARTS + 25)
    b.set_eligible(DEMO_ISIN, holder.address)
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    seen: dict[str, set[int]] = {}
    with s.channel(f"brokerage:{A}") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)

        def get(tid: str) -> S.Transfer:
            return stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)

        # More than the capacity itself can never go: refused before anything is recorded.
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitTransfer(
                s.brokerage.instruct(demo_request(holder.address, holder.address, "25", A, B)),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"exceeds the outbound capacity {CAPACITY}" in (refused.value.details() or "")

        tids = []
        for _ in range(PARTS):
            req = demo_request(holder.address, holder.address, str(PART), A, B)
            tids.append(
                stub.SubmitTransfer(s.brokerage.instruct(req), timeout=30).transfer.transfer_id
            )

        def watch() -> bool:
            done = True
            for tid in tids:
                try:
                    t = get(tid)
                except grpc.RpcError as exc:  # the coordinator restarting
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    return False
                if t.state == S.TRANSFER_STATE_QUEUED:
                    seen.setdefault(tid, set()).add(t.wait_reason)
                    assert t.reason.startswith("queued: "), t.reason
                    assert t.not_before.seconds > 0
                done = done and t.state == S.TRANSFER_STATE_COMMITTED
            return done

        # Mid-burst the operator sees the lane, its capacity and its queue.
        def some_queued() -> bool:
            watch()
            return bool(seen)

        eventually_sync(some_queued, 30, "a queued transfer")
        with s.channel("bridge-operator") as ch:
            lanes = (
                operator_pb2_grpc.OperatorServiceStub(ch)
                .GetFlowStatus(flow_pb2.GetFlowStatusRequest(security_id=DEMO_ISIN), timeout=30)
                .lanes
            )
        lane = next(x for x in lanes if (x.source_ledger, x.target_ledger) == (A, B))
        assert lane.queued >= 1 and int(lane.queued_units) >= PART
        assert lane.source.outbound.capacity == str(CAPACITY)
        assert lane.target.inbound.capacity == "0"  # B does not limit its inbound
        code = cli_main(
            ["--coordinator", s.coordinator_target, *s.cli_tls_args("bridge-operator"),
             "operator", "limits", DEMO_ISIN]
        )  # fmt: skip
        assert code == 0
        printed = capsys.readouterr().out
        assert f"{DEMO_ISIN} {A} -> {B}: " in printed
        assert f"/{CAPACITY} available, refills {CAPACITY} per {WINDOW} s" in printed
        assert f"inbound on {B}: unlimited" in printed
        with s.channel(f"brokerage:{A}") as ch, pytest.raises(grpc.RpcError) as denied:
            operator_pb2_grpc.OperatorServiceStub(ch).GetFlowStatus(
                flow_pb2.GetFlowStatusRequest(security_id=DEMO_ISIN), timeout=10
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The queue is only in the coordinator's store: kill -9 it mid-burst.
        assert any(get(tid).state == S.TRANSFER_STATE_QUEUED for tid in tids)
        s.processes["coordinator"].kill9()
        s.start_process("coordinator")
        eventually_sync(watch, 120, "the burst to drain")
        transfers = [get(tid) for tid in tids]

    # The waiting transfers said why: the lane's outbound capacity, or an earlier one first.
    assert len(seen) >= PARTS - CAPACITY // PART
    assert set().union(*seen.values()) <= {
        S.WAIT_REASON_SOURCE_OUTBOUND_CAPACITY,
        S.WAIT_REASON_BEHIND_EARLIER_TRANSFER,
    }
    assert all(t.wait_reason == S.WAIT_REASON_UNSPECIFIED for t in transfers)
    # In submission order, at the refill rate: 20 at once, then 10 units per 5 s. Transfers
    # admitted together (the first two; or two whose refill accrued while the coordinator
    # was down) race to the ledger, so a later one may lock up to a block (1 s of timestamp
    # at 0.5 s blocks) before an earlier one, never more.
    times = [lock_time(a, t) for t in transfers]
    assert all(times[i] <= min(times[i + 1 :]) + 1 for i in range(len(times) - 1)), times
    span = times[-1] - times[0]
    needed = (PART * PARTS - CAPACITY) * WINDOW // CAPACITY
    assert needed - 2 <= span <= needed + 20, times
    # Conservation, exactly.
    assert a.balance(DEMO_ISIN, holder.address) == 25
    assert b.balance(DEMO_ISIN, holder.address) == PART * PARTS
    assert a.escrowed(DEMO_ISIN) == 0
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply
    s.set_flow_limit(A, DEMO_ISIN, B, FlowLimit())


@pytest.mark.parametrize("side", ["target", "source"])
def test_a_large_transfer_waits_its_delay_before_the_mint(system: LocalSystem, side: str) -> None:
    """The delay held by the target's inbound lane (the target refuses the mint), or by the
    source's outbound lane (members refuse COMMIT, so nothing is minted either)."""
    s = system
    a, b = s.ledgers[A], s.ledgers[B]
    delay = 12
    on, counterpart = (B, A) if side == "target" else (A, B)
    s.set_flow_limit(on, DEMO_ISIN, counterpart, FlowLimit(large_threshold=5, large_delay=delay))
    holder = a.make_holder(DEMO_ISIN, 8)
    b.set_eligible(DEMO_ISIN, holder.address)
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    with s.channel(f"brokerage:{A}") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        req = demo_request(holder.address, holder.address, "8", A, B)
        tid = stub.SubmitTransfer(s.brokerage.instruct(req), timeout=30).transfer.transfer_id

        def delayed() -> S.Transfer | None:
            t = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
            return t if t.wait_reason == S.WAIT_REASON_LARGE_TRANSFER_DELAY else None

        waiting = eventually_sync(delayed, 60, "the large-transfer delay")
        assert waiting.state in (S.TRANSFER_STATE_TARGET_PREPARED, S.TRANSFER_STATE_COMMITTING)
        assert waiting.not_before.seconds > time.time() - 2
        assert "held by the ledgers' delay" in waiting.reason
        assert b.balance(DEMO_ISIN, holder.address) == 0  # the mint waits
        final = [
            u.state
            for u in stub.WatchTransfer(S.WatchTransferRequest(transfer_id=tid), timeout=120)
        ][-1]
        done = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
    assert final == S.TRANSFER_STATE_COMMITTED
    assert done.wait_reason == S.WAIT_REASON_UNSPECIFIED
    receipt = b.w3.eth.get_transaction_receipt(HexBytes(done.transactions["mint"]))
    minted_at = int(b.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
    assert minted_at >= waiting.not_before.seconds
    assert b.balance(DEMO_ISIN, holder.address) == 8
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply
    s.set_flow_limit(on, DEMO_ISIN, counterpart, FlowLimit())
