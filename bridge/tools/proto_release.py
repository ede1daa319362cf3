"""Cut a release image of the public API: ``proto/releases/v<version>.binpb``.

``python -m bridge.tools.proto_release`` writes ``buf build`` of ``proto/`` as
``proto/releases/v<version>.binpb`` (``<version>`` from ``pyproject.toml``, or
``--version``), after checking that ``buf lint`` passes and that the protos do not break
the previous release. An existing image is never overwritten: a release is immutable, and
``buf breaking`` in the test suite compares every later change against the newest one.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

from bridge.tools.buf import PROTO_DIR, RELEASES_DIR, ROOT, missing_tools, releases, run_buf

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def package_version() -> str:
    """The version in ``pyproject.toml``."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring. Exit 1 on any refusal, naming it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", default=None, help="release version (default: pyproject)")
    args = parser.parse_args(argv)
    version = args.version or package_version()
    if not _VERSION.match(version):
        print(f"release version {version!r} is not MAJOR.MINOR.PATCH", file=sys.stderr)
        return 1
    if missing_tools():
        print(
            f"buf is not built: run `bash deploy/buf/build.sh` ({missing_tools()})", file=sys.stderr
        )
        return 1
    target = RELEASES_DIR / f"v{version}.binpb"
    if target.exists():
        print(f"{target.relative_to(ROOT)} exists: a release image is immutable", file=sys.stderr)
        return 1
    lint = run_buf(["lint"], PROTO_DIR)
    if lint.returncode != 0:
        print("buf lint failed:\n" + lint.stdout + lint.stderr, file=sys.stderr)
        return 1
    previous = releases()
    if previous:
        if previous[-1][0] >= tuple(int(p) for p in version.split(".")):
            print(f"v{version} is not newer than {previous[-1][1].name}", file=sys.stderr)
            return 1
        check = run_buf(["breaking", "--against", str(previous[-1][1])], PROTO_DIR)
        if check.returncode != 0:
            print(
                f"the protos break {previous[-1][1].name} (a major version needs a new"
                f" package, bridge.v2):\n{check.stdout}{check.stderr}",
                file=sys.stderr,
            )
            return 1
    RELEASES_DIR.mkdir(parents=True, exist_ok=True)
    built = run_buf(["build", "-o", str(target)], PROTO_DIR)
    if built.returncode != 0:
        print("buf build failed:\n" + built.stdout + built.stderr, file=sys.stderr)
        return 1
    print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
