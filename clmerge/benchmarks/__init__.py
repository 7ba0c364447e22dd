"""Avalanche class-incremental streams (see ``registry.BENCHMARKS``)."""
