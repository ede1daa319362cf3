"""Garbage-collector settings for the long-running daemons (issue 14).

Under load a relayer spent about a tenth of its CPU, and the coordinator about 7 %, in
CPython's cyclic collector (``py-spy record --native`` during ``bench/transfers.py``): the
youngest generation filled every 700 allocations, and each full collection walked every
object the daemon holds, its imported modules (web3, gRPC, the ABIs) included.
:func:`tune_collector` is called once, after the imports and before the event loop starts.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000
"""Allocations (net of frees) of container objects between young collections (CPython's
default is 700). Reference counting still frees everything acyclic at once; only cyclic
garbage (exceptions with tracebacks, closed coroutines) waits longer, a bounded amount."""


def tune_collector() -> None:
    """Collect once, move every object alive now out of the collector's reach for good
    (``gc.freeze``: what is alive before the event loop starts lives as long as the
    process), and collect the youngest generation every :data:`GEN0_THRESHOLD` allocations;
    the older generations keep their ratios. Idempotent in effect; affects this process
    only."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
