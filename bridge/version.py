"""The installed release's version, from the package metadata (ADR 0021).

Every entry point (``bridge``, ``bridge-coordinator``, ``bridge-relayer``,
``bridge-verifier``) answers ``--version`` with it, so an operator and ``bridge doctor`` read
the same number the wheel was built with; there is no second copy to drift.
"""

from __future__ import annotations

import argparse
from importlib import metadata

DISTRIBUTION = "kstb"
UNKNOWN = "0+unknown"
"""Reported when the code runs from a source tree that was never installed."""


def package_version() -> str:
    """The ``kstb`` distribution's version, or :data:`UNKNOWN` when it is not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--version`` (prints ``<prog> <version>`` and exits 0) to ``parser``."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
