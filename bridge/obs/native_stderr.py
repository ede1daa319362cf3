"""What native code writes to the process's stderr (gRPC C-core, abseil), as JSON lines.

gRPC's core library logs straight to file descriptor 2 in its own format ("E1202
17:00:00.123 ... ssl_transport_security.cc:1659] Handshake failed ..."), below every
Python logging hook. A daemon calls :func:`route_native_stderr` once, before it configures
structlog: descriptor 2 becomes a pipe read by one thread that re-emits every line as a
structlog event (``source="native"``, the level taken from the line's severity letter),
and Python's own ``sys.stderr`` keeps writing to the original stream directly.

Not for tests in one process with pytest (it owns descriptor 2): daemons only.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
from typing import BinaryIO

import structlog

from bridge.logfields import COMPONENT

__all__ = ["NATIVE_SOURCE", "native_level", "route_native_stderr"]

NATIVE_SOURCE = "native"
"""The ``source`` field of a re-emitted native line."""

MAX_LINE = 8192
"""Longer native lines are cut (a line, not a memory bound the native side could raise)."""

_LEVELS = {"E": "error", "W": "warning", "I": "info", "D": "debug", "F": "critical"}
_ROUTED: list[int] = []  # the original stream's descriptor, once routed


def native_level(line: str) -> str:
    """The structlog level of a native line from its severity letter (abseil and gRPC's
    ``E1202 ...`` / ``W0000 ...``): anything unrecognised is a warning, never dropped."""
    if len(line) > 1 and line[0] in _LEVELS and line[1].isdigit():
        return _LEVELS[line[0]]
    return "warning"


def _forward(pipe: BinaryIO, original: int, component: str) -> None:
    # A thread starts with no context variables: the component the daemon binds is given
    # here, as initial values of a lazy logger (resolved at the first line, so after the
    # daemon has configured structlog; ``bind`` would resolve it now, unconfigured).
    log = structlog.get_logger(**{COMPONENT: component, "source": NATIVE_SOURCE})
    try:
        for raw in pipe:
            text = raw[:MAX_LINE].decode("utf-8", errors="backslashreplace").rstrip("\r\n")
            if text.strip():
                getattr(log, native_level(text))("native stderr", line=text)
    finally:
        # The reader is gone (it should not be): give descriptor 2 back to the original
        # stream so native writers never block on a pipe nobody reads.
        with contextlib.suppress(OSError):
            os.dup2(original, 2)


def route_native_stderr(component: str) -> bool:
    """Make descriptor 2 a pipe whose lines are re-emitted as structlog events, and point
    ``sys.stderr`` (hence structlog and logging, configured after this) at the original
    stream. Idempotent; False (nothing changed) when stderr is a terminal, where people
    read it and the native format is fine. Guarantees: no line is lost while the process
    runs; a crash's fault dump goes to the original stream directly (``faulthandler``)."""
    if _ROUTED or os.isatty(2):
        return False
    original = os.dup(2)
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(
        original, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
    )
    faulthandler.enable(file=sys.stderr)
    pipe = os.fdopen(read_end, "rb", buffering=0)
    threading.Thread(
        target=_forward, args=(pipe, original, component), name="native-stderr", daemon=True
    ).start()
    _ROUTED.append(original)
    return True
