"""``python -m kstb_chaincode``: serve the bridge chaincode as a service (CCaaS).

Environment:

- ``CHAINCODE_SERVER_ADDRESS``: ``host:port`` to listen on (use ``127.0.0.1:<port>`` when the
  peer runs on the same host; it must match ``connection.json`` of the installed package);
- ``CORE_CHAINCODE_ID`` (or ``CHAINCODE_ID``): the package id returned by the install,
  ``<label>:<sha256>``; the peer only accepts a chaincode that registers with it;
- optional TLS: ``CHAINCODE_TLS_KEY_FILE`` and ``CHAINCODE_TLS_CERT_FILE`` (PEM), plus
  ``CHAINCODE_TLS_CLIENT_CA_FILE`` to require the peer's client certificate;
- ``KSTB_INIT_PARAMS_SHA256``: the SHA-256 (hex) of the only ``Init`` arguments this server
  accepts (``init_parameters_digest`` of ``[ledger, chaincode, committee JSON, genesis hash,
  governance JSON]``, the governance naming the issuer organisation, the admin
  organisations and the quorum k of them that approves admin changes); each organisation
  pins what it agreed to, so one admin alone cannot initialise the endpoint with its own
  committee or governance (only an admin of a pinned organisation may send Init; Init is
  refused without a pin); or ``KSTB_INIT_PARAMS_SHA256_FILE``, a file holding it, read at
  each Init;
- ``KSTB_CHAINCODE_LOG_LEVEL`` (default INFO) for this chaincode's own log lines.

Run with ``PYTHONPATH=contracts/fabric`` in an environment that has fabric-chaincode-python,
coincurve and pycryptodome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path


def _read(env: str) -> bytes | None:
    path = os.environ.get(env)
    return Path(path).read_bytes() if path else None


def main() -> int:
    """Start the server; returns the process exit code."""
    address = os.environ.get("CHAINCODE_SERVER_ADDRESS", "")
    ccid = os.environ.get("CORE_CHAINCODE_ID") or os.environ.get("CHAINCODE_ID") or ""
    if not address or ":" not in address or not ccid:
        print(
            "kstb_chaincode: set CHAINCODE_SERVER_ADDRESS=host:port and CORE_CHAINCODE_ID",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True
    )
    # Importing the shim configures DEBUG logging and its handler logs every message (and
    # every PutState value) on the "asyncio" logger: keep only its errors.
    from kstb_chaincode.chaincode import serve

    logging.getLogger("asyncio").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.WARNING)
    level = os.environ.get("KSTB_CHAINCODE_LOG_LEVEL", "INFO").upper()
    logging.getLogger("kstb_chaincode").setLevel(level)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await serve(
            address,
            ccid,
            tls_key=_read("CHAINCODE_TLS_KEY_FILE"),
            tls_cert=_read("CHAINCODE_TLS_CERT_FILE"),
            client_ca=_read("CHAINCODE_TLS_CLIENT_CA_FILE"),
        )

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
