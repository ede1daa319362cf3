"""Does a node answer a call at its head from that block? A probe of the devnet's anvil.

The EVM adapter reads at the finalized height, the head itself when ``finality_depth`` is 0,
and may date a read at ``latest`` by the ``block.number`` the call reports (the lens). That
is sound only when the node evaluates such a call on one block: that block's number and that
block's state. This script starts an anvil (the devnet's binary and flags), deploys a probe
contract whose call returns ``(block.number, counter)`` and whose transactions add one to
the counter, has ``--senders`` threads send transactions for ``--seconds`` while one thread
reads ``latest``, then the block the answer named, then the block before it. Once mining
stops it reads every block's counter again (the truth) and counts, for each kind of read,
the answers that did not hold their block's state. Prints the counts and writes them as
JSON with ``--json``. Bounded by ``--seconds``.

    .venv/bin/python bench/evm_latest_probe.py --seconds 25 --senders 3

Measured (2026-12-06, the 2-core VM, anvil 1.7.1, 1 s blocks, three senders, about 550
transactions a second mined): of 3,936 rounds, 10 answers at ``latest`` and 3 at the head's
own number held the state of the block being mined, under the head's number; none at the
block before. anvil answers calls at its head from its live state while it mines.
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


def _deploy(node: AnvilNode, sender: str, block_time: float) -> tuple[str, int]:
    """The probe contract's address and the block that created it."""
    tx = node.rpc("eth_sendTransaction", [{"from": sender, "data": "0x" + PROBE_INIT}])
    deadline = time.monotonic() + 10 * max(block_time, 0.5)
    while time.monotonic() < deadline:
        receipt = node.rpc("eth_getTransactionReceipt", [tx])
        if receipt is not None:
            return str(receipt["contractAddress"]), int(receipt["blockNumber"], 16)
        time.sleep(0.1)
    raise TimeoutError("the probe contract was not mined")


def probe(seconds: float, senders: int, block_time: float) -> dict[str, Any]:
    """Run the probe on a fresh anvil; the counts (every thread and the node stop)."""
    with tempfile.TemporaryDirectory(prefix="kstb-probe-") as tmp:
        node = AnvilNode("probe", 31337, block_time, Path(tmp)).start()
        try:
            contract, created = _deploy(node, _account(node, 0), block_time)
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
            samples: list[tuple[int, int, int, int, int]] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                number, count = _answer(node.rpc("eth_call", [{"to": contract}, "latest"]))
                at, count_at = _answer(node.rpc("eth_call", [{"to": contract}, hex(number)]))
                below = max(created, number - 1)
                count_below = _answer(node.rpc("eth_call", [{"to": contract}, hex(below)]))[1]
                samples.append((number, count, at, count_at, count_below))
            stop.set()
            for t in threads:
                t.join(timeout=15)
            last = int(node.rpc("eth_blockNumber", []), 16)
            mined = _answer(node.rpc("eth_call", [{"to": contract}, "latest"]))[1]
            # The truth: each block's counter read again once nothing is being mined.
            truth = {
                n: _answer(node.rpc("eth_call", [{"to": contract}, hex(n)]))[1]
                for n in sorted({s[0] for s in samples} | {max(created, s[0] - 1) for s in samples})
            }
        finally:
            node.stop()
    latest_wrong = [s for s in samples if s[1] != truth[s[0]]]
    explicit_wrong = [s for s in samples if s[2] != s[0] or s[3] != truth[s[0]]]
    below_wrong = [s for s in samples if s[4] != truth[max(created, s[0] - 1)]]
    return {
        "seconds": seconds,
        "senders": senders,
        "block_time": block_time,
        "blocks": last - first,
        "transactions_sent": sum(sent),
        "transactions_mined": mined,
        "reads": len(samples),
        "latest_wrong": len(latest_wrong),
        "explicit_wrong": len(explicit_wrong),
        "below_wrong": len(below_wrong),
        "examples": [
            {"latest": [n, c], "at_block": [a, ca], "true": truth[n]}
            for n, c, a, ca, _ in (latest_wrong + explicit_wrong)[:10]
        ],
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
        f"{out['reads']} reads at latest, each followed by a read of the block it named, over"
        f" {out['blocks']} blocks (about {rate:.0f} transactions/s mined): {out['latest_wrong']}"
        f" at latest and {out['explicit_wrong']} at the named block did not hold that block's"
        f" state (as read again once mining stopped); {out['below_wrong']} at the block before"
        " it"
    )
    for e in out["examples"]:
        print(f"  latest {e['latest']}, at the block {e['at_block']}, the block's own {e['true']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
