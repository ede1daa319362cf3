"""What the code generators share: comparing a freshly generated tree with the committed one,
and replacing the committed one (``--check`` and write modes)."""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Iterable
from pathlib import Path


def differing(generated: Path, committed: Path, names: Iterable[str]) -> list[str]:
    """The relative paths among ``names`` that are missing on either side or whose bytes
    differ, sorted: empty exactly when both trees hold the same files for ``names``."""
    return sorted(
        n
        for n in set(names)
        if not (generated / n).is_file()
        or not (committed / n).is_file()
        or not filecmp.cmp(generated / n, committed / n, shallow=False)
    )


def replace_tree(generated: Path, target: Path) -> None:
    """Make ``target`` a copy of ``generated``; files only in the old ``target`` go."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(generated, target)
