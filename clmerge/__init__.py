"""clmerge: model merging for continual learning (P&M, TRM and baselines) on Avalanche."""

__version__ = "0.1.0"
