"""The code fingerprint a chain pins: what every validator must run, byte for byte.

SECURITY: a CometBFT chain is only as consistent as its validators' state machines. The
genesis file's ``app_state.fingerprint`` is the SHA-256 over the sources that decide state
transitions (the endpoint protocol, the vendored protocol core it runs on, the transaction
envelope, this application's ABCI logic and store); a validator whose code differs refuses
genesis and refuses to start (``app.CodeMismatch``) instead of computing another app hash.
The core itself is the vendored copy ``kstb_chaincode.core``, which ``bridge.tools.vendor_core
--check`` keeps equal to ``bridge/core``: the same arithmetic as every other ledger.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[2]
SOURCES: tuple[Path, ...] = (
    _ROOT / "contracts" / "fabric" / "kstb_chaincode" / "protocol.py",
    *sorted((_ROOT / "contracts" / "fabric" / "kstb_chaincode" / "core").glob("*.py")),
    *sorted((_ROOT / "bridge" / "core").glob("*.py")),
    _ROOT / "bridge" / "ledgers" / "cometbft" / "envelope.py",
    _HERE / "app.py",
    _HERE / "store.py",
)


CHECK_ASSUMED_MARK = b"check-assumed"
"""Hashed after the sources when the protocol's ``CHECK_ASSUMED`` is on (the test suite):
it adds reads to a transaction and can fail one the unchecked code applies, so a validator
with the other setting computes another fingerprint and refuses genesis instead of
another app hash."""


def code_fingerprint() -> str:
    """SHA-256 hex over (relative path, length, bytes) of every file in :data:`SOURCES`,
    then :data:`CHECK_ASSUMED_MARK` when ``KSTB_CHAINCODE_CHECK_ASSUMED=1``."""
    h = hashlib.sha256()
    for path in SOURCES:
        data = path.read_bytes()
        name = path.relative_to(_ROOT).as_posix().encode()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    if os.environ.get("KSTB_CHAINCODE_CHECK_ASSUMED", "") == "1":
        h.update(CHECK_ASSUMED_MARK)
    return h.hexdigest()
