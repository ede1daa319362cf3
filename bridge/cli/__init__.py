"""The ``bridge`` command line for brokerages and operators."""
