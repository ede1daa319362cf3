"""Garbage-collector settings for the long-running daemons (issue 14).

Under load a relayer spent about a tenth of its CPU, and the coordinator about 7 %, in
CPython's cyclic collector (``py-spy record --native`` during ``bench/transfers.py``): the
youngest generation filled every 700 allocations, and each full collection walked every
object the daemon holds, its imported modules included.
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
    (``gc.freeze``), and collect the youngest generation every :data:`GEN0_THRESHOLD`
    allocations; the older generations keep their ratios. Affects this process only.

    Called before the event loop starts, it freezes the modules imported at the top of the
    entry point (gRPC, protobuf, pydantic, structlog, the bridge's own) and the logging
    set-up; these live as long as the process. What ``run`` creates later (the parsed
    configuration, web3 and the ABIs, which the EVM kind imports when it opens a ledger)
    is not frozen and is still walked by full collections."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
