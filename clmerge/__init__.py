"""clmerge: model merging for continual learning (P&M, TRM and baselines) on Avalanche."""

import warnings as _warnings

__version__ = "0.1.0"

# Libraries clmerge imports pull in tqdm.auto, which warns inside notebooks without
# ipywidgets; clmerge's own progress bars are plain text, so the warning is noise.
_warnings.filterwarnings("ignore", message="IProgress not found")
