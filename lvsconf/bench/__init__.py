"""Benchmarks behind ``lvsconf bench`` (one module per target)."""
