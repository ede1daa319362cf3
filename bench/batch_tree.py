"""CPU per batch certificate's Merkle work: what the coordinator does to hand out each item's
proof (issue 14 item 3); a member only builds the tree, a fifth of it.

For one batch of ``--items`` claims: build the tree (a leaf digest per claim, the nodes up
to the root), then per item take its proof and check it against the root, as
``bridge.coordinator.batch_certs.check_items`` does. Every hash is the protocol core's
``keccak256``, so this is the figure that moves with the Keccak implementation.

    .venv/bin/python bench/batch_tree.py --items 50 --rounds 400 --json .run/bench/batch_tree.json

Prints microseconds of CPU (``time.process_time``) per batch and per item. Bounded:
``--rounds`` batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from bridge.core import batch


def claims(items: int) -> list[batch.BatchClaim]:
    """``items`` distinct claims of one kind for one endpoint and epoch."""

    def word(i: int) -> bytes:
        return i.to_bytes(32, "big")

    return [
        batch.BatchClaim(word(1), word(2), word(3), 1, 2, word(1_000 + i), word(2_000 + i))
        for i in range(items)
    ]


def one_batch(of: list[batch.BatchClaim]) -> None:
    """Build the batch, then take and check every item's proof."""
    built = batch.build_batch(of)
    for claim in of:
        if not batch.verify_proof(claim.leaf, built.proof(claim), built.root):
            raise AssertionError("a proof does not verify")


def run(items: int, rounds: int) -> dict[str, Any]:
    """CPU per batch and per item over ``rounds`` batches (after a short warm-up)."""
    of = claims(items)
    for _ in range(min(20, rounds)):
        one_batch(of)
    start = time.process_time()
    for _ in range(rounds):
        one_batch(of)
    per_batch = (time.process_time() - start) / rounds * 1e6
    return {"items": items, "rounds": rounds, "batch_us": round(per_batch, 1),
            "item_us": round(per_batch / items, 2)}  # fmt: skip


def _positive(text: str) -> int:
    """An argument of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    """Run, print, and write JSON with ``--json``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=_positive, default=50)
    p.add_argument("--rounds", type=_positive, default=400)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = run(args.items, args.rounds)
    print(f"{out['items']} claims: {out['batch_us']} µs per batch, {out['item_us']} µs per item")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out["machine"] = platform.processor() or platform.machine()
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
