"""EVM ledgers (anvil, Hyperledger Besu, Kaia): contracts, deployment and the adapter."""
