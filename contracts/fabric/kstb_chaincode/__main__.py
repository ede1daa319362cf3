"""``python -m kstb_chaincode``: serve the bridge chaincode as a service (CCaaS).

Environment:

- ``CHAINCODE_SERVER_ADDRESS``: ``host:port`` to listen on (use ``127.0.0.1:<port>`` when the
  peer runs on the same host; it must match ``connection.json`` of the installed package);
- ``CORE_CHAINCODE_ID`` (or ``CHAINCODE_ID``): the package id returned by the install,
  ``<label>:<sha256>``; the peer only accepts a chaincode that registers with it;
- TLS (required): ``CHAINCODE_TLS_KEY_FILE`` and ``CHAINCODE_TLS_CERT_FILE`` (PEM) and
  ``CHAINCODE_TLS_CLIENT_CA_FILE``, the CA of the peers' client certificates (mutual TLS).
  The server refuses to start without all three (exit 2) unless
  ``KSTB_CHAINCODE_INSECURE_PLAINTEXT_FOR_DEVELOPMENT=1`` is set, and then logs a warning at
  every start: a plaintext or unauthenticated chaincode lets anyone who can answer for its
  address serve the peer a chaincode of their own (the peer endorses what it computes) and
  lets an observer read every state access;
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
coincurve and safe-pysha3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

PLAINTEXT_ENV = "KSTB_CHAINCODE_INSECURE_PLAINTEXT_FOR_DEVELOPMENT"
"""Set to ``1`` to serve without (mutual) TLS: development only, warned at every start."""
CHECK_ASSUMED_ENV = "KSTB_CHAINCODE_CHECK_ASSUMED"
"""``1``: ``protocol.CHECK_ASSUMED``, warned at start (the test suite sets it; never in
production)."""

TLS_ENVS = ("CHAINCODE_TLS_KEY_FILE", "CHAINCODE_TLS_CERT_FILE", "CHAINCODE_TLS_CLIENT_CA_FILE")


class PlaintextRefused(Exception):
    """The server would run without mutual TLS and the development flag is not set."""


def tls_material(env: dict[str, str]) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(key, cert, client CA) PEM from ``env``'s ``CHAINCODE_TLS_*`` files.

    SECURITY: all three are required (TLS with the peers' client certificates checked);
    missing any raises PlaintextRefused unless :data:`PLAINTEXT_ENV` is ``1``. A key without
    its certificate (or the reverse) is refused even then: that is a mistake, not a choice.
    """
    given = [name for name in TLS_ENVS if env.get(name)]
    key_file, cert_file = env.get(TLS_ENVS[0]), env.get(TLS_ENVS[1])
    if bool(key_file) != bool(cert_file):
        raise PlaintextRefused(f"{TLS_ENVS[0]} and {TLS_ENVS[1]} go together")
    if len(given) != len(TLS_ENVS) and env.get(PLAINTEXT_ENV) != "1":
        missing = ", ".join(n for n in TLS_ENVS if n not in given)
        raise PlaintextRefused(
            f"mutual TLS to the peers is required: set {missing}"
            f" (or {PLAINTEXT_ENV}=1 for development only)"
        )

    def read(name: str) -> bytes | None:
        path = env.get(name)
        return Path(path).read_bytes() if path else None

    return read(TLS_ENVS[0]), read(TLS_ENVS[1]), read(TLS_ENVS[2])


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
    try:
        tls_key, tls_cert, client_ca = tls_material(dict(os.environ))
    except (PlaintextRefused, OSError) as exc:
        print(f"kstb_chaincode: refusing to start: {exc}", file=sys.stderr)
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
    if os.environ.get(CHECK_ASSUMED_ENV) == "1":  # read by kstb_chaincode.protocol
        logging.getLogger("kstb_chaincode").warning(
            "%s=1: values taken from leg records are read and compared too (tests only)",
            CHECK_ASSUMED_ENV,
        )
    if client_ca is None:
        logging.getLogger("kstb_chaincode").warning(
            "%s=1: serving WITHOUT mutual TLS to the peers (development only)", PLAINTEXT_ENV
        )

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await serve(
            address,
            ccid,
            tls_key=tls_key,
            tls_cert=tls_cert,
            client_ca=client_ca,
        )

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
