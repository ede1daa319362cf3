"""The release artifacts that are not Python distributions (ADR 0021); ``make release`` runs
``python -m build`` for the wheel and sdist, then this.

``python -m bridge.tools.release --dist dist`` writes into ``dist/``:

- ``kstb-chaincode-<version>.tar.gz``: the chaincode server (``kstb_chaincode`` with its
  vendored protocol core) and ``requirements.txt``, every dependency pinned: what an
  organisation installs on the host or image that serves the chaincode (CCaaS);
- ``kstb-chaincode-<version>-ccaas.tar.gz``: the Fabric chaincode package the peers install
  (``metadata.json`` type ``ccaas`` and ``code.tar.gz`` with ``connection.json``), for the
  address ``--chaincode-address`` and, with ``--chaincode-tls-root``, mutual TLS to it;
- ``kstb-<version>.tgz``: the Helm chart (``deploy/helm/kstb``);
- ``kstb-<version>-systemd.tar.gz``: the systemd units and the sysusers file;
- ``kstb-<version>-constraints.txt``: requirements.lock, for ``pip install -c`` (the exact
  versions the release was tested with; plain resolution without it also works);
- ``SHA256SUMS``: ``sha256sum -c`` format over every other file in ``dist/``.

Guarantees: every archive is deterministic (sorted names, zero mtimes and owners, fixed
modes), so the same commit gives byte-identical files and checksums; caches and bytecode are
never packaged.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import tarfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

from bridge.devnet.fabric.lifecycle import ccaas_package

ROOT = Path(__file__).resolve().parents[2]
CHAINCODE_DIR = ROOT / "contracts" / "fabric"
CHART_DIR = ROOT / "deploy" / "helm" / "kstb"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
CHAINCODE_NAME = "kstb"
DEFAULT_CHAINCODE_ADDRESS = "kstb-chaincode:9999"


def project_version() -> str:
    """The version in pyproject.toml (the wheel's)."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def _files(base: Path, patterns: Iterable[str]) -> list[Path]:
    out: set[Path] = set()
    for pattern in patterns:
        out.update(p for p in base.glob(pattern) if p.is_file())
    return sorted(
        p for p in out if "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def deterministic_targz(entries: Iterable[tuple[str, bytes, int]]) -> bytes:
    """A gzip'd tar of ``(name, data, mode)`` entries sorted by name, with zero mtimes and
    owners: equal inputs give equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _tree(prefix: str, base: Path, patterns: Iterable[str]) -> list[tuple[str, bytes, int]]:
    return [
        (f"{prefix}/{p.relative_to(base).as_posix()}", p.read_bytes(), 0o644)
        for p in _files(base, patterns)
    ]


def chaincode_source(version: str) -> bytes:
    """The chaincode server's source archive (``kstb-chaincode-<version>/...``)."""
    top = f"kstb-chaincode-{version}"
    return deterministic_targz(
        _tree(top, CHAINCODE_DIR, ["kstb_chaincode/**/*.py", "requirements.txt"])
    )


def helm_chart() -> bytes:
    """The Helm chart as ``kstb/...`` (what ``helm package`` lays out)."""
    return deterministic_targz(_tree("kstb", CHART_DIR, ["*.yaml", ".helmignore", "templates/*"]))


def systemd_units(version: str) -> bytes:
    """The systemd units and the sysusers file."""
    return deterministic_targz(_tree(f"kstb-{version}-systemd", SYSTEMD_DIR, ["*"]))


def write_release(dist: Path, chaincode_address: str, tls_root: Path | None) -> list[Path]:
    """Write every artifact of the module docstring into ``dist`` (which may already hold
    the wheel and sdist) and return the files SHA256SUMS covers."""
    version = project_version()
    dist.mkdir(parents=True, exist_ok=True)
    root_pem = tls_root.read_bytes() if tls_root else None
    outputs = {
        f"kstb-chaincode-{version}.tar.gz": chaincode_source(version),
        f"kstb-chaincode-{version}-ccaas.tar.gz": ccaas_package(
            CHAINCODE_NAME, chaincode_address, version, root_pem
        ),
        f"kstb-{version}.tgz": helm_chart(),
        f"kstb-{version}-systemd.tar.gz": systemd_units(version),
    }
    for name, data in outputs.items():
        (dist / name).write_bytes(data)
    shutil.copyfile(ROOT / "requirements.lock", dist / f"kstb-{version}-constraints.txt")
    covered = sorted(p for p in dist.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in covered]
    (dist / "SHA256SUMS").write_text("".join(lines))
    return covered


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument(
        "--chaincode-address",
        default=DEFAULT_CHAINCODE_ADDRESS,
        help="host:port the peers dial for the chaincode server (in connection.json)",
    )
    parser.add_argument(
        "--chaincode-tls-root",
        type=Path,
        help="CA (PEM) of the chaincode server's certificate: mutual TLS peer <-> chaincode",
    )
    args = parser.parse_args(argv)
    for path in write_release(args.dist, args.chaincode_address, args.chaincode_tls_root):
        print(path.relative_to(args.dist) if path.is_relative_to(args.dist) else path)
    print("SHA256SUMS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
