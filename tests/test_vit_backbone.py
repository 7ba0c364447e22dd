"""SmallViT backbone, letters pretraining data and the committed checkpoint (fast)."""

from __future__ import annotations

import json
import re
import string

import numpy as np
import pytest
import torch
from torch import nn

from clmerge.backbones.base import Backbone
from clmerge.backbones.vit import (SmallViT, build_small_vit, checkpoint_paths,
                                   default_checkpoint_dir, sha256_file)
from clmerge.pretrain.letters import LETTERS, N_CLASSES, render_letters


def test_letters_deterministic_52_classes_no_digits():
    X1, y1 = render_letters(3, seed=7)
    X2, y2 = render_letters(3, seed=7)
    X3, _ = render_letters(3, seed=8)
    assert X1.dtype == np.uint8 and X1.shape == (52 * 3, 28, 28)
    assert y1.dtype == np.int64
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)
    assert N_CLASSES == 52 and sorted(np.unique(y1).tolist()) == list(range(52))
    assert LETTERS == string.ascii_lowercase + string.ascii_uppercase
    assert not set(LETTERS) & set(string.digits)
    # white glyph on black background, every image has ink
    assert (X1.reshape(len(X1), -1).max(1) > 200).all()
    border = np.concatenate([X1[:, 0], X1[:, -1], X1[:, :, 0], X1[:, :, -1]], axis=1)
    assert border.mean() < 10


@pytest.mark.parametrize("hw", [28, 8])
def test_small_vit_forward_shapes(hw):
    torch.manual_seed(0)
    m = SmallViT(embed_dim=32, depth=1, num_heads=2)
    assert isinstance(m, Backbone) and m.out_dim == 32
    out = m(torch.rand(5, 1, hw, hw))
    assert out.shape == (5, m.out_dim)
    assert torch.isfinite(out).all()


def _committed_meta():
    st_path, meta_path = checkpoint_paths(default_checkpoint_dir())
    assert st_path.is_file() and meta_path.is_file(), "committed checkpoint missing"
    return st_path, json.loads(meta_path.read_text())


def test_committed_checkpoint_sha256_matches_json():
    st_path, meta = _committed_meta()
    assert sha256_file(st_path) == meta["sha256"]
    assert meta["recipe"]["seed"] == meta["seed"]
    assert 0.0 <= meta["heldout_acc"] <= 1.0


def test_pretrained_differs_from_random_init():
    _committed_meta()  # fail (rather than silently retrain) if the checkpoint is missing
    torch.manual_seed(0)
    pre = build_small_vit(pretrained=True).eval()
    torch.manual_seed(0)
    rnd = build_small_vit(pretrained=False).eval()
    assert pre.out_dim == rnd.out_dim
    assert "head" not in " ".join(pre.state_dict())  # backbone only, no letter head
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        fp, fr = pre(x), rnd(x)
        f8 = pre(torch.rand(8, 1, 8, 8))
    assert fp.shape == fr.shape == (8, pre.out_dim) and f8.shape == (8, pre.out_dim)
    assert not torch.allclose(fp, fr, atol=1e-3)


def test_lora_is_on_the_fused_qkv_linears_only():
    from peft.tuners.lora import LoraLayer

    from clmerge.backbones.lora import LoRAAdapter
    from clmerge.backbones.qkv import RowSlice, SplitQKV
    torch.manual_seed(0)
    m = SmallViT(embed_dim=32, depth=2, num_heads=2)
    names = [n for n, _ in m.named_modules()]
    expected = {n for n in names if re.fullmatch(m.lora_targets, n)}
    assert expected == {f"vit.blocks.{i}.attn.qkv" for i in range(2)}
    lora = LoRAAdapter(m, m.lora_targets, rank=4, alpha=4)
    split = {n for n, mod in m.named_modules() if isinstance(mod, SplitQKV)}
    assert split == expected and set(lora.layers) == {f"{n}.weight" for n in expected}
    adapted = {n for n, mod in m.named_modules() if isinstance(mod, LoraLayer)}
    assert adapted == {f"{n}.{p}" for n in expected for p in ("k", "v")}
    for n in split:
        assert isinstance(m.get_submodule(f"{n}.q"), RowSlice)    # Q not adapted
    assert isinstance(m.vit.patch_embed.proj, nn.Conv2d)
    assert all(type(b.attn.proj) is nn.Linear for b in m.vit.blocks)   # proj not adapted
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 32)
