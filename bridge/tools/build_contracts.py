"""Build the EVM contract artifacts with the pinned solc-js, or check they are up to date.

``python -m bridge.tools.build_contracts`` runs ``contracts/evm/compile.mjs`` with node and
rewrites ``contracts/evm/artifacts/*.json``. With ``--check`` it compiles into a temporary
directory instead and exits 1, listing every artifact that differs from the committed one
(or is missing or stale), so CI fails when a ``.sol`` file changed without a rebuild.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EVM_DIR = REPO_ROOT / "contracts" / "evm"
COMPILE_SCRIPT = EVM_DIR / "compile.mjs"
ARTIFACTS_DIR = EVM_DIR / "artifacts"


class BuildError(RuntimeError):
    """The compiler could not be run or reported errors."""


def node_binary() -> str:
    """The node executable (``KSTB_NODE`` overrides the one on PATH)."""
    node = os.environ.get("KSTB_NODE") or shutil.which("node")
    if not node:
        raise BuildError("node not found on PATH; install Node.js 20+ or set KSTB_NODE")
    return node


def compile_into(out_dir: Path) -> list[Path]:
    """Compile all contracts and write their artifacts to ``out_dir``; return the files.

    Raises BuildError with the compiler's output when compilation fails.
    """
    if not (EVM_DIR / "node_modules" / "solc").exists():
        raise BuildError("contracts/evm/node_modules is missing; run `make setup`")
    result = subprocess.run(
        [node_binary(), str(COMPILE_SCRIPT), "--out", str(out_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise BuildError(
            f"compile.mjs failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    if result.stderr.strip():  # warnings: surface them, they are not fatal
        print(result.stderr, end="", file=sys.stderr)
    return sorted(out_dir.glob("*.json"))


def diff_artifacts(fresh_dir: Path, committed_dir: Path) -> list[str]:
    """Compare freshly built artifacts with committed ones, file by file, byte for byte.

    Returns a sorted list of human-readable differences; empty means identical.
    """
    fresh = {p.name: p.read_bytes() for p in fresh_dir.glob("*.json")}
    committed = {p.name: p.read_bytes() for p in committed_dir.glob("*.json")}
    problems: list[str] = []
    for name in sorted(fresh.keys() | committed.keys()):
        shown = _display(committed_dir / name)
        if name not in committed:
            problems.append(f"{shown}: missing (not built)")
        elif name not in fresh:
            problems.append(f"{shown}: stale (no longer produced by compile.mjs)")
        elif fresh[name] != committed[name]:
            problems.append(f"{shown}: differs from a fresh compile")
    return problems


def stale_artifacts(committed_dir: Path = ARTIFACTS_DIR) -> list[str]:
    """Compile the current sources into a temporary directory and diff with ``committed_dir``.

    Returns the differences (see :func:`diff_artifacts`); empty means up to date.
    """
    with tempfile.TemporaryDirectory(prefix="kstb-contracts-") as tmp:
        compile_into(Path(tmp))
        return diff_artifacts(Path(tmp), committed_dir)


def _display(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.build_contracts")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile into a temp dir and fail if the committed artifacts differ",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale_artifacts()
            if problems:
                print("contract artifacts are out of date:", file=sys.stderr)
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                print("run `python -m bridge.tools.build_contracts`", file=sys.stderr)
                return 1
            print("contract artifacts are up to date")
            return 0
        for path in compile_into(ARTIFACTS_DIR):
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
