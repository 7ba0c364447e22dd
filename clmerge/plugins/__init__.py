"""Avalanche plugins: the merge driver, training-time plugins, metrics, progress."""
