"""``python -m kstb_cometbft --state DIR --listen 127.0.0.1:PORT``: serve the application.

Run with ``PYTHONPATH=<repo>:<repo>/contracts/fabric:<repo>/contracts/cometbft``. Exits 2
when the chain pins other code than this process runs (``app.CodeMismatch``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from kstb_cometbft.app import App, CodeMismatch
from kstb_cometbft.server import serve
from kstb_cometbft.store import VersionedStore


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="directory of app.sqlite")
    parser.add_argument("--listen", required=True, help="host:port of the ABCI gRPC server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        store = VersionedStore(args.state / "app.sqlite")
        app = App(store, reader=VersionedStore(args.state / "app.sqlite", readonly=True))
    except CodeMismatch as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    server = serve(app, args.listen)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(2).wait()
    app.store.close()
    if app.reader is not None:
        app.reader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
