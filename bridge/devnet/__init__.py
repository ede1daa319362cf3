"""Local development networks: real ledgers and bridge processes on 127.0.0.1.

Used by the demo, the tests and the benchmarks. Nothing here is for production.
"""
