"""Versioned, upgradable, restorable stores (issue 12 item 6, ADR 0022)."""
