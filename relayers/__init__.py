"""The relayer daemon a chain operator runs for its ledger.

It watches the bridge's events at finality and delivers them to the coordinator,
checkpointing only after acknowledgement, and applies the protocol steps the
coordinator asks for with the operator's own ledger identity. It decides nothing.
"""
