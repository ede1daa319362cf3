"""KSTB: a cross-ledger bridge for regulated security tokens."""
