"""Review s21 of the EVM adapter's lean calls: what a lying or non-compliant node can no
longer make the adapter do. Pure logic: the adapter's provider answers from the test (no
node, no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from web3.exceptions import OffchainLookup
from web3.types import RPCEndpoint, RPCResponse

from bridge.config import LedgerConfig
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.ledgers.evm.batch import batch_results
from bridge.ledgers.evm.calls import events_of
from bridge.ledgers.evm.reads import LENS_READ_ATTEMPTS, WrongBlock
from bridge.rpc.tls import INSECURE_ENV
from tests.unit.test_evm_calls import CODEC

pytestmark = [pytest.mark.unit, pytest.mark.security, pytest.mark.batch]

ENDPOINT = "0x" + "11" * 20
OTHER = "0x" + "22" * 20


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> EvmAdapter:
    monkeypatch.setenv(INSECURE_ENV, "1")  # plain http to a node that is never reached
    cfg = LedgerConfig(LedgerId("l"), "evm", "http://127.0.0.1:1", ENDPOINT, 1, 0, 1.0)
    return EvmAdapter(cfg)


def offchain_lookup_revert(sender: str) -> str:
    """An EIP-3668 ``OffchainLookup(sender, urls, callData, callback, extraData)`` revert."""
    body = CODEC.encode(
        ["address", "string[]", "bytes", "bytes4", "bytes"],
        [
            sender,
            ["https://attacker.example/{sender}/{data}.json"],
            b"\x01",
            b"\x12\x34\x56\x78",
            b"",
        ],
    )
    return "0x556f1830" + body.hex()


def test_an_offchain_lookup_revert_is_a_refusal_and_fetches_nothing(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node answering any eth_call with OffchainLookup: with CCIP read on, web3 would
    # fetch the revert's URL from this process and call back with the answer.
    requests: list[str] = []

    async def node(method: RPCEndpoint, params: Any) -> RPCResponse:
        requests.append(str(method))
        revert = offchain_lookup_revert(to_checksum_address(ENDPOINT))
        return {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": 3, "message": "execution reverted", "data": revert},
        }  # type: ignore[typeddict-item]

    fetched: list[Any] = []

    async def no_fetch(*args: Any, **kwargs: Any) -> Any:
        fetched.append(args)
        raise AssertionError("an off-chain URL was fetched")

    monkeypatch.setattr(adapter._provider, "make_request", node)
    monkeypatch.setattr("web3.eth.async_eth.async_handle_offchain_lookup", no_fetch)

    async def both() -> None:
        with pytest.raises(OffchainLookup):  # the web3 path (the lens code check uses it)
            await adapter._w3.eth.call({"to": to_checksum_address(ENDPOINT), "data": "0x"})
        with pytest.raises(OffchainLookup):  # the lean path
            await adapter._bridge.functions.ledgerId().call()

    asyncio.run(both())
    assert fetched == []
    assert requests == ["eth_call", "eth_call"]


def leg_log(address: str, tid: bytes, log_index: int) -> dict[str, Any]:
    event = events_of("BridgeEndpoint")["LegStateChanged"]
    data = CODEC.encode(event.data_types, [0, 1, 0, b"\x07" * 32, 5])  # outbound, LOCKED
    return {
        "address": to_checksum_address(address),
        "topics": [event.topic, tid, b"\x09" * 32],
        "data": data,
        "blockNumber": 3,
        "logIndex": log_index,
        "transactionIndex": 0,
        "transactionHash": b"\x01" * 32,
        "blockHash": b"\x02" * 32,
    }


def assert_events_malformed(adapter: EvmAdapter, match: str) -> None:
    """Reading events from height 3 is refused as the node's malformed answer whose message
    matches ``match`` (nothing delivered)."""
    with pytest.raises(LedgerRejected, match=match) as err:
        asyncio.run(adapter.events(None, 3))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER


def test_events_are_only_the_endpoints_own_logs(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node (or proxy) ignoring eth_getLogs' address filter returns another contract's log
    # with the same topic: it is not a leg event of this endpoint.
    own, foreign = b"\xaa" * 32, b"\xbb" * 32

    async def get_logs(lo: int, hi: int, topics: Any) -> list[Any]:
        return [leg_log(OTHER, foreign, 0), leg_log(ENDPOINT, own, 1)]

    monkeypatch.setattr(adapter, "_get_logs", get_logs)
    events = asyncio.run(adapter.events(None, 3))
    assert [(e.transfer_id, e.leg, e.state) for e in events] == [
        (own, Leg.OUTBOUND, LegState.LOCKED)
    ]


class _AheadLens:
    """A lens whose every view reports the block after the one it was asked for."""

    def __init__(self) -> None:
        self.asked: list[object] = []
        self.functions = self

    def _view(self, *args: object) -> Any:
        lens = self

        class _Call:
            async def call(self, block_identifier: object = None) -> tuple[Any, ...]:
                lens.asked.append(block_identifier)
                assert isinstance(block_identifier, int)
                return (block_identifier + 1, False, [])

        return _Call()

    legsOf = suppliesOf = holdersOf = _view


@pytest.mark.parametrize("read", ["legs", "supplies", "holders"])
def test_every_lens_read_at_a_block_refuses_an_answer_for_another_block(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """The anvil race of 2026-12-04 (a read of block 1068 answered 1069) at each caller:
    asked again, never used, then WrongBlock (an Unavailable), for legs, supplies and
    holders alike (each passes the block it asked for to the check)."""
    lens = _AheadLens()
    adapter._lens = lens  # type: ignore[assignment]
    adapter._lens_holders = True

    async def usable() -> bool:
        return True

    monkeypatch.setattr(adapter, "_lens_usable", usable)

    async def run() -> object:
        if read == "legs":
            return await adapter._legs_at(1068, [(b"\x01" * 32, Leg.OUTBOUND)])
        if read == "supplies":
            return await adapter._supplies_at(1068, [b"\x02" * 32])
        return await adapter._holders_at(1068, OTHER, [OTHER])

    with pytest.raises(WrongBlock, match="a read of block 1068 answered 1069"):
        asyncio.run(run())
    assert lens.asked == [1068] * LENS_READ_ATTEMPTS


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"blockNumber": 153}, "answered a log of block 153", id="past-the-range"),
        pytest.param({"topics": []}, "with 0 topics", id="no-topic"),
    ],
)
def test_a_log_outside_the_blocks_asked_or_without_topics_is_malformed(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], error: str
) -> None:
    """Review s22: a log of block 153 answered for blocks 0..3 was delivered, and the watcher
    would have checkpointed past blocks it never scanned; a log without topics was a bare
    IndexError. Both are the node's error now, and nothing is delivered."""

    async def get_logs(lo: int, hi: int, topics: Any) -> list[Any]:
        return [leg_log(ENDPOINT, b"\xaa" * 32, 0) | change]

    monkeypatch.setattr(adapter, "_get_logs", get_logs)
    assert_events_malformed(adapter, error)


def test_an_endpoint_log_that_does_not_decode_is_malformed(
    adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s22: a LegStateChanged log with a topic missing was web3's LogTopicError,
    untyped; now the node's error, and nothing is delivered."""

    async def get_logs(lo: int, hi: int, topics: Any) -> list[Any]:
        log = leg_log(ENDPOINT, b"\xaa" * 32, 0)
        return [log | {"topics": log["topics"][:2]}]

    monkeypatch.setattr(adapter, "_get_logs", get_logs)
    assert_events_malformed(adapter, "does not decode")


def test_a_batch_receipt_log_that_does_not_decode_is_a_value_error(adapter: EvmAdapter) -> None:
    """``batch_results`` raises ValueError (the adapter: ask the node again) for an endpoint
    log with the event's topic that does not decode, not web3's LogTopicError (INTERNAL)."""
    log = leg_log(ENDPOINT, b"\xaa" * 32, 0)
    with pytest.raises(ValueError, match="does not decode"):
        batch_results(adapter._bridge, [log | {"topics": log["topics"][:2]}], [], [])
