"""The pinned buf CLI and the Go protoc plugins: where they are, and running them.

``deploy/buf/build.sh`` installs them into ``.cache/buf/<version>/bin``: buf from the npm
package ``@bufbuild/buf`` (pinned with its hashes by ``deploy/buf/package-lock.json``), the
plugins built with Go from ``examples/go-client/go.mod``. The released API images live in
``proto/releases/``: ``v<version>.binpb`` is ``buf build`` of ``proto/`` as that release
shipped it, and ``buf breaking`` compares the working protos against the newest of them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF_VERSION = "1.75.0"
"""The buf release built by ``deploy/buf/build.sh`` (its ``BUF_VERSION``; a test keeps
the two equal)."""
BUILD_SCRIPT = ROOT / "deploy" / "buf" / "build.sh"
PROTO_DIR = ROOT / "proto"
RELEASES_DIR = PROTO_DIR / "releases"
TOOLS = ("buf", "protoc-gen-go", "protoc-gen-go-grpc")

_RELEASE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)\.binpb$")


def bin_dir() -> Path:
    """Where buf and the plugins are: ``$KSTB_BUF_BIN`` or the versioned build cache."""
    override = os.environ.get("KSTB_BUF_BIN")
    return Path(override) if override else ROOT / ".cache" / "buf" / BUF_VERSION / "bin"


def missing_tools() -> list[str]:
    """The tools not built yet (empty when buf and both plugins are there)."""
    return [t for t in TOOLS if not (bin_dir() / t).is_file()]


def run_buf(args: list[str], cwd: Path, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the pinned buf with the plugins on PATH; never raises on a non-zero exit.

    Guarantees: no network access is needed (no remote plugins or dependencies are named
    in any buf file here), and buf's cache stays under the build cache, not ``$HOME``.
    """
    tools = bin_dir()
    env = dict(os.environ)
    env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("BUF_CACHE_DIR", str(tools.parent / "cache"))
    return subprocess.run(
        [str(tools / "buf"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def releases() -> list[tuple[tuple[int, int, int], Path]]:
    """Every committed release image, oldest first."""
    found = []
    for path in RELEASES_DIR.glob("v*.binpb"):
        m = _RELEASE.match(path.name)
        if m:
            found.append(((int(m[1]), int(m[2]), int(m[3])), path))
    return sorted(found)


def last_release() -> Path:
    """The newest committed release image; FileNotFoundError when there is none."""
    found = releases()
    if not found:
        raise FileNotFoundError(f"no release image in {RELEASES_DIR}")
    return found[-1][1]
