"""Benchmarks that print ratios measured in one run (see bench/README.md).

A command: may import everything below it; nothing imports it.
"""
