"""Generate the committed Fabric protobuf modules in ``bridge/ledgers/fabric/pb`` from the
vendored ``.proto`` sources in ``third_party/fabric-protos`` (ADR 0021).

Why our own copy: the ``hyperledger-fabric-protos`` wheel declares ``protobuf<6`` while the
bridge runs protobuf 7, so ``pip install kstb[fabric]`` could not resolve. Generating the
fifteen files the Fabric client uses with the pinned ``grpcio-tools`` makes them ordinary
package modules whose only runtime requirement is our protobuf/grpcio.

protoc names imports by the ``.proto`` path (``from peer import chaincode_pb2``); the
generator rewrites those top-level imports (and the module names passed to the builder) into
the ``bridge.ledgers.fabric.pb`` package. The serialized descriptors are left byte-for-byte
as protoc wrote them.

``python -m bridge.tools.gen_fabric_proto`` rewrites the package; ``--check`` regenerates it
in a temporary directory and exits 1 listing every file that drifted.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

from bridge.tools.drift import differing, replace_tree

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "third_party" / "fabric-protos"
PACKAGE = "bridge.ledgers.fabric.pb"
OUT_PACKAGE = ROOT / Path(*PACKAGE.split("."))
_HEADER = (
    '"""Generated Hyperledger Fabric protobuf modules (fabric-protos v0.3.7).\n\n'
    "Do not edit: run `python -m bridge.tools.gen_fabric_proto`.\n"
    '"""\n'
)


def _sources() -> list[str]:
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def _top_levels() -> list[str]:
    return sorted({s.split("/", 1)[0] for s in _sources()})


def _rewrite(text: str, tops: list[str]) -> str:
    alt = "|".join(re.escape(t) for t in tops)
    # `from peer import x_pb2 as ...` / `from ledger.rwset import rwset_pb2 as ...`
    text = re.sub(
        rf"^from ((?:{alt})(?:\.\w+)*) import ", rf"from {PACKAGE}.\1 import ", text, flags=re.M
    )
    # BuildTopDescriptorsAndMessages(DESCRIPTOR, 'peer.proposal_pb2', _globals)
    return re.sub(rf"(DESCRIPTOR, ')((?:{alt})(?:\.\w+)*_pb2)(')", rf"\1{PACKAGE}.\2\3", text)


def generate(out_root: Path) -> Path:
    """Generate the package under ``out_root`` and return its directory.

    Guarantees: deterministic output for the pinned grpcio-tools; every directory is a package
    (``__init__.py``); only the vendored sources and protobuf's well-known types are read.
    """
    raw = out_root / "raw"
    raw.mkdir(parents=True)
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={raw}",
        f"--grpc_python_out={raw}",
        *_sources(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out = out_root / "pb"
    tops = _top_levels()
    for src in sorted(raw.rglob("*.py")):
        rel = src.relative_to(raw)
        if rel.name.endswith("_pb2_grpc.py") and "class " not in src.read_text():
            continue  # a file without services: protoc's empty grpc module is noise
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(_rewrite(src.read_text(), tops))
    for d in [out, *sorted(p for p in out.rglob("*") if p.is_dir())]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text(_HEADER if d == out else "")
    return out


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts
    }


def drifted(generated: Path, committed: Path) -> list[str]:
    """Relative paths that differ, are missing, or are extra between the two trees."""
    names = _files(generated) | (_files(committed) if committed.exists() else set())
    return differing(generated, committed, names)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the package drifted")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp))
        if args.check:
            bad = drifted(out, OUT_PACKAGE)
            if bad:
                print("fabric protos drifted: " + ", ".join(bad), file=sys.stderr)
                return 1
            print("fabric protos match third_party/fabric-protos")
            return 0
        replace_tree(out, OUT_PACKAGE)
    print(f"wrote {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
