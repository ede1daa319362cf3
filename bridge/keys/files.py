"""Owner-only file checks shared by every file that holds a key, a passphrase or a PIN.

One exception, for a Kubernetes Secret volume (ADR 0021 §7): the kubelet writes a Secret's
files as owner root, group ``fsGroup``, mode at least 0440, and refreshes them in place when
the Secret changes. With :data:`POD_GROUP_KEYS_ENV` set to ``1`` (the Helm chart sets it) a
file readable by the process's OWN group only (no other bit, no group write) is accepted;
the chart gives each pod its own fsGroup and runs no second container, so that group is this
daemon. Without the variable, any group or other bit is refused as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from bridge.keys.errors import KeyCustodyError, KeyFileExposed

POD_GROUP_KEYS_ENV = "KSTB_KEYS_READABLE_BY_OWN_POD_GROUP"
"""Set to ``1`` to accept key files readable by the process's own group (Secret volumes)."""


def is_exposed(path: Path, mode: int) -> bool:
    """True when ``path`` (whose ``st_mode`` is ``mode``) may be read by another account.

    SECURITY: the one owner-only rule for files holding a key, a secret or a token. Only
    with :data:`POD_GROUP_KEYS_ENV` = ``1`` is a group-read bit tolerated, and then only
    when nothing but group-read is set beyond the owner bits and the file's group is one of
    this process's groups (the pod's fsGroup); group write/execute or any "other" bit is
    always refused.
    """
    if not mode & 0o077:
        return False
    if os.environ.get(POD_GROUP_KEYS_ENV) != "1" or mode & 0o077 != 0o040:
        return True
    try:
        gid = path.stat().st_gid
    except OSError:
        return True
    return gid not in {os.getegid(), *os.getgroups()}


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

    SECURITY: applies :func:`is_exposed`, the one owner-only rule for files holding a key,
    a secret or a token.
    """
    if is_exposed(path, mode):
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
