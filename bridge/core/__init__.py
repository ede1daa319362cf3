"""The KSTB protocol core: the arithmetic every ledger and every process must agree on.

Words (ledger, security, address, network), domain tags, the transfer id, the terms hash,
claim, instruction and committee-rotation digests, the signature recovery rule, the
certificate acceptance rule, the committee-epoch rules (``epochs``: which epochs verify, when
a rotation installs) and the closed set of contract error reasons. Pure and deterministic;
it depends only on safe-pysha3's Keccak and coincurve, and imports nothing else from this
repository (its modules import each other relatively), so ``python -m
bridge.tools.vendor_core`` can copy it verbatim into the Fabric chaincode, and endorsing
peers compute exactly what this computes.
``vectors.json`` holds golden cases that Python, the vendored copy and Solidity all check.
"""
