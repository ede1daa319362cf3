"""The CometBFT ledger kind: a proprietary (non-EVM) chain whose ABCI application
(``contracts/cometbft``) holds the security and the bridge endpoint (ADR 0018)."""
