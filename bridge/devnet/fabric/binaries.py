"""The Fabric binaries and the chaincode interpreter: where they are, and building them
(``deploy/fabric/build.sh``, pinned release, cached in ``.cache/fabric/<version>/bin``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge.devnet.processes import REPO_ROOT

FABRIC_VERSION = "2.5.9"
"""The Fabric release built by ``deploy/fabric/build.sh`` (see the pin there)."""

FABRIC_DEPLOY_DIR = REPO_ROOT / "deploy" / "fabric"
BUILD_SCRIPT = FABRIC_DEPLOY_DIR / "build.sh"
CCAAS_BUILDER_DIR = FABRIC_DEPLOY_DIR / "ccaas_builder"
FABRIC_TOOLS = ("peer", "orderer", "configtxgen", "cryptogen", "osnadmin")
DEFAULT_CHANNEL = "bridge"
ORDERER_MSP_ID = "OrdererMSP"
BOTH_ORGS_POLICY = "AND('Org1MSP.peer','Org2MSP.peer')"
"""The endorsement policy every chaincode deployed here gets: both orgs must endorse."""

START_TIMEOUT = 60.0
CLI_TIMEOUT = 60.0


class FabricError(RuntimeError):
    """A Fabric command or process failed; the message carries its output or log tail."""


def fabric_bin_dir() -> Path:
    """Where the Fabric binaries are: ``$KSTB_FABRIC_BIN`` or the versioned build cache."""
    override = os.environ.get("KSTB_FABRIC_BIN")
    if override:
        return Path(override)
    return REPO_ROOT / ".cache" / "fabric" / FABRIC_VERSION / "bin"


def ensure_fabric_binaries(build: bool = True) -> Path:
    """Return the binary dir, running ``deploy/fabric/build.sh`` first if a binary is missing.

    With ``build=False`` a missing binary raises ``FileNotFoundError`` naming the build command.
    """
    bin_dir = fabric_bin_dir()
    missing = [t for t in FABRIC_TOOLS if not (bin_dir / t).is_file()]
    if not missing:
        return bin_dir
    if not build or os.environ.get("KSTB_FABRIC_BIN"):
        raise FileNotFoundError(
            f"Fabric binaries {missing} not found in {bin_dir}; build them with "
            f"`bash deploy/fabric/build.sh` (needs Go >= 1.24 and the Go module proxy)"
        )
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise FabricError(
            f"deploy/fabric/build.sh failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    still = [t for t in FABRIC_TOOLS if not (bin_dir / t).is_file()]
    if still:
        raise FabricError(f"deploy/fabric/build.sh ran but {still} are still missing in {bin_dir}")
    return bin_dir


def chaincode_python() -> Path:
    """The interpreter that serves chaincode (``$KSTB_CHAINCODE_PYTHON`` overrides).

    The project's own environment: requirements.lock pins fabric-chaincode-python and the
    chaincode's crypto dependencies alongside everything else.
    """
    override = os.environ.get("KSTB_CHAINCODE_PYTHON")
    return Path(override) if override else Path(sys.executable)
