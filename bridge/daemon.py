"""Shared console entry point for the ledger-facing daemons (relayer, verifier)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bridge.collector import tune_collector
from bridge.config_errors import ConfigError
from bridge.ledgers.startup import LedgerMismatch
from bridge.logfields import configure
from bridge.obs.native_stderr import route_native_stderr
from bridge.standby import EXIT_STATE_IN_USE, StateInUse
from bridge.version import add_version_argument

EXIT_WRONG_LEDGER = 3
"""Exit status when a node reached is not the configured ledger."""

EXIT_CONFIG = 78
"""Exit status when a configuration file is refused (``EX_CONFIG`` of sysexits.h)."""


def refuse_config(component: str, exc: ConfigError) -> SystemExit:
    """Log every problem of ``exc`` (one JSON line: ``problems`` as ``{path, message}``
    objects) and return the SystemExit with :data:`EXIT_CONFIG` to raise."""
    configure(component).error(
        "configuration refused, refusing to start",
        file=exc.file,
        problems=[{"path": p.path, "message": p.message} for p in exc.problems],
        error=str(exc),
    )
    return SystemExit(EXIT_CONFIG)


def run_daemon(
    prog: str,
    component: str,
    description: str | None,
    run: Callable[[Path], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> None:
    """Parse ``--config PATH`` and run ``run(PATH)`` until it returns.

    SECURITY: a daemon whose ledger node is not the configured ledger (:class:`LedgerMismatch`)
    logs what differs and exits with :data:`EXIT_WRONG_LEDGER` instead of serving; one whose
    configuration is refused (:class:`ConfigError`) logs every problem with its path and
    exits with :data:`EXIT_CONFIG`.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_version_argument(parser)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    route_native_stderr(component)  # ---- gRPC C-core's own lines as JSON too (before configure)
    configure(component)  # every line, even before ``run`` binds its fields, is one format
    tune_collector()  # ---- issue 14: the collector's share of a busy daemon's CPU
    try:
        asyncio.run(run(args.config))
    except ConfigError as exc:
        raise refuse_config(component, exc) from None
    except LedgerMismatch as exc:
        configure(component).error(
            "wrong ledger, refusing to start",
            ledger=exc.ledger,
            what=exc.what,
            expected=exc.expected,
            found=exc.found,
            error=str(exc),
        )
        raise SystemExit(EXIT_WRONG_LEDGER) from None
    except StateInUse as exc:  # ---- active/passive (ADR 0017)
        configure(component).error("state in use, refusing to start", error=str(exc))
        raise SystemExit(EXIT_STATE_IN_USE) from None
