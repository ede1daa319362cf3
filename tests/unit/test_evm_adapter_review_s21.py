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
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.ledgers.evm.calls import events_of
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
