import os

import pytest
import torch

# Tests are small; one thread avoids oversubscription when other processes share the cores.
torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    return d
