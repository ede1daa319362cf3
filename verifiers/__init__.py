"""The verifier daemon: one committee member.

It reads every ledger through its own connections, signs a claim only when the
finalized ledger state supports it, and keeps a durable vote log so it never signs
both COMMIT and ABORT for one transfer.
"""
