"""The ``paper`` profile offline: loaders on tiny fake trees, ViT-B/16 wiring, CLI errors.

No download, no GPU: the CIFAR-100 / ImageNet-R / CUB-200 trees are written by the tests
in the official layouts, and ViT-B/16 is random-init with 1-2 blocks.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from clmerge.backbones.vit_b16 import (HUB_ID, WEIGHTS_ENV, WeightsUnavailableError,
                                       build_vit_b16)
from clmerge.benchmarks import paper
from clmerge.benchmarks.paper import DatasetMissingError

D = 768  # ViT-B/16 width: qkv rows [0, D) are Q, [D, 3D) are K and V


# ---------------------------------------------------------------------- fake trees
def _jpeg(path, seed, size=(40, 30)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def fake_cifar100(root, per_class=1):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [c for c in range(100) for _ in range(per_class)]
    for split in ("train", "test"):
        data = rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)},
                        f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return root


def fake_imagenet_r(root, n_classes=4, per_class=5):
    for c in range(n_classes):
        for i in range(per_class):
            _jpeg(root / "imagenet-r" / f"n0000000{c}" / f"art_{i}.jpg", seed=10 * c + i)
    return root


def fake_cub(root, n_classes=4, per_class=3):
    folder = root / "CUB_200_2011"
    images, split, labels, classes = [], [], [], []
    k = 0
    for c in range(1, n_classes + 1):
        name = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {name}")
        for i in range(per_class):
            k += 1
            rel = f"{name}/Bird_{c}_{i}.jpg"
            _jpeg(folder / "images" / rel, seed=k)
            images.append(f"{k} {rel}")
            split.append(f"{k} {0 if i == 0 else 1}")   # first image of each class: test
            labels.append(f"{k} {c}")
    for fname, lines in (("images.txt", images), ("train_test_split.txt", split),
                         ("image_class_labels.txt", labels), ("classes.txt", classes)):
        (folder / fname).write_text("\n".join(lines) + "\n")
    return root


def _check_stream(s, n_exp, n_classes):
    assert s.is_image and s.input_shape == (3, 224, 224)
    assert s.n_experiences == n_exp and s.n_classes == n_classes
    flat = [c for cls in s.classes_per_exp for c in cls]
    assert sorted(flat) == list(range(n_classes))
    for t, e in enumerate(s.train_stream):
        ys = {int(y) for y in e.dataset.targets}
        assert ys == set(s.classes_per_exp[t])
    x, y, *_ = s.test_stream[0].dataset[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert int(y) in s.classes_per_exp[0]


# ---------------------------------------------------------------------- loaders
def test_split_cifar100_fake_tree(tmp_path, monkeypatch):
    monkeypatch.setenv(paper.DATA_ENV, str(fake_cifar100(tmp_path)))
    from clmerge.benchmarks.registry import build_stream
    for n in (10, 20):
        s = build_stream("split_cifar100", n, 0)
        _check_stream(s, n, 100)
        assert [len(e.dataset) for e in s.train_stream] == [100 // n] * n
    x, _, *_ = s.train_stream[0].dataset[0]
    assert x.shape == (3, 224, 224)


def test_imagenet_r_fake_tree_and_fixed_split(tmp_path):
    fake_imagenet_r(tmp_path)
    s = paper.imagenet_r(n_experiences=2, seed=1, root=tmp_path)
    _check_stream(s, 2, 4)
    assert [len(e.dataset) for e in s.train_stream] == [8, 8]   # 4 of 5 per class
    assert [len(e.dataset) for e in s.test_stream] == [2, 2]
    x, _, *_ = s.train_stream[1].dataset[0]
    assert x.shape == (3, 224, 224)
    tr, te, wnids = paper.imagenet_r_split(tmp_path / "imagenet-r")
    tr2, te2, _ = paper.imagenet_r_split(tmp_path / "imagenet-r")
    assert te == te2 and not {p for p, _ in tr} & {p for p, _ in te}
    assert wnids == sorted(wnids) and len(tr) + len(te) == 20


def test_imagenet_r_from_official_tar(tmp_path):
    import tarfile
    src = fake_imagenet_r(tmp_path / "src", n_classes=2, per_class=5)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "imagenet-r.tar", "w") as tar:
        tar.add(src / "imagenet-r", arcname="imagenet-r")
    s = paper.imagenet_r(n_experiences=2, seed=0, root=root)
    assert s.n_classes == 2 and (root / "imagenet-r").is_dir()


def test_cub200_fake_tree(tmp_path):
    fake_cub(tmp_path)
    s = paper.cub200(n_experiences=2, seed=0, root=tmp_path)
    _check_stream(s, 2, 4)
    assert sum(len(e.dataset) for e in s.train_stream) == 8
    assert sum(len(e.dataset) for e in s.test_stream) == 4
    assert s.info["classes"][0] == "001.Bird_1"


@pytest.mark.parametrize("builder,needle", [
    (paper.split_cifar100, "cifar-100-python.tar.gz"),
    (paper.imagenet_r, "imagenet-r.tar"),
    (paper.cub200, "CUB_200_2011"),
])
def test_missing_data_says_what_and_where(tmp_path, builder, needle):
    with pytest.raises(DatasetMissingError) as err:
        builder(n_experiences=10, seed=0, root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert needle in msg and str(tmp_path) in msg and paper.DATA_ENV in msg
    assert "\n" not in msg


def test_cli_missing_data_exits_2(tmp_path, monkeypatch, capsys):
    from clmerge.cli import main
    monkeypatch.setenv(paper.DATA_ENV, str(tmp_path))
    rc = main(["run", "--method", "pm", "--benchmark", "split_cifar100", "--profile", "paper",
               "--out", str(tmp_path / "res"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("clmerge: error: CIFAR-100 not found: download ")
    assert "Traceback" not in err and not (tmp_path / "res").exists()


def test_cuda_without_gpu_is_a_config_error(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from clmerge.experiment.config import ConfigError, make_config
    from clmerge.experiment.runner import Run
    monkeypatch.setenv(paper.DATA_ENV, str(fake_cifar100(tmp_path)))
    cfg = make_config("pm", "split_cifar100", "paper", 0)
    assert cfg.device == "cuda"
    with pytest.raises(ConfigError, match="no GPU is available; use --set device=cpu"):
        Run(cfg)


# ---------------------------------------------------------------------- config
def test_paper_profile_resolves():
    from clmerge.experiment.config import load_profile, make_config
    cfg = make_config("pm", "split_cifar100", "paper", 0, {"device": "cpu"})
    assert (cfg.backbone, cfg.n_experiences, cfg.lora_rank, cfg.lora_alpha) == \
        ("vit_b16_in21k", 10, 10, 10.0)
    assert (cfg.lr, cfg.head_lr, cfg.batch_size, cfg.epochs, cfg.eval_batch_size) == \
        (1e-3, 1e-2, 256, 10, 256)
    assert cfg.finetune == "lora" and cfg.pretrained and cfg.device == "cpu"
    assert make_config("pm", None, "paper", 0).benchmark == "split_cifar100"
    for b in ("imagenet_r", "cub200"):
        assert make_config("pm", b, "paper", 0).n_experiences == 10
    assert make_config("pm", "imagenet_r", "paper", 0, {"n_experiences": 20}).n_experiences == 20
    assert load_profile("paper")["seeds"] == [0, 1, 2]


# ---------------------------------------------------------------------- ViT-B/16
def test_weights_missing_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(WeightsUnavailableError) as err:
        build_vit_b16(pretrained=True, depth=1, hub=False)
    assert WEIGHTS_ENV in str(err.value) and HUB_ID in str(err.value)
    assert isinstance(err.value, RuntimeError)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsUnavailableError, match="nope.safetensors"):
        build_vit_b16(pretrained=True, depth=1, hub=False)


def test_weights_from_local_file(monkeypatch, tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    src = build_vit_b16(pretrained=False, depth=2)
    sd = {k: v.contiguous() for k, v in src.vit.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "w.safetensors"))
    one = build_vit_b16(pretrained=True, depth=1, hub=False)   # truncates to block 0
    assert torch.equal(one.vit.blocks[0].attn.qkv.weight, src.vit.blocks[0].attn.qkv.weight)
    assert torch.equal(one.vit.pos_embed, src.vit.pos_embed)


def test_lora_is_on_k_and_v_rows_only():
    from clmerge.backbones.lora import LoRAAdapter
    torch.manual_seed(0)
    bb = build_vit_b16(pretrained=False, depth=2)
    lora = LoRAAdapter(bb, bb.lora_targets, rank=4, alpha=4)
    assert sorted(lora.layers) == [f"vit.blocks.{i}.attn.qkv.weight" for i in range(2)]
    w0 = {k: v.detach().clone() for k, v in lora.base_weights().items()}
    bb.train()
    opt = torch.optim.AdamW(lora.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(2, 3, 224, 224)
    for _ in range(2):
        opt.zero_grad()
        bb(x).pow(2).mean().backward()
        opt.step()
    delta = lora.delta()
    for k, d in delta.items():
        assert d.shape == (3 * D, D)
        assert torch.count_nonzero(d[:D]) == 0 and torch.count_nonzero(d[D:]) > 0
    lora.write_base({k: w0[k] + delta[k] for k in delta})
    for k, w in lora.base_weights().items():
        assert torch.equal(w[:D], w0[k][:D])              # Q rows unchanged
        assert not torch.equal(w[D:2 * D], w0[k][D:2 * D])  # K rows changed
        assert not torch.equal(w[2 * D:], w0[k][2 * D:])    # V rows changed


@pytest.mark.slow
def test_paper_profile_one_training_step_end_to_end(tmp_path, monkeypatch):
    """`paper` config (device=cpu) on a fake CIFAR-100 tree with a 1-block random
    ViT-B/16: one P&M task (one optimizer step, Fisher, merge, evaluation)."""
    from clmerge.backbones import registry as bb_registry
    from clmerge.experiment.config import make_config
    from clmerge.experiment.runner import Run

    monkeypatch.setenv(paper.DATA_ENV, str(fake_cifar100(tmp_path)))
    name = "vit_b16_in21k"
    monkeypatch.setitem(bb_registry.BACKBONES, name, (
        lambda shape, size, pretrained: build_vit_b16(pretrained=False, depth=1),
        bb_registry.BACKBONES[name][1]))
    cfg = make_config("pm", "split_cifar100", "paper", 0, {"device": "cpu", "epochs": 1})
    run = Run(cfg)
    run.strategy.train_heads = [0]
    run.strategy.train(run.stream.train_stream[0])    # 10 images, batch 256: one step
    cil, til = run.evaluate(0)
    assert len(cil) == 1 and 0.0 <= cil[0] <= 1.0 and 0.0 <= til[0] <= 1.0
    (key,) = run.weights
    w, w0 = run.weights[key], run.theta0[key]
    assert torch.equal(w[:D], w0[:D]) and not torch.equal(w[D:], w0[D:])
