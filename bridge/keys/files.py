"""Owner-only file checks shared by every file that holds a key, a passphrase or a PIN."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.keys.errors import KeyCustodyError, KeyFileExposed


def read_private_file(path: Path, what: str) -> bytes:
    """Return the bytes of ``path`` after checking no group/other permission bit is set.

    SECURITY: a key or secret readable by another local account is refused rather than
    used; the error names the file and the fix, never its content.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyCustodyError(f"{what} {path} cannot be read: {exc.strerror}") from None
    refuse_exposed(path, mode, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyCustodyError(f"{what} {path} cannot be read: {exc.strerror}") from None


def refuse_exposed(path: Path, mode: int, what: str) -> None:
    """Raise KeyFileExposed when ``mode`` (of ``path``) has any group/other permission bit.

    SECURITY: the one owner-only rule for files holding a key, a secret or a token.
    """
    if mode & 0o077:
        raise KeyFileExposed(f"{what} {path} must not be readable by group/others (chmod 600)")


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never overwriting an existing file) and write ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyCustodyError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
