"""KSTB bridge chaincode for Hyperledger Fabric (Python, run as a service).

``core`` is the protocol core (digests, signature and certificate rules, error reasons),
generated from ``bridge/core`` by ``python -m bridge.tools.vendor_core`` (do not edit it);
``protocol`` holds the pure endpoint logic (token controls, the two-phase-commit legs) on
top of it and imports nothing from Fabric; ``chaincode`` binds it to the fabric-chaincode-python
shim; ``python -m kstb_chaincode`` (with ``PYTHONPATH=contracts/fabric``) serves it as a
chaincode-as-a-service (CCaaS) gRPC server. This package must not import ``bridge``: it is
deployed on its own, next to a Fabric peer.
"""

VERSION = "2.1.0"
"""Chaincode version; 2.x speaks protocol v2 (instructions, network-bound claims); 2.1 adds
certified committee rotation (``RotateCommittee``, ``Committees``, ADR 0008)."""
