"""The EVM adapter's receipt and log reads without web3's result formatters (issue 14): what
a node's answer must hold, and what a missing, reverted or malformed one becomes. Pure
logic: the adapter's provider answers from the test (no node, no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from web3.types import RPCEndpoint, RPCResponse

from bridge.config import LedgerConfig
from bridge.domain.errors import Unavailable
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState
from bridge.ledgers.evm.adapter import EvmAdapter, TransactionReverted
from bridge.rpc.tls import INSECURE_ENV
from tests.unit.test_evm_adapter_review_s21 import ENDPOINT, assert_events_malformed, leg_log

pytestmark = [pytest.mark.unit, pytest.mark.batch]

TX = b"\x42" * 32


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> EvmAdapter:
    monkeypatch.setenv(INSECURE_ENV, "1")  # plain http to a node that is never reached
    cfg = LedgerConfig(LedgerId("l"), "evm", "http://127.0.0.1:1", ENDPOINT, 1, 0, 1.0)
    return EvmAdapter(cfg)


def receipt_of(tx: bytes, block: Any, status: Any, logs: Any) -> dict[str, Any]:
    """A receipt as a node sends it."""
    return {"transactionHash": "0x" + tx.hex(), "blockNumber": block, "status": status,
            "blockHash": "0x" + "02" * 32, "logs": logs}  # fmt: skip


def raw(log: dict[str, Any]) -> dict[str, Any]:
    """A formatted log as a node sends it: quantities and bytes as ``0x`` hex."""
    return {
        k: hex(v) if isinstance(v, int) else "0x" + v.hex() if isinstance(v, bytes) else v
        for k, v in log.items()
    } | {"topics": ["0x" + bytes(t).hex() for t in log["topics"]]}


LOG2 = raw(leg_log(ENDPOINT, b"\xaa" * 32, 0)) | {
    "transactionHash": "0x" + TX.hex(),
    "blockNumber": "0x2",
}
"""A well-formed endpoint log of TX in block 2 as a node sends it."""


def deep_adapter(monkeypatch: pytest.MonkeyPatch, depth: int) -> EvmAdapter:
    monkeypatch.setenv(INSECURE_ENV, "1")
    cfg = LedgerConfig(LedgerId("l"), "evm", "http://127.0.0.1:1", ENDPOINT, 1, depth, 1.0)
    return EvmAdapter(cfg)


def scripted(
    adapter: EvmAdapter,
    monkeypatch: pytest.MonkeyPatch,
    heads: list[int],
    receipts: list[tuple[int, int] | None],
) -> list[int]:
    """The adapter sees ``heads`` one by one (then times out) and its receipt reads answer
    ``receipts`` in order ((block, status) or None); returns the heads at which it read."""
    seen = iter(heads)
    answers = iter(receipts)
    reads_at: list[int] = []
    current = [-1]

    async def wait_above(height: int, deadline: float) -> int:
        head = next(seen, None)
        if head is None:
            raise TimeoutError
        assert head > height
        current[0] = head
        return head

    async def receipt(tx_hash: bytes) -> dict[str, Any] | None:
        reads_at.append(current[0])
        answer = next(answers)
        if answer is None:
            return None
        return {"blockNumber": answer[0], "status": answer[1], "logs": []}

    monkeypatch.setattr(adapter._heads, "wait_above", wait_above)
    monkeypatch.setattr(adapter, "start_head_subscription", lambda: None)
    monkeypatch.setattr(adapter, "_receipt", receipt)
    return reads_at


def final_block(adapter: EvmAdapter) -> int:
    return int(asyncio.run(adapter._final_receipt(TX, 5))["blockNumber"])


def test_a_receipt_read_when_already_final_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    reads = scripted(adapter, monkeypatch, [20], [(10, 1)])
    assert final_block(adapter) == 10
    assert reads == [20]


def test_depth_zero_reads_once_and_never_again(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = deep_adapter(monkeypatch, 0)
    reads = scripted(adapter, monkeypatch, [9, 10, 11], [(10, 1)])
    assert final_block(adapter) == 10
    assert reads == [9]  # at head 9 the block-10 receipt was not final; at 10 it is


def test_a_receipt_moved_by_a_reorg_waits_for_its_new_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    reads = scripted(adapter, monkeypatch, [10, 11, 12, 13], [(10, 1), (11, 1), (11, 1)])
    assert final_block(adapter) == 11
    assert reads == [10, 12, 13]  # nothing read at 11; re-read when each block is due


def test_a_receipt_dropped_and_mined_again_counts_only_at_its_new_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    reads = scripted(adapter, monkeypatch, [10, 12, 13, 15], [(10, 1), None, (13, 1), (13, 1)])
    assert final_block(adapter) == 13
    assert reads == [10, 12, 13, 15]


def test_a_revert_on_a_dropped_branch_is_not_final(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reverted in block 10, which a shallow reorg replaced; mined again, successfully.
    adapter = deep_adapter(monkeypatch, 2)
    reads = scripted(adapter, monkeypatch, [10, 12, 14], [(10, 0), (12, 1), (12, 1)])
    assert final_block(adapter) == 12
    assert reads == [10, 12, 14]


def test_a_revert_at_a_final_block_is_transaction_reverted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    scripted(adapter, monkeypatch, [10, 12], [(10, 0), (10, 0)])
    with pytest.raises(TransactionReverted, match="reverted"):
        asyncio.run(adapter._final_receipt(TX, 5))


def test_a_receipt_that_never_becomes_final_times_out_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    reads = scripted(adapter, monkeypatch, [10, 12, 13], [(10, 1), None, None])
    with pytest.raises(Unavailable, match="not final"):
        asyncio.run(adapter._final_receipt(TX, 5))
    assert reads == [10, 12, 13]


def answering(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, result: Any
) -> list[tuple[str, Any]]:
    """Make the adapter's node answer every request with ``result``; the requests sent."""
    sent: list[tuple[str, Any]] = []

    async def node(method: RPCEndpoint, params: Any) -> RPCResponse:
        sent.append((str(method), params))
        return {"jsonrpc": "2.0", "id": 1, "result": result}  # type: ignore[typeddict-item]

    monkeypatch.setattr(adapter._provider, "make_request", node)
    return sent


def test_a_receipt_is_read_raw_with_its_quantities_as_ints(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    late, early = (own_log(tid, index) for tid, index in ((b"\xaa" * 32, 7), (b"\xbb" * 32, 2)))
    sent = answering(adapter, monkeypatch, receipt_of(TX, "0x1f", "0x1", [late, early]))
    receipt = asyncio.run(adapter._receipt(TX))
    assert sent == [("eth_getTransactionReceipt", ("0x" + TX.hex(),))]
    assert receipt is not None
    assert (receipt["blockNumber"], receipt["status"]) == (31, 1)
    # In log order whatever order the node sent them in: a batch takes each leg's last.
    assert [lg["topics"][1] for lg in receipt["logs"]] == [b"\xbb" * 32, b"\xaa" * 32]


def own_log(tid: bytes, index: int, tx: bytes = TX, block: int = 31) -> dict[str, Any]:
    """A leg log of transaction ``tx`` in block ``block``, as a node sends it."""
    return raw(leg_log(ENDPOINT, tid, index)) | {
        "transactionHash": "0x" + tx.hex(),
        "blockNumber": hex(block),
    }


@pytest.mark.parametrize(
    "log",
    [
        own_log(b"\xaa" * 32, 0, tx=b"\x43" * 32),  # another transaction's log
        own_log(b"\xaa" * 32, 0, block=30),  # a log of another block
        own_log(b"\xaa" * 32, 0) | {"address": 17},  # an address that is not text
        own_log(b"\xaa" * 32, 0) | {"blockHash": "0x" + "03" * 32},  # another block's hash
    ],
)
def test_a_receipt_log_not_of_this_transaction_is_malformed(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, log: dict[str, Any]
) -> None:
    answering(adapter, monkeypatch, receipt_of(TX, "0x1f", "0x1", [own_log(b"\xbb" * 32, 1), log]))
    with pytest.raises(Unavailable, match="malformed receipt"):
        asyncio.run(adapter._receipt(TX))


@pytest.mark.parametrize("answer", [None, {"blockNumber": None, "status": None}])
def test_no_receipt_yet_is_none(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    answering(adapter, monkeypatch, answer)  # none, or a pending one as some nodes answer
    assert asyncio.run(adapter._receipt(TX)) is None


def test_a_reverted_receipt_carries_its_status(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    answering(adapter, monkeypatch, receipt_of(TX, "0x2", "0x0", []))
    receipt = asyncio.run(adapter._receipt(TX))
    assert receipt is not None and receipt["status"] == 0


@pytest.mark.parametrize(
    "answer",
    [
        {"blockNumber": "0x2", "transactionHash": "0x" + TX.hex(), "logs": []},  # no status
        receipt_of(TX, "12", "0x1", []),  # a decimal string is not a quantity
        receipt_of(TX, "0xzz", "0x1", []),
        receipt_of(TX, "0x-1", "0x1", []),  # int() would take the sign
        receipt_of(TX, "0x1_0", "0x1", []),  # ... and an underscore
        receipt_of(TX, -1, "0x1", []),
        receipt_of(TX, True, "0x1", []),
        receipt_of(b"\x43" * 32, "0x2", "0x1", []),  # another transaction's receipt
        {"blockNumber": "0x2", "status": "0x1", "logs": []},  # no transaction hash
        receipt_of(TX, "0x2", "0x1", "0x"),  # logs not a list
        receipt_of(TX, "0x2", "0x1", [{k: v for k, v in LOG2.items() if k != "topics"}]),
        receipt_of(TX, "0x2", "0x1", [LOG2 | {"removed": True}]),  # a reorged-away log
        receipt_of(TX, "0x2", "0x1", [None]),
        ["not", "an", "object"],
    ],
)
def test_a_malformed_receipt_is_unavailable_not_an_internal_error(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    answering(adapter, monkeypatch, answer)
    with pytest.raises(Unavailable, match="malformed receipt"):
        asyncio.run(adapter._receipt(TX))


def test_events_read_raw_logs(adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    log = raw(leg_log(ENDPOINT, b"\xaa" * 32, 4))
    sent = answering(adapter, monkeypatch, [log])
    events = asyncio.run(adapter.events(None, 3))
    assert sent[0][0] == "eth_getLogs"
    assert sent[0][1][0]["fromBlock"] == "0x0" and sent[0][1][0]["toBlock"] == "0x3"
    assert [(e.position.height, e.position.index) for e in events] == [(3, 4)]
    (event,) = events
    assert (event.transfer_id, event.leg, event.state) == (
        b"\xaa" * 32,
        Leg.OUTBOUND,
        LegState.LOCKED,
    )
    assert event.block_hash == b"\x02" * 32 and event.tx_id == "0x" + "01" * 32
    assert event.terms_hash == b"\x07" * 32


@pytest.mark.parametrize(
    "change",
    [
        {"topics": ["0x" + "aa" * 31]},  # a topic of 31 bytes
        {"blockHash": "0x" + "02" * 33},
        {"transactionHash": None},
        {"blockNumber": "3"},  # not a quantity
        {"logIndex": "0x"},
        {"data": "not hex"},
        {"topics": "0x" + "aa" * 32},  # a string, not a list of topics
        {"removed": True},  # a log of a block no longer in the chain
    ],
)
def test_a_malformed_log_is_the_nodes_error_and_nothing_is_delivered(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    good = raw(leg_log(ENDPOINT, b"\xaa" * 32, 0))
    answering(adapter, monkeypatch, [good, raw(leg_log(ENDPOINT, b"\xbb" * 32, 1)) | change])
    assert_events_malformed(adapter, "malformed answer")


@pytest.mark.parametrize("answer", [None, {"logs": []}, "0x"])
def test_an_answer_that_is_not_a_list_of_logs_is_malformed(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    answering(adapter, monkeypatch, answer)
    assert_events_malformed(adapter, "not a list")


def hanging_receipt_reads(adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Head 10, and receipt reads that never answer; the event is set once one has begun."""
    scripted(adapter, monkeypatch, [10], [])
    reading = asyncio.Event()

    async def hanging(tx_hash: bytes) -> dict[str, Any] | None:
        reading.set()
        await asyncio.Event().wait()
        return None

    monkeypatch.setattr(adapter, "_receipt", hanging)
    return reading


def test_a_receipt_read_that_hangs_ends_at_the_waits_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    hanging_receipt_reads(adapter, monkeypatch)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(Unavailable, match="not final"):
            await adapter._final_receipt(TX, 0.3)
        return loop.time() - start

    assert asyncio.run(run()) < 5  # the 0.3 s limit, not the read's own timeouts


def test_cancelling_the_waiter_during_a_receipt_read_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = deep_adapter(monkeypatch, 2)
    reading = hanging_receipt_reads(adapter, monkeypatch)

    async def run() -> None:
        waiter = asyncio.create_task(adapter._final_receipt(TX, 60))
        await reading.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(run())


@pytest.mark.parametrize("method", ["receipt", "logs"])
@pytest.mark.parametrize(
    "answer",
    [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -32000, "message": "transaction indexing is in progress"},
        },
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "limit exceeded"}},
        ["not", "a", "json-rpc", "answer"],
    ],
)
def test_a_node_error_on_a_raw_read_is_unavailable(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, method: str, answer: Any
) -> None:
    async def node(m: RPCEndpoint, params: Any) -> RPCResponse:
        return answer  # type: ignore[no-any-return]

    monkeypatch.setattr(adapter._provider, "make_request", node)
    read = adapter._receipt(TX) if method == "receipt" else adapter.events(None, 3)
    with pytest.raises(Unavailable, match="answered"):
        asyncio.run(read)


@pytest.mark.parametrize(
    ("second", "error"),
    [
        # another transfer at the same position
        (raw(leg_log(ENDPOINT, b"\xbb" * 32, 4)), "two logs"),
        # the next position, under another hash for the same block
        (raw(leg_log(ENDPOINT, b"\xbb" * 32, 5)) | {"blockHash": "0x" + "03" * 32}, "two hashes"),
    ],
)
def test_two_logs_at_one_position_or_two_hashes_for_one_block_are_the_nodes_error(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, second: dict[str, Any], error: str
) -> None:
    answering(adapter, monkeypatch, [raw(leg_log(ENDPOINT, b"\xaa" * 32, 4)), second])
    assert_events_malformed(adapter, error)


def test_the_malformed_cases_each_fail_on_their_own(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base of the one-field-off receipts above is a good receipt."""
    answering(adapter, monkeypatch, receipt_of(TX, "0x2", "0x1", [LOG2]))
    receipt = asyncio.run(adapter._receipt(TX))
    assert receipt is not None and len(receipt["logs"]) == 1


@pytest.mark.parametrize("body", [b"", b"<html>bad gateway</html>", b"\xff\xfe", b'"text"'])
def test_a_body_that_is_not_a_json_rpc_object_is_unavailable(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    async def post(*args: Any, **kwargs: Any) -> bytes:
        return body

    sessions = adapter._provider._request_session_manager
    monkeypatch.setattr(sessions, "async_make_post_request", post)
    with pytest.raises(Unavailable, match=r"not JSON|not a JSON-RPC object"):
        asyncio.run(adapter._receipt(TX))
    with pytest.raises(Unavailable, match=r"not JSON|not a JSON-RPC object"):
        asyncio.run(adapter.events(None, 3))


def test_an_error_of_this_process_is_not_taken_for_the_nodes(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug here (a TypeError, an AttributeError) propagates: retrying it as Unavailable
    would hide it for ever."""

    async def broken(method: RPCEndpoint, params: Any) -> RPCResponse:
        raise AttributeError("a bug of ours")

    monkeypatch.setattr(adapter._provider, "make_request", broken)
    with pytest.raises(AttributeError, match="a bug of ours"):
        asyncio.run(adapter._receipt(TX))


def _old_data(value: Any) -> bytes:
    """``_data`` as it was: a regex of hex digits, then fromhex."""
    import re

    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if (
        isinstance(value, str)
        and value[:2] in ("0x", "0X")
        and re.fullmatch(r"[0-9a-fA-F]*", value[2:]) is not None
    ):
        return bytes.fromhex(value[2:])
    raise ValueError(f"not hex data: {value!r}"[:200])


def test_hex_data_is_taken_and_refused_exactly_as_before() -> None:
    """``_data`` checks hex in one fromhex pass: every string the digit check took is
    taken to the same bytes, every one it refused (whitespace, signs, underscores,
    non-ASCII digits, odd lengths, no prefix) is refused with the same error type (the
    message now always names the value: an odd length used to give fromhex's)."""
    import random

    from bridge.ledgers.evm.adapter import _data

    rng = random.Random(5)
    alphabet = "0123456789abcdefABCDEF xX_+-\t\n\x0b\x0c\r\x1c\x1f\u3000\u0663\uff10g"
    cases: list[Any] = ["0x", "0X", "", "0x0", "0x 00", "0x00 ", " 0x00", "0x\u0663\u0663"]
    cases += ["0x" + "ab" * n for n in range(40)] + [b"\x01", bytearray(b"\x02"), 5, None]
    for _ in range(5000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        cases.append(rng.choice(("0x", "0X", "", "x0")) + body)
    for value in cases:
        try:
            expected: Any = _old_data(value)
        except (ValueError, TypeError) as exc:
            expected = type(exc)
        try:
            got: Any = _data(value)
        except (ValueError, TypeError) as exc:
            got = (type(exc), str(exc).startswith("not hex data: "))
        else:
            got = (got, True)
        assert got == (expected, True), value


def test_the_head_is_read_raw_as_a_quantity(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = answering(adapter, monkeypatch, "0x1f")
    assert asyncio.run(adapter.finalized_height()) == 31
    assert sent == [("eth_blockNumber", ())]


@pytest.mark.parametrize(
    "answer",
    [
        *("0x", "1f", "0x-1", "-0x1", " 0x1f", "0x 1f", "0x1_f"),
        *(-1, True, 31.0, None, ["0x1f"]),
        *(hex(2**63), 2**63, "0x" + "f" * 64),
    ],
)
def test_a_head_that_is_not_a_quantity_is_unavailable(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    """A node (or something in front of it) answering anything but a quantity: the head is
    not taken (no height is observed) and the read is asked again."""
    answering(adapter, monkeypatch, answer)
    with pytest.raises(Unavailable, match="eth_blockNumber answered"):
        asyncio.run(adapter.finalized_height())
    assert adapter._heads.head is None


def test_the_highest_head_believed_is_taken(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    answering(adapter, monkeypatch, hex(2**63 - 1))
    assert asyncio.run(adapter.finalized_height()) == 2**63 - 1


def test_an_error_answer_to_the_head_read_is_unavailable(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def node(method: RPCEndpoint, params: Any) -> RPCResponse:
        return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "syncing"}}

    monkeypatch.setattr(adapter._provider, "make_request", node)
    with pytest.raises(Unavailable, match="eth_blockNumber answered no result"):
        asyncio.run(adapter.finalized_height())
    assert adapter._heads.head is None
