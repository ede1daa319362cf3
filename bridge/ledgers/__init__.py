"""Ledger adapters: one interface, one implementation per ledger kind."""
