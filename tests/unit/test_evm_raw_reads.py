"""The EVM adapter's receipt and log reads without web3's result formatters (issue 14): what
a node's answer must hold, and what a missing, reverted or malformed one becomes. Pure
logic: the adapter's provider answers from the test (no node, no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from web3.types import RPCEndpoint, RPCResponse

from bridge.config import LedgerConfig
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState
from bridge.ledgers.evm.adapter import EvmAdapter, TransactionReverted
from bridge.rpc.tls import INSECURE_ENV
from tests.unit.test_evm_adapter_review_s21 import ENDPOINT, leg_log

pytestmark = [pytest.mark.unit, pytest.mark.batch]

TX = b"\x42" * 32


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> EvmAdapter:
    monkeypatch.setenv(INSECURE_ENV, "1")  # plain http to a node that is never reached
    cfg = LedgerConfig(LedgerId("l"), "evm", "http://127.0.0.1:1", ENDPOINT, 1, 0, 1.0)
    return EvmAdapter(cfg)


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
    log = {"address": "0x" + "11" * 20, "topics": ["0x" + "aa" * 32], "data": "0x"}
    sent = answering(adapter, monkeypatch, {"blockNumber": "0x1f", "status": "0x1", "logs": [log]})
    receipt = asyncio.run(adapter._receipt(TX))
    assert sent == [("eth_getTransactionReceipt", ("0x" + TX.hex(),))]
    assert receipt is not None
    assert (receipt["blockNumber"], receipt["status"]) == (31, 1)
    assert receipt["logs"][0]["topics"] == log["topics"]  # left as the node sent them


def test_no_receipt_yet_is_none(adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    answering(adapter, monkeypatch, None)
    assert asyncio.run(adapter._receipt(TX)) is None


def test_a_reverted_receipt_is_transaction_reverted(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    answering(adapter, monkeypatch, {"blockNumber": "0x2", "status": "0x0", "logs": []})
    with pytest.raises(TransactionReverted, match="reverted"):
        asyncio.run(adapter._receipt(TX))


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "0x1", "logs": []},  # no block number
        {"blockNumber": "0x2", "logs": []},  # no status
        {"blockNumber": "12", "status": "0x1"},  # a decimal string is not a quantity
        {"blockNumber": "0xzz", "status": "0x1"},
        {"blockNumber": None, "status": "0x1"},
        {"blockNumber": True, "status": "0x1"},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_receipt_is_unavailable_not_an_internal_error(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    answering(adapter, monkeypatch, answer)
    with pytest.raises(Unavailable, match="malformed receipt"):
        asyncio.run(adapter._receipt(TX))


def raw(log: dict[str, Any]) -> dict[str, Any]:
    """A formatted log as a node sends it: quantities and bytes as ``0x`` hex."""
    return {
        k: hex(v) if isinstance(v, int) else "0x" + v.hex() if isinstance(v, bytes) else v
        for k, v in log.items()
    } | {"topics": ["0x" + bytes(t).hex() for t in log["topics"]]}


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
    ],
)
def test_a_malformed_log_is_the_nodes_error_and_nothing_is_delivered(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    good = raw(leg_log(ENDPOINT, b"\xaa" * 32, 0))
    answering(adapter, monkeypatch, [good, raw(leg_log(ENDPOINT, b"\xbb" * 32, 1)) | change])
    with pytest.raises(LedgerRejected, match="malformed answer") as err:
        asyncio.run(adapter.events(None, 3))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER


@pytest.mark.parametrize("answer", [None, {"logs": []}, "0x"])
def test_an_answer_that_is_not_a_list_of_logs_is_malformed(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    answering(adapter, monkeypatch, answer)
    with pytest.raises(LedgerRejected, match="not a list") as err:
        asyncio.run(adapter.events(None, 3))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER
