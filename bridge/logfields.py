"""The one place that defines structured-log field names, and logging setup.

JSON lines in production (``KSTB_LOG_FORMAT=json``, the default when stderr is not a
terminal), ``key=value`` in a terminal. Never log key material: signers have no
accessor for it and key files are only ever passed as paths.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

COMPONENT = "component"
LEDGER = "ledger"
TRANSFER = "transfer_id"
TRANSFERS = "transfer_ids"  # a list of some of them (the first few), beside COUNT
STATE = "state"
ACTION = "action"
TX = "tx_id"
HEIGHT = "height"
REASON = "reason"
PEER = "peer"
SIGNER = "signer"
EPOCH = "epoch"
COUNT = "count"
ERROR = "error"
ELAPSED = "elapsed_s"
SECURITY = "security"
SEQUENCE = "sequence"


def configure(component: str, level: str | None = None) -> structlog.stdlib.BoundLogger:
    """Configure structlog once for this process and return a logger bound to ``component``."""
    fmt = os.environ.get("KSTB_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
    )
    lvl = getattr(
        logging, (level or os.environ.get("KSTB_LOG_LEVEL", "INFO")).upper(), logging.INFO
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(**{COMPONENT: component})
    route_stdlib_logging(renderer, lvl)  # ---- observability (ADR 0016)
    log: structlog.stdlib.BoundLogger = structlog.get_logger()
    return log


# ---- observability (ADR 0016): one log format for every line a daemon writes
LOGGER = "logger"

QUIET_LIBRARIES = {"web3": logging.WARNING, "urllib3": logging.WARNING, "aiohttp": logging.WARNING}
"""Libraries whose INFO/DEBUG chatter is raised to WARNING (their warnings still show)."""


def route_stdlib_logging(renderer: Any, level: int) -> None:
    """Send every stdlib ``logging`` record (web3, grpc, aiohttp, the Fabric client,
    urllib3, asyncio, ``warnings``) and uncaught exceptions through the same structlog
    renderer, so each line of the process has one format (JSON in production).

    Idempotent: replaces whatever handlers the root logger had.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ExtraAdder(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("kstb")
    root = logging.getLogger()
    # Earlier handlers (ours, or a library's basicConfig) would print a second format.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, floor in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(max(level, floor))
    logging.captureWarnings(True)

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        logging.getLogger("kstb").critical("uncaught exception", exc_info=(kind, value, tb))

    sys.excepthook = excepthook


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    """A logger with extra bound fields (use the constants above as keys)."""
    log: structlog.stdlib.BoundLogger = structlog.get_logger().bind(**bound)
    return log
