"""The append-only audit log of authorisation decisions (JSON lines + structlog)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from bridge.logfields import get_logger


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One authorisation decision: who asked, from where, for what, and the answer."""

    at: float
    org: str
    role: str
    cn: str
    fingerprint: str
    peer: str
    method: str
    transfer_id: str
    allowed: bool
    reason: str

    def as_fields(self) -> dict[str, object]:
        """Every field by name, as ``dataclasses.asdict`` gives them (every field is a
        str, float or bool, so a shallow copy is the deep one; about a tenth of the cost:
        it runs on every RPC a server answers)."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(AuditRecord))


class AuditLog:
    """Appends one JSON line per decision to a file opened ``O_APPEND`` (0600), and logs
    the same record with structlog.

    Guarantees: each record is written with a single ``write`` on an append-only
    descriptor, so concurrent writers never interleave within a line and nothing already
    written is overwritten. Without a path, records are only logged.
    """

    def __init__(self, path: Path | None) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log = get_logger()

    def record(self, rec: AuditRecord) -> None:
        """Write and log one decision."""
        fields = rec.as_fields()
        if rec.allowed:
            self._log.info("authorisation", **fields)
        else:
            self._log.warning("authorisation denied", **fields)
        if self._fd is not None:
            line = (json.dumps(fields, sort_keys=True) + "\n").encode("utf-8")
            with self._lock:
                os.write(self._fd, line)

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def now() -> float:
    """Wall-clock time for records."""
    return time.time()
