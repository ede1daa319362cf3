"""Does a node's ``eth_call`` at ``latest`` read one block? A probe of the devnet's anvil.

The EVM adapter may date a read at ``latest`` by the ``block.number`` the call itself reports
(finality depth 0, the lens; ``docs/operators/evm-read-costs.md``). That is sound only when
the node evaluates the call on one block: that block's number and that block's state. This
script starts an anvil (the devnet's binary and flags), deploys a probe contract whose call
returns ``(block.number, counter)`` and whose transactions add one to the counter, has
``--senders`` threads send transactions for ``--seconds`` while one thread reads ``latest``
and then the block the answer named, and counts the answers whose block number or counter
differ. Prints the counts and writes them as JSON with ``--json``. Bounded by ``--seconds``.

    .venv/bin/python bench/evm_latest_probe.py --seconds 25 --senders 3

Measured (2026-12-06, the 2-core VM, anvil 1.7.1, 1 s blocks, three senders): 11 of 12,634
and 15 of 7,840 answers at ``latest`` named a block whose state they did not read (about one
per block, older or newer state). So the adapter reads supply at a block named by number.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bridge.devnet.anvil import AnvilNode

PROBE_RUNTIME = "3615600f57600054600101600055005b4360005260005460205260406000f3"
"""Runtime: with calldata, ``counter += 1``; without, return ``(block.number, counter)``."""
PROBE_INIT = "601f600c600039601f6000f3" + PROBE_RUNTIME
"""Creation code: copy the 31-byte runtime to memory and return it."""


def _answer(raw: str) -> tuple[int, int]:
    """``(block.number, counter)`` from the probe's 64-byte answer."""
    return int(raw[2:66], 16), int(raw[66:130], 16)


def _account(node: AnvilNode, index: int) -> str:
    """A funded address anvil sends for (impersonated: no key needed)."""
    address = "0x" + f"{0xB0B0 + index:040x}"
    node.fund(address)
    node.rpc("anvil_impersonateAccount", [address])
    return address


def _deploy(node: AnvilNode, sender: str, block_time: float) -> str:
    tx = node.rpc("eth_sendTransaction", [{"from": sender, "data": "0x" + PROBE_INIT}])
    deadline = time.monotonic() + 10 * max(block_time, 0.5)
    while time.monotonic() < deadline:
        receipt = node.rpc("eth_getTransactionReceipt", [tx])
        if receipt is not None:
            return str(receipt["contractAddress"])
        time.sleep(0.1)
    raise TimeoutError("the probe contract was not mined")


def probe(seconds: float, senders: int, block_time: float) -> dict[str, Any]:
    """Run the probe on a fresh anvil; the counts (every thread and the node stop)."""
    with tempfile.TemporaryDirectory(prefix="kstb-probe-") as tmp:
        node = AnvilNode("probe", 31337, block_time, Path(tmp)).start()
        try:
            contract = _deploy(node, _account(node, 0), block_time)
            stop = threading.Event()
            sent = [0] * senders

            def send(i: int, sender: str) -> None:
                call = {"from": sender, "to": contract, "data": "0x01", "gas": hex(60_000)}
                while not stop.is_set():
                    node.rpc("eth_sendTransaction", [call])
                    sent[i] += 1

            threads = [
                threading.Thread(target=send, args=(i, _account(node, i + 1)), daemon=True)
                for i in range(senders)
            ]
            for t in threads:
                t.start()
            first = int(node.rpc("eth_blockNumber", []), 16)
            reads, mismatches = 0, 0
            examples: list[dict[str, list[int]]] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                number, count = _answer(node.rpc("eth_call", [{"to": contract}, "latest"]))
                at, count_at = _answer(node.rpc("eth_call", [{"to": contract}, hex(number)]))
                reads += 1
                if (at, count_at) != (number, count):
                    mismatches += 1
                    if len(examples) < 10:
                        examples.append({"latest": [number, count], "at_block": [at, count_at]})
            stop.set()
            for t in threads:
                t.join(timeout=15)
            last = int(node.rpc("eth_blockNumber", []), 16)
            mined = _answer(node.rpc("eth_call", [{"to": contract}, "latest"]))[1]
        finally:
            node.stop()
    return {
        "seconds": seconds,
        "senders": senders,
        "block_time": block_time,
        "blocks": last - first,
        "transactions_sent": sum(sent),
        "transactions_mined": mined,
        "reads": reads,
        "mismatches": mismatches,
        "examples": examples,
        "machine": {"python": platform.python_version(), "arch": platform.machine()},
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="probe length (25 s)")
    parser.add_argument("--senders", type=int, default=3, help="sending threads (3)")
    parser.add_argument("--block-time", type=float, default=1.0, help="anvil block time (1 s)")
    parser.add_argument("--json", type=Path, default=None, help="write the counts here")
    args = parser.parse_args(argv)
    out = probe(args.seconds, args.senders, args.block_time)
    rate = out["transactions_mined"] / max(1.0, args.seconds)
    print(
        f"{out['reads']} reads at latest over {out['blocks']} blocks (about {rate:.0f}"
        f" transactions/s mined): {out['mismatches']} named a block whose state they did"
        " not read"
    )
    for example in out["examples"]:
        print(f"  latest answered {example['latest']}, the block it named {example['at_block']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
