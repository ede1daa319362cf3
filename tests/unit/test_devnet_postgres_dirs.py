"""The devnet PostgreSQL cluster's directory reachability as root (pure file-system logic)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bridge.devnet.postgres import make_traversable

pytestmark = pytest.mark.unit


def test_every_untraversable_parent_is_opened_for_traversal_only(tmp_path: Path) -> None:
    # As after another pytest session reset its pytest-of-<user> root to 0700 while this
    # session's numbered directory below it kept the traversal an earlier cluster gave it.
    root = tmp_path / "pytest-of-root"
    numbered = root / "pytest-7"
    cluster = numbered / "postgres1"
    cluster.mkdir(parents=True)
    root.chmod(0o700)
    numbered.chmod(0o711)
    make_traversable(cluster)
    for p in (root, numbered):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o011 == 0o011, oct(mode)
        assert mode & 0o066 == 0, f"{p} became readable or writable: {oct(mode)}"
