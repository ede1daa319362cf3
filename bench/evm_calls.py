"""CPU per EVM contract call: web3's ``ContractFunction`` against ``bridge.ledgers.evm.calls``.

Both run the same calls over a provider that answers at once with a prepared result, so the
figure is the Python work per call that the relayers and members spend around each JSON-RPC
round trip (encoding, ABI lookup, decoding, normalising), not the node's time or the
network's. The calls are the adapter's hot ones under batched load (py-spy during
``bench/soak.py --step-batching``): ``BridgeLens.legsOf`` of 50 legs, ``holderOf``,
``BridgeEndpoint.flowStatus``, ``haltStatus``, estimating and building a ``lockBatch``
transaction of 50 items, and decoding a ``LegStateChanged`` and a ``TransferLocked`` log
(every step's event, read by the watchers and from batch receipts).

    .venv/bin/python bench/evm_calls.py --rounds 300 --json .run/bench/evm_calls.json

Prints, per call, microseconds of CPU (``time.process_time``) per call for each and the ratio.
Bounded: ``--rounds`` calls of each kind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from eth_typing import ABIEvent
from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from bridge.ledgers.evm.artifacts import load_abi
from bridge.ledgers.evm.calls import ContractCalls, functions_of

ENDPOINT = to_checksum_address("0x" + "12" * 20)
LENS = to_checksum_address("0x" + "34" * 20)
TOKEN = to_checksum_address("0x" + "56" * 20)
ITEMS = 50


class Answering(AsyncBaseProvider):
    """Answers every ``eth_call`` with ``result`` (and gas estimates with a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.result = "0x"

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return {
            "jsonrpc": "2.0",
            "id": 1,
            "result": self.result if method == "eth_call" else hex(500_000),
        }

    async def is_connected(self, show_traceback: bool = False) -> bool:
        return True


def sample(abi_type: str, i: int = 0) -> Any:
    """A value of ``abi_type`` (arrays of two; the encoder's cost is what is measured)."""
    if abi_type.endswith("]"):
        size = abi_type[abi_type.rindex("[") + 1 : -1]
        inner = abi_type[: abi_type.rindex("[")]
        return [sample(inner, i) for _ in range(int(size) if size else 2)]
    if abi_type.startswith("("):
        depth, start, parts = 0, 1, []
        for k, ch in enumerate(abi_type[1:-1], start=1):
            depth += (ch == "(") - (ch == ")")
            if ch == "," and depth == 0:
                parts.append(abi_type[start:k])
                start = k + 1
        parts.append(abi_type[start:-1])
        return tuple(sample(t, i) for t in parts)
    if abi_type == "address":
        return to_checksum_address(bytes([i % 256 or 1]) * 20)
    if abi_type == "bool":
        return bool(i % 2)
    if abi_type == "bytes":
        return b""
    if abi_type.startswith("bytes"):
        return i.to_bytes(int(abi_type[5:]), "big")
    return i


Scenario = tuple[Callable[[], Any], Callable[[], Any], str]


def scenarios(w3: AsyncWeb3[Any]) -> dict[str, Scenario]:
    """Per call name: web3's bound call factory, the lean one, and a prepared result."""
    end_w3 = w3.eth.contract(address=ENDPOINT, abi=load_abi("BridgeEndpoint"))
    lens_w3 = w3.eth.contract(address=LENS, abi=load_abi("BridgeLens"))
    end = ContractCalls(w3, "BridgeEndpoint", ENDPOINT)
    lens = ContractCalls(w3, "BridgeLens", LENS)
    ids = [i.to_bytes(32, "big") for i in range(ITEMS)]
    legs = [i % 2 for i in range(ITEMS)]
    sec, other = b"\x01" * 32, b"\x02" * 32
    holder = to_checksum_address("0x" + "78" * 20)

    def result(contract: str, name: str, items: int = 1) -> str:
        outputs = functions_of(contract)[name].outputs
        values = [
            [sample(t[:-2], k) for k in range(items)] if t.endswith("[]") else sample(t)
            for t in outputs
        ]
        return "0x" + w3.codec.encode(outputs, values).hex()

    return {
        f"legsOf({ITEMS})": (
            lambda: lens_w3.functions.legsOf(ENDPOINT, ids, legs),
            lambda: lens.functions.legsOf(ENDPOINT, ids, legs),
            result("BridgeLens", "legsOf", ITEMS),
        ),
        "holderOf": (
            lambda: lens_w3.functions.holderOf(TOKEN, holder),
            lambda: lens.functions.holderOf(TOKEN, holder),
            result("BridgeLens", "holderOf"),
        ),
        "flowStatus": (
            lambda: end_w3.functions.flowStatus(sec, other),
            lambda: end.functions.flowStatus(sec, other),
            result("BridgeEndpoint", "flowStatus"),
        ),
        "haltStatus": (
            lambda: end_w3.functions.haltStatus(sec),
            lambda: end.functions.haltStatus(sec),
            result("BridgeEndpoint", "haltStatus"),
        ),
    }


async def timed(make: Callable[[], Any], rounds: int) -> float:
    """CPU microseconds per ``make().call(block_identifier=7)``."""
    start = time.process_time()
    for _ in range(rounds):
        await make().call(block_identifier=7)
    return (time.process_time() - start) / rounds * 1e6


async def build_timed(make: Callable[[], Any], rounds: int) -> float:
    """CPU microseconds per ``estimate_gas`` plus ``build_transaction`` of ``make()``."""
    fields: Any = {
        "from": to_checksum_address("0x" + "9a" * 20),
        "nonce": 1,
        "gas": 5_000_000,
        "maxFeePerGas": 2,
        "maxPriorityFeePerGas": 1,
        "chainId": 31337,
    }
    start = time.process_time()
    for _ in range(rounds):
        bound = make()
        await bound.estimate_gas({"from": fields["from"]})
        await bound.build_transaction(fields)
    return (time.process_time() - start) / rounds * 1e6


def log_of(w3: AsyncWeb3[Any], name: str) -> dict[str, Any]:
    """A log of ``BridgeEndpoint``'s event ``name`` as web3's ``eth_getLogs`` gives it."""
    event = next(
        e for e in load_abi("BridgeEndpoint") if e.get("type") == "event" and e["name"] == name
    )
    indexed = [i for i in event["inputs"] if i.get("indexed")]
    data = [i for i in event["inputs"] if not i.get("indexed")]
    data_types = [collapse_if_tuple(i) for i in data]
    topics = [HexBytes(event_abi_to_log_topic(cast(ABIEvent, event)))] + [
        HexBytes(w3.codec.encode([collapse_if_tuple(i)], [sample(collapse_if_tuple(i), 3)]))
        for i in indexed
    ]
    return {
        "address": ENDPOINT,
        "topics": topics,
        "data": HexBytes(w3.codec.encode(data_types, [sample(t, 3) for t in data_types])),
        "blockNumber": 9,
        "logIndex": 2,
        "transactionIndex": 0,
        "transactionHash": HexBytes(b"\1" * 32),
        "blockHash": HexBytes(b"\2" * 32),
    }


def decode_timed(event: Any, log: dict[str, Any], rounds: int) -> float:
    """CPU microseconds per ``event.process_log(log)`` (the arguments decoded)."""
    for _ in range(5):
        event.process_log(log)
    start = time.process_time()
    for _ in range(rounds):
        event.process_log(log)
    return (time.process_time() - start) / rounds * 1e6


async def run(rounds: int) -> dict[str, Any]:
    provider = Answering()
    w3 = AsyncWeb3(provider, middleware=[])
    rows: dict[str, Any] = {}
    for name, (web3_make, lean_make, result) in scenarios(w3).items():
        provider.result = result
        await timed(web3_make, 5)  # warm both
        await timed(lean_make, 5)
        theirs = await timed(web3_make, rounds)
        ours = await timed(lean_make, rounds)
        rows[name] = {"web3_us": round(theirs, 1), "calls_us": round(ours, 1)}
    end_w3 = w3.eth.contract(address=ENDPOINT, abi=load_abi("BridgeEndpoint"))
    end = ContractCalls(w3, "BridgeEndpoint", ENDPOINT)
    items = [
        sample(functions_of("BridgeEndpoint")["lockBatch"].inputs[0][:-2], i) for i in range(ITEMS)
    ]
    instructions = [b""] * ITEMS
    theirs = await build_timed(lambda: end_w3.functions.lockBatch(items, instructions), rounds)
    ours = await build_timed(lambda: end.functions.lockBatch(items, instructions), rounds)
    rows["lockBatch(50) estimate+build"] = {"web3_us": round(theirs, 1), "calls_us": round(ours, 1)}
    for event in ("LegStateChanged", "TransferLocked"):
        log = log_of(w3, event)
        theirs = decode_timed(getattr(end_w3.events, event)(), log, rounds)
        ours = decode_timed(getattr(end.events, event)(), log, rounds)
        rows[f"{event} log decoded"] = {"web3_us": round(theirs, 1), "calls_us": round(ours, 1)}
    for row in rows.values():
        row["ratio"] = round(row["web3_us"] / row["calls_us"], 2)
    return rows


def main() -> None:
    """Run the comparison, print a table, and write JSON with ``--json``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = asyncio.run(run(args.rounds))
    print(f"{'call':32} {'web3 µs':>10} {'calls µs':>10} {'ratio':>7}")
    for name, row in rows.items():
        print(f"{name:32} {row['web3_us']:>10} {row['calls_us']:>10} {row['ratio']:>7}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"machine": platform.processor() or platform.machine(), "rounds": args.rounds,
               "calls": rows}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
