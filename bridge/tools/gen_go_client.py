"""Generate the committed Go code of the example brokerage client from ``proto/``.

``python -m bridge.tools.gen_go_client`` rewrites ``examples/go-client/gen/`` with the
pinned buf and plugins (``deploy/buf/build.sh``; template ``examples/go-client/buf.gen.yaml``);
``--check`` generates into a temporary directory and exits 1 listing every file that drifted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bridge.tools.buf import PROTO_DIR, ROOT, missing_tools, run_buf
from bridge.tools.drift import differing, replace_tree

CLIENT_DIR = ROOT / "examples" / "go-client"
GEN_DIR = CLIENT_DIR / "gen"


def generate(out_base: Path) -> Path:
    """Generate into ``out_base/gen`` and return that directory (RuntimeError on failure)."""
    result = run_buf(
        ["generate", str(PROTO_DIR), "--template", "buf.gen.yaml", "--output", str(out_base)],
        CLIENT_DIR,
    )
    if result.returncode != 0:
        raise RuntimeError("buf generate failed:\n" + result.stdout + result.stderr)
    return out_base / "gen"


def _files(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def drifted(generated: Path, committed: Path) -> list[str]:
    """Paths (relative to ``gen/``) that differ, are missing or are extra."""
    return differing(generated, committed, _files(generated) | _files(committed))


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code drifted")
    args = parser.parse_args(argv)
    if missing_tools():
        print(
            f"buf is not built: run `bash deploy/buf/build.sh` ({missing_tools()})", file=sys.stderr
        )
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp))
        if args.check:
            bad = drifted(out, GEN_DIR)
            if bad:
                print("Go code drifted from proto/: " + ", ".join(bad), file=sys.stderr)
                return 1
            print("Go code matches proto/")
            return 0
        replace_tree(out, GEN_DIR)
    print(f"wrote {GEN_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
