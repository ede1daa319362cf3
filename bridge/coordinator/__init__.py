"""The coordinator: durable two-phase-commit driver and the brokerage-facing API.

A liveness component only: the ledgers and the committee enforce safety. After a
restart it finishes every unfinished transfer from its log and the ledgers' state.
"""
