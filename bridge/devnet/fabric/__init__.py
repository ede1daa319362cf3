"""A native Hyperledger Fabric network (no Docker) for tests and the demo, one layer per
module: ``binaries`` (build and locate the binaries), ``orgs`` (crypto material layout),
``network`` (processes, channel, peer CLI), ``lifecycle`` (chaincode deployment)."""

from bridge.devnet.fabric.binaries import (
    BOTH_ORGS_POLICY,
    BUILD_SCRIPT,
    CCAAS_BUILDER_DIR,
    CLI_TIMEOUT,
    DEFAULT_CHANNEL,
    FABRIC_DEPLOY_DIR,
    FABRIC_TOOLS,
    FABRIC_VERSION,
    ORDERER_MSP_ID,
    START_TIMEOUT,
    FabricError,
    chaincode_python,
    ensure_fabric_binaries,
    fabric_bin_dir,
)
from bridge.devnet.fabric.network import FabricNetwork
from bridge.devnet.fabric.orgs import FabricOrg

__all__ = [
    "BOTH_ORGS_POLICY",
    "BUILD_SCRIPT",
    "CCAAS_BUILDER_DIR",
    "CLI_TIMEOUT",
    "DEFAULT_CHANNEL",
    "FABRIC_DEPLOY_DIR",
    "FABRIC_TOOLS",
    "FABRIC_VERSION",
    "ORDERER_MSP_ID",
    "START_TIMEOUT",
    "FabricError",
    "FabricNetwork",
    "FabricOrg",
    "chaincode_python",
    "ensure_fabric_binaries",
    "fabric_bin_dir",
]
