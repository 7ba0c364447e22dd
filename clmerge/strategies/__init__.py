"""Avalanche strategies: the training template and the method registry."""
