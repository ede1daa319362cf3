"""The release (ADR 0021): ``make release`` runs ``python -m bridge.tools.release --dist dist``.

It builds from a clean export of the checked-out COMMIT, never from the working tree: a tree
with any modified, staged or untracked (not ignored) file is refused (exit 2) unless
``--allow-dirty`` is given, and then the tracked and untracked files on disk are exported and
every artifact is versioned ``<version>+dirty`` so it cannot pass for the commit's release.
``SOURCE_DATE_EPOCH`` is the commit's time. The export then gives, in ``dist/``:

- ``kstb-<version>-py3-none-any.whl`` and ``kstb-<version>.tar.gz`` (``python -m build``
  from the export: the sdist, then the wheel from the sdist);

- ``kstb-chaincode-<version>.tar.gz``: the chaincode server (``kstb_chaincode`` with its
  vendored protocol core) and ``requirements.txt``, every dependency pinned: what an
  organisation installs on the host or image that serves the chaincode (CCaaS);
- ``kstb-chaincode-<version>-ccaas.tar.gz``: the Fabric chaincode package the peers install
  (``metadata.json`` type ``ccaas`` and ``code.tar.gz`` with ``connection.json``), for the
  address ``--chaincode-address`` with mutual TLS to the server whose CA is
  ``--chaincode-tls-root``; without that CA no package is written (the server refuses
  plaintext too), unless ``--chaincode-plaintext-for-development`` asks for a plaintext one;
- ``kstb-<version>.tgz``: the Helm chart (``deploy/helm/kstb``), its ``version`` and
  ``appVersion`` set to the package version (pyproject.toml is the one source);
- ``kstb-<version>-systemd.tar.gz``: the systemd units and the sysusers file;
- ``kstb-<version>-constraints.txt``: requirements.lock, for ``pip install -c`` (the exact
  versions the release was tested with; plain resolution without it also works);
- ``SHA256SUMS``: ``sha256sum -c`` format over every other file in ``dist/``.

Guarantees: what is packaged is exactly the commit's tracked files (or, with
``--allow-dirty``, a ``+dirty`` version); every archive is deterministic (sorted names, zero
mtimes and owners, fixed modes), so the same commit gives byte-identical files and
checksums; caches and bytecode are never packaged.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bridge.devnet.fabric.lifecycle import ccaas_package

ROOT = Path(__file__).resolve().parents[2]
CHAINCODE_DIR = ROOT / "contracts" / "fabric"
CHART_DIR = ROOT / "deploy" / "helm" / "kstb"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
CHAINCODE_NAME = "kstb"
DEFAULT_CHAINCODE_ADDRESS = "kstb-chaincode:9999"
DIRTY_SUFFIX = "+dirty"


class ReleaseRefused(Exception):
    """The release cannot be built as asked (dirty tree, no commit, missing TLS root)."""


def project_version(root: Path = ROOT) -> str:
    """The version in ``root``'s pyproject.toml (the wheel's, the chart's)."""
    with (root / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def _git(root: Path, *args: str) -> bytes:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, check=True, timeout=300
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ReleaseRefused(f"git {' '.join(args)} failed: {exc}") from None


def dirty_paths(root: Path = ROOT) -> list[str]:
    """Modified, staged, deleted and untracked (not ignored) paths of ``root``'s checkout."""
    tokens = iter(
        _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all").split(b"\0")
    )
    paths = []
    for entry in tokens:
        if len(entry) > 3:
            paths.append(entry[3:].decode(errors="replace"))
            if entry[:1] in (b"R", b"C"):  # a rename/copy is followed by its source path
                paths.append(next(tokens, b"").decode(errors="replace"))
    return sorted(p for p in paths if p)


@dataclass(frozen=True, slots=True)
class Export:
    """A release source tree: where it is, its version and its commit's time."""

    root: Path
    version: str
    epoch: int
    dirty: bool


def export_tree(root: Path, dest: Path, *, allow_dirty: bool = False) -> Export:
    """Export the commit checked out in ``root`` into ``dest`` (``git archive HEAD``).

    SECURITY: a dirty tree (any path of :func:`dirty_paths`) raises ReleaseRefused unless
    ``allow_dirty``; then the tracked and untracked, not ignored files on disk are copied and
    the version in the exported pyproject.toml becomes ``<version>+dirty``.
    """
    epoch = int(_git(root, "log", "-1", "--format=%ct").decode().strip())
    dirty = dirty_paths(root)
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
        raise ReleaseRefused(
            f"the working tree differs from HEAD ({len(dirty)} paths: {shown}); commit or"
            " stash, or pass --allow-dirty for a '+dirty' build"
        )
    dest.mkdir(parents=True, exist_ok=True)
    if not dirty:
        with tarfile.open(fileobj=io.BytesIO(_git(root, "archive", "--format=tar", "HEAD"))) as t:
            t.extractall(dest, filter="tar")
    else:
        listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        for name in sorted({n.decode() for n in listed.split(b"\0") if n}):
            src = root / name
            if src.is_symlink() or not src.is_file():
                continue  # deleted, or a symlink such as .cache: never packaged
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    version = project_version(dest)
    if dirty:
        version += DIRTY_SUFFIX
        pyproject = dest / "pyproject.toml"
        text, n = re.subn(
            r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject.read_text(), count=1
        )
        if n != 1:
            raise ReleaseRefused("pyproject.toml has no [project] version line to mark +dirty")
        pyproject.write_text(text)
    return Export(dest, version, epoch, bool(dirty))


def build_python(export: Export, dist: Path) -> None:
    """The sdist and wheel of ``export`` into ``dist`` (``python -m build --no-isolation``,
    SOURCE_DATE_EPOCH = the commit's time: the same commit gives a byte-identical wheel)."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(export.epoch)}
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(export.root)],
        check=True,
        env=env,
        timeout=1800,
    )


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


def chaincode_source(version: str, root: Path = ROOT) -> bytes:
    """The chaincode server's source archive (``kstb-chaincode-<version>/...``)."""
    top = f"kstb-chaincode-{version}"
    return deterministic_targz(
        _tree(
            top,
            root / CHAINCODE_DIR.relative_to(ROOT),
            ["kstb_chaincode/**/*.py", "requirements.txt"],
        )
    )


def chart_with_version(chart_yaml: bytes, version: str) -> bytes:
    """``Chart.yaml`` with ``version`` and ``appVersion`` set to ``version`` (the package's):
    the chart can never deploy an image tag other than its own release's."""
    text, n = re.subn(r"(?m)^version: .*$", f"version: {version}", chart_yaml.decode())
    text, m = re.subn(r"(?m)^appVersion: .*$", f'appVersion: "{version}"', text)
    if (n, m) != (1, 1):
        raise ReleaseRefused("Chart.yaml needs exactly one version and one appVersion line")
    return text.encode()


def helm_chart(version: str, root: Path = ROOT) -> bytes:
    """The Helm chart as ``kstb/...`` (what ``helm package`` lays out), versioned ``version``."""
    entries = [
        (name, chart_with_version(data, version) if name == "kstb/Chart.yaml" else data, mode)
        for name, data, mode in _tree(
            "kstb", root / CHART_DIR.relative_to(ROOT), ["*.yaml", ".helmignore", "templates/*"]
        )
    ]
    return deterministic_targz(entries)


def systemd_units(version: str, root: Path = ROOT) -> bytes:
    """The systemd units and the sysusers file."""
    return deterministic_targz(
        _tree(f"kstb-{version}-systemd", root / SYSTEMD_DIR.relative_to(ROOT), ["*"])
    )


def write_release(
    dist: Path,
    chaincode_address: str,
    tls_root: Path | None,
    *,
    root: Path = ROOT,
    version: str | None = None,
    plaintext_chaincode: bool = False,
) -> list[Path]:
    """Write every non-Python artifact of the module docstring from the tree ``root`` into
    ``dist`` (which may already hold the wheel and sdist) and return the files SHA256SUMS
    covers. No CCaaS package without ``tls_root`` unless ``plaintext_chaincode``."""
    version = version or project_version(root)
    dist.mkdir(parents=True, exist_ok=True)
    outputs = {
        f"kstb-chaincode-{version}.tar.gz": chaincode_source(version, root),
        f"kstb-{version}.tgz": helm_chart(version, root),
        f"kstb-{version}-systemd.tar.gz": systemd_units(version, root),
    }
    if tls_root is not None or plaintext_chaincode:
        # SECURITY: tls_required + client_auth_required with the server's CA; plaintext only
        # when asked for by name (development).
        outputs[f"kstb-chaincode-{version}-ccaas.tar.gz"] = ccaas_package(
            CHAINCODE_NAME, chaincode_address, version, tls_root.read_bytes() if tls_root else None
        )
    for name, data in outputs.items():
        (dist / name).write_bytes(data)
    shutil.copyfile(root / "requirements.lock", dist / f"kstb-{version}-constraints.txt")
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
        help="CA (PEM) of the chaincode server's certificate: mutual TLS peer <-> chaincode"
        " (without it no CCaaS package is written)",
    )
    parser.add_argument(
        "--chaincode-plaintext-for-development",
        action="store_true",
        help="write a plaintext CCaaS package when no --chaincode-tls-root is given",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="build from a working tree that differs from HEAD; every version gets '+dirty'",
    )
    args = parser.parse_args(argv)
    if args.chaincode_tls_root is not None and not args.chaincode_tls_root.is_file():
        print(f"release: {args.chaincode_tls_root} is not a file", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="kstb-release-") as tmp:
            export = export_tree(ROOT, Path(tmp) / "src", allow_dirty=args.allow_dirty)
            if args.dist.exists():
                # SECURITY (of the operator's files): only a previous release is replaced.
                if any(args.dist.iterdir()) and not (args.dist / "SHA256SUMS").is_file():
                    raise ReleaseRefused(f"{args.dist} is not empty and holds no SHA256SUMS")
                shutil.rmtree(args.dist)
            build_python(export, args.dist)
            covered = write_release(
                args.dist,
                args.chaincode_address,
                args.chaincode_tls_root,
                root=export.root,
                version=export.version,
                plaintext_chaincode=args.chaincode_plaintext_for_development,
            )
    except ReleaseRefused as exc:
        print(f"release refused: {exc}", file=sys.stderr)
        return 2
    for path in covered:
        print(path.relative_to(args.dist) if path.is_relative_to(args.dist) else path)
    print("SHA256SUMS")
    if export.dirty:
        print(f"WARNING: built from a dirty tree; version {export.version}", file=sys.stderr)
    if args.chaincode_tls_root is None and not args.chaincode_plaintext_for_development:
        print("note: no CCaaS package (give --chaincode-tls-root)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
