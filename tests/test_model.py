"""Head protocol, LoRA adapter, backbones: the invariants the pipeline rests on."""

import pytest
import torch
from torch import nn

from clmerge.backbones.heads import HeadedModel
from clmerge.backbones.lora import LoRAAdapter
from clmerge.backbones.mlp import MLPBackbone
from clmerge.backbones.mobilenet import MobileNetV2Backbone, ensure_mobilenet_v2_weights

CLASSES = [[3, 0], [1, 2]]


def make_model(seed=0):
    torch.manual_seed(seed)
    return HeadedModel(MLPBackbone((6,), width=8), CLASSES, 4)


def test_inactive_heads_are_minus_inf_and_loss_sees_one_head():
    m = make_model()
    x = torch.randn(5, 6)
    m.set_active_heads([1])
    logits = m(x)
    assert torch.isinf(logits[:, [3, 0]]).all() and torch.isfinite(logits[:, [1, 2]]).all()
    y = torch.tensor([1, 2, 1, 2, 2])
    own = m.heads[1](m.backbone(x))               # columns: class 1, class 2
    expected = nn.functional.cross_entropy(own, y - 1)
    assert nn.functional.cross_entropy(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    m.set_active_heads([0, 1])
    assert torch.isfinite(m(x)).all()


def test_lora_delta_matches_peft_and_folding_reproduces_the_finetuned_model():
    m = make_model()
    lora = LoRAAdapter(m.backbone, m.backbone.lora_targets, rank=2, alpha=4)
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_()
    x = torch.randn(7, 6)
    m.set_active_heads([0, 1])
    before = m(x)
    delta = lora.delta()
    for k, layer in lora.layers.items():
        assert torch.allclose(delta[k], layer.get_delta_weight("default"), atol=1e-6)
    base = lora.base_weights()
    lora.write_base({k: base[k] + delta[k] for k in base})   # merge with a = 1
    assert all(float(l.lora_B["default"].weight.detach().abs().max()) == 0 for l in lora.layers.values())
    assert torch.allclose(m(x), before, atol=1e-5)


def test_scale_factor_scales_the_branch_only():
    m = make_model()
    lora = LoRAAdapter(m.backbone, ["fc1"], rank=2, alpha=2)
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_()
    layer = lora.layers["fc1.weight"]
    x = torch.randn(3, 6)
    base_out = layer.get_base_layer()(x)
    branch = layer(x) - base_out
    lora.set_scale_factor(1.5)
    assert torch.allclose(layer(x) - base_out, 1.5 * branch, atol=1e-6)
    lora.set_scale_factor(1.0)
    assert torch.allclose(layer(x) - base_out, branch, atol=1e-6)


def test_bad_lora_targets_fail_clearly():
    with pytest.raises(ValueError):
        LoRAAdapter(make_model().backbone, ["fc1"], rank=0, alpha=1)


def test_mobilenet_offline_weights_and_pointwise_targets():
    path = ensure_mobilenet_v2_weights()
    assert path.exists()
    b = MobileNetV2Backbone(image_size=32, pretrained=True)
    # block 1 has one pointwise conv, blocks 2..17 two each, plus the final 1x1 conv
    assert b.out_dim == 1280 and len(b.lora_targets) == 1 + 16 * 2 + 1
    convs = dict(b.named_modules())
    assert all(convs[n].kernel_size == (1, 1) and convs[n].groups == 1 for n in b.lora_targets)
    b.train()
    bns = [m for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)   # running statistics are frozen
    with torch.no_grad():
        f = b(torch.rand(2, 1, 28, 28))
    assert f.shape == (2, 1280)
