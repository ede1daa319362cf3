"""Generate the committed gRPC/protobuf stubs in ``bridge/v1`` from ``proto/``.

``python -m bridge.tools.gen_proto`` rewrites the stubs; ``--check`` regenerates them in a
temporary directory and exits 1 listing every file that drifted from its ``.proto`` source.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

from bridge.tools.drift import differing, replace_tree

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = ROOT / "bridge" / "v1"
_HEADER = '"""Generated gRPC/protobuf stubs for bridge.v1. Do not edit: run `make proto`."""\n'


def generate(out_root: Path) -> Path:
    """Generate stubs under ``out_root/bridge/v1`` and return that directory."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    scripts = Path(sysconfig.get_path("scripts"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out = out_root / "bridge" / "v1"
    (out / "__init__.py").write_text(_HEADER)
    return out


def drifted(generated: Path, committed: Path) -> list[str]:
    """Names of files that differ, are missing, or are extra between the two directories."""
    names = {p.name for p in generated.iterdir() if p.is_file()}
    names |= {p.name for p in committed.glob("*") if p.is_file() and p.suffix in {".py", ".pyi"}}
    return differing(generated, committed, names)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drifted")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp))
        if args.check:
            bad = drifted(out, OUT_PACKAGE)
            if bad:
                print("stubs drifted from proto/: " + ", ".join(bad), file=sys.stderr)
                return 1
            print("stubs match proto/")
            return 0
        replace_tree(out, OUT_PACKAGE)
    print(f"wrote {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
