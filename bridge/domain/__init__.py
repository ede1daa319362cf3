"""Pure protocol logic: identifiers, transfer terms, claims, certificates, states.

Nothing in this package does I/O; every function is deterministic and shared by the
coordinator, relayers, verifiers and the tests, so that all of them agree byte for byte
with the on-ledger contracts.
"""
