"""The KSTB bridge application for a CometBFT chain (ABCI 2.0 over gRPC, ADR 0018).

``store`` is the versioned SQLite state (every committed height readable); ``app`` the ABCI
logic: it authenticates transactions (``bridge.ledgers.cometbft.envelope``: secp256k1,
per-account nonces, the chain id), runs the bridge endpoint's state machine (the SAME pure
module the Fabric chaincode runs, ``kstb_chaincode.protocol``, over the vendored protocol
core) against the block's state with the block time as the ledger time, and answers ABCI
queries; ``server`` binds it to CometBFT's ``ABCIService``; ``python -m kstb_cometbft``
serves it. ``fingerprint`` pins the exact code a chain runs (checked at genesis and at each
start, so validators running different rules refuse to start instead of forking).
"""

VERSION = "1.0.0"
"""Application version (reported in ABCI Info as ``app_version`` 1)."""
APP_VERSION = 1
