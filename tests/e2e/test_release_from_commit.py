"""``python -m bridge.tools.release`` (what ``make release`` runs) on a real clone: the
release is the commit, a dirty tree is refused, ``--allow-dirty`` marks every artifact
``+dirty``, and the same commit gives the same wheel (review s18 F6, ADR 0021 §9)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bridge.devnet.processes import REPO_ROOT

# pytest-timeout's 20-minute backstop (pyproject.toml) leaves too little room here: this module
# builds a release from a clean checkout (up to 15 minutes).
pytestmark = [pytest.mark.e2e, pytest.mark.ops, pytest.mark.timeout(3600)]


def _release(clone: Path, dist: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.tools.release", "--dist", str(dist), *extra],
        cwd=clone,  # the clone's bridge package comes first on sys.path
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_release_is_built_from_the_commit_and_refuses_a_dirty_tree(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--no-local", "--depth", "1", f"file://{REPO_ROOT}", str(clone)],
        check=True,
        timeout=300,
    )
    first = _release(clone, tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    version = next(p.name for p in (tmp_path / "a").glob("*.whl")).split("-")[1]
    assert "+" not in version
    again = _release(clone, tmp_path / "b")
    assert again.returncode == 0, again.stderr[-3000:]
    wheel = f"kstb-{version}-py3-none-any.whl"
    assert (tmp_path / "a" / wheel).read_bytes() == (tmp_path / "b" / wheel).read_bytes()

    elsewhere = tmp_path / "not-a-release"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine\n")
    kept = _release(clone, elsewhere)
    assert kept.returncode == 2 and "holds no SHA256SUMS" in kept.stderr
    assert (elsewhere / "notes.txt").read_text() == "mine\n"  # never wiped

    (clone / "bridge" / "evil_untracked.py").write_text("BACKDOOR = True\n")
    refused = _release(clone, tmp_path / "c")
    assert refused.returncode == 2
    assert "bridge/evil_untracked.py" in refused.stderr and "--allow-dirty" in refused.stderr
    assert not (tmp_path / "c").exists()

    dirty = _release(clone, tmp_path / "d", "--allow-dirty")
    assert dirty.returncode == 0, dirty.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names and all(n == "SHA256SUMS" or f"{version}+dirty" in n for n in names), names
    with zipfile.ZipFile(tmp_path / "d" / f"kstb-{version}+dirty-py3-none-any.whl") as whl:
        assert "bridge/evil_untracked.py" in whl.namelist()
