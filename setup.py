"""setuptools hook: ship the compiled EVM contract artifacts inside the wheel (ADR 0021).

The artifacts are committed under ``contracts/evm/artifacts`` (the Solidity toolchain and its
drift test own that directory); a relayer needs the endpoint's ABI at run time, so the build
copies them into ``bridge/ledgers/evm/_artifacts`` in the wheel, where
:mod:`bridge.ledgers.evm.artifacts` looks first. Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ARTIFACTS = Path(__file__).resolve().parent / "contracts" / "evm" / "artifacts"


class BuildPyWithArtifacts(build_py):
    """build_py that also copies contracts/evm/artifacts/*.json into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads contracts/evm/artifacts in place
        names = sorted(ARTIFACTS.glob("*.json"))
        if not names:
            raise SystemExit(f"no contract artifacts in {ARTIFACTS}")
        out = Path(self.build_lib) / "bridge" / "ledgers" / "evm" / "_artifacts"
        out.mkdir(parents=True, exist_ok=True)
        for src in names:
            shutil.copyfile(src, out / src.name)


setup(cmdclass={"build_py": BuildPyWithArtifacts})
