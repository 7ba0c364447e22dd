"""Evaluation in chunks (clmerge/strategies/template.py) gives what one pass over the
whole minibatch gives, bit for bit: on the letters ViT's logits and on the accuracy
matrices of whole runs."""

from __future__ import annotations

import pytest
import torch

from clmerge.backbones.heads import HeadedModel
from clmerge.backbones.registry import build_backbone
from clmerge.experiment.config import make_config
from clmerge.experiment.runner import run_experiment
from clmerge.strategies import template
from clmerge.strategies.template import in_chunks


@pytest.mark.parametrize("n,chunk", [(7, 3), (50, 50), (130, 50), (1, 50)])
def test_in_chunks_concatenates_the_rows_in_order(n, chunk):
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    calls = []

    def fn(part):
        calls.append(len(part))
        return part * 2

    assert torch.equal(in_chunks(fn, x, chunk), x * 2)
    assert calls == [min(chunk, n - i) for i in range(0, n, chunk)]


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_chunked_logits_of_the_letters_vit_equal_one_pass(head):
    torch.manual_seed(0)
    backbone = build_backbone("vit_letters", (1, 28, 28), 28, pretrained=False)
    model = HeadedModel(backbone, [[0, 1, 2], [3, 4], [5, 6, 7]], 8, head=head).eval()
    model.set_active_heads([0, 1, 2])
    x = torch.randn(130, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(in_chunks(model, x), model(x))
        assert torch.equal(in_chunks(model.backbone, x, 17), model.backbone(x))


def test_a_run_evaluated_in_chunks_has_the_accuracies_of_one_pass(monkeypatch):
    cfg = make_config("seq", profile="smoke", overrides={"eval_batch_size": 96})
    chunked = run_experiment(cfg, progress=False)
    monkeypatch.setattr(template, "EVAL_CHUNK", 10_000)
    monkeypatch.setattr(template.in_chunks, "__defaults__", (10_000,))
    whole = run_experiment(cfg, progress=False)
    assert chunked["R"] == whole["R"] and chunked["R_til"] == whole["R_til"]
