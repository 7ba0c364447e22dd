"""Experiment layer: configuration, profiles, the runner, results and their loader."""
