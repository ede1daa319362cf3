"""The coordinator's coalescer alone: CPU per driver step that reads two keys.

Each round, ``--drivers`` drivers each read two keys (a transfer's two legs, admission's two
holders, a lane's two ends) through one :class:`~bridge.coordinator.coalesce.Coalescer`
whose flush does nothing but yield once; the rounds run back to back. ``call`` awaits
``Coalescer.call`` twice under ``asyncio.gather`` (a task each), ``enqueue`` awaits the two
futures of ``Coalescer.enqueue`` together (no task each). Prints CPU-microseconds per
driver step (process time, so the flush and the event loop count too)::

    PYTHONPATH=. .venv/bin/python bench/coalesce.py [--rounds 2000] [--drivers 50] [--json F]

To compare two revisions, run the ``call`` mode of each (``farm-bench --vs``, a worktree of
the old one on ``PYTHONPATH``); ``enqueue`` exists from 47a77d3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Sequence

from bridge.coordinator.coalesce import Coalescer


async def _flush(key: str, items: Sequence[int]) -> list[int | BaseException]:
    await asyncio.sleep(0)
    return [i * 2 for i in items]


async def _run(mode: str, rounds: int, drivers: int) -> float:
    """CPU-microseconds per driver step over ``rounds`` rounds of ``drivers`` steps."""
    co: Coalescer[str, int, int] = Coalescer(_flush, 500, 2, 0.0)

    async def step(i: int) -> tuple[int, int]:
        if mode == "call":
            return await asyncio.gather(co.call("a", i), co.call("b", i))
        return await asyncio.gather(co.enqueue("a", i), co.enqueue("b", i))

    expected = [(i * 2, i * 2) for i in range(drivers)]
    started = time.process_time()
    for _ in range(rounds):
        answers = await asyncio.gather(*(step(i) for i in range(drivers)))
        if [tuple(a) for a in answers] != expected:
            raise SystemExit(f"{mode}: a driver got another item's answer")
    return (time.process_time() - started) / (rounds * drivers) * 1e6


def main() -> None:
    """Time each mode (``--mode``: one, or both in turn) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("call", "enqueue", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--drivers", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternated")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    modes = ("call", "enqueue") if args.mode == "both" else (args.mode,)
    figures: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:
            figures[mode].append(asyncio.run(_run(mode, args.rounds, args.drivers)))
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, python {platform.python_version()}")
    for mode, runs in figures.items():
        shown = ", ".join(f"{r:.1f}" for r in runs)
        print(f"{mode:8s} CPU-us per driver step (two keys): {shown}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"rounds": args.rounds, "drivers": args.drivers, "us_per_step": figures}, out)


if __name__ == "__main__":
    main()
