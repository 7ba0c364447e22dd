"""The paper benchmarks' protocol choices on fake data: class order, normalisation,
test resize, crops, ImageNet-R / CUB splits, the ImageNet-A / DomainNet / Stanford Cars
loaders, the cosine schedule, pooled metrics and the config fields that record them."""

from __future__ import annotations

import gzip
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clmerge.benchmarks import paper
from clmerge.benchmarks.paper import DatasetMissingError, Protocol
from test_paper_profile import _check_stream, _jpeg, fake_cifar100, fake_imagenet_r

PILOT_CIFAR_START = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]


# ---------------------------------------------------------------------- class order
def test_pilot_order_of_cifar100_is_the_1993_permutation_for_every_seed(tmp_path):
    root = fake_cifar100(tmp_path)
    pilot = Protocol(class_order="pilot")
    s0 = paper.split_cifar100(10, seed=0, root=root, protocol=pilot)
    s7 = paper.split_cifar100(10, seed=7, root=root, protocol=pilot)
    assert s0.classes_per_exp[0] == PILOT_CIFAR_START
    assert s0.classes_per_exp == s7.classes_per_exp
    assert [c for e in s0.classes_per_exp for c in e] == \
        np.random.RandomState(1993).permutation(100).tolist()
    natural = paper.split_cifar100(10, seed=3, root=root, protocol=Protocol(class_order="natural"))
    assert [c for e in natural.classes_per_exp for c in e] == list(range(100))
    seeded = [paper.split_cifar100(10, seed=k, root=root).classes_per_exp for k in (0, 1)]
    assert seeded[0] != seeded[1]                      # the default follows the run seed
    assert {int(y) for y in s0.train_stream[0].dataset.targets} == set(PILOT_CIFAR_START)


@pytest.mark.parametrize("benchmark,n,seed", [("split_cifar100", 100, 1993),
                                              ("imagenet_r", 200, 1995),
                                              ("domainnet", 345, 1993)])
def test_pilot_seed_per_benchmark(benchmark, n, seed):
    np.random.seed(seed)
    expected = np.random.permutation(n).tolist()
    assert paper.class_order("pilot", n, 0, benchmark) == expected
    assert paper.class_order("pilot", n, 5, benchmark) == expected


# ---------------------------------------------------------------------- transforms
@pytest.fixture
def image():
    from PIL import Image
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (300, 280, 3), dtype=np.uint8))


@pytest.mark.parametrize("norm,mean,std", [("none", 0.0, 1.0), ("half", 0.5, 0.5),
                                           ("imagenet", paper.NORM_MEAN, paper.NORM_STD)])
def test_input_normalisation(image, norm, mean, std):
    raw = paper.test_transform(Protocol(input_norm="none"))(image)
    assert raw.shape == (3, 224, 224) and 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    x = paper.test_transform(Protocol(input_norm=norm))(image)
    m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    assert torch.allclose(x, (raw - m) / s, atol=1e-6)


def test_test_resize_interpolation(image):
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode as I
    for mode, interp in (("bilinear", I.BILINEAR), ("bicubic", I.BICUBIC)):
        x = paper.test_transform(Protocol(input_norm="none", test_interpolation=mode))(image)
        ref = F.to_tensor(F.center_crop(F.resize(image, 256, interpolation=interp), 224))
        assert torch.equal(x, ref)
    a, b = (paper.test_transform(Protocol(input_norm="none", test_interpolation=m))(image)
            for m in ("bilinear", "bicubic"))
    assert not torch.equal(a, b)


def test_crop_scale_reaches_the_training_crop():
    for lo in (0.05, 0.08):
        crop = paper.train_transform(Protocol(crop_scale_min=lo)).transforms[0]
        assert crop.scale == (lo, 1.0) and crop.size == (224, 224)


# ---------------------------------------------------------------------- ImageNet-R
def test_shipped_imagenet_r_split_is_24000_6000_over_200_classes():
    classes, test = paper.read_split_file(paper.IMAGENET_R_CODA_SPLIT)
    assert len(classes) == len(set(classes)) == 200
    assert len(test) == len(set(test)) == 6000
    assert {t.split("/")[0] for t in test} == set(classes)
    with gzip.open(paper.IMAGENET_R_CODA_SPLIT, "rt") as f:
        assert "24000 train / 6000 test" in f.readline()


def test_imagenet_r_listed_split_from_a_user_file(tmp_path):
    fake_imagenet_r(tmp_path, n_classes=4, per_class=5)
    folder = tmp_path / "imagenet-r"
    test = [f"n0000000{c}/art_{i}.jpg" for c in range(4) for i in (0, c % 5)]
    split = tmp_path / "split.txt"
    split.write_text("# a split\nclass n00000003\nclass n00000001\nclass n00000000\n"
                     "class n00000002\n" + "".join(f"test {t}\n" for t in test))
    proto = Protocol(imagenet_r_split=str(split), class_order="natural")
    s = paper.imagenet_r(n_experiences=2, seed=0, root=tmp_path, protocol=proto)
    _check_stream(s, 2, 4)
    assert [c for e in s.classes_per_exp for c in e] == [3, 1, 0, 2]   # the file's order
    n_test = len(set(test))
    assert sum(len(e.dataset) for e in s.test_stream) == n_test
    assert sum(len(e.dataset) for e in s.train_stream) == 20 - n_test
    tr, te, wnids, _ = paper.imagenet_r_listed_split(folder, split)
    assert {f"{p.parent.name}/{p.name}" for p, _ in te} == set(test)
    assert not {p for p, _ in tr} & {p for p, _ in te}


def test_imagenet_r_split_listing_missing_images_says_so(tmp_path):
    fake_imagenet_r(tmp_path, n_classes=2, per_class=3)
    with pytest.raises(DatasetMissingError) as err:        # the shipped list: 6000 missing
        paper.imagenet_r(n_experiences=2, seed=0, root=tmp_path,
                         protocol=Protocol(imagenet_r_split="coda"))
    msg = str(err.value)
    assert msg.startswith("6000 of the 6000 test images") and "\n" not in msg
    with pytest.raises(DatasetMissingError, match="split file .* not found"):
        paper.imagenet_r(n_experiences=2, seed=0, root=tmp_path,
                         protocol=Protocol(imagenet_r_split=str(tmp_path / "nope.txt")))


def test_imagenet_r_sdlora_split_sizes_and_independence_of_the_run_seed(tmp_path):
    fake_imagenet_r(tmp_path, n_classes=3, per_class=7)
    tr, te, wnids = paper.imagenet_r_sdlora_split(tmp_path / "imagenet-r")
    assert len(tr) == 3 * int(0.8 * 7) and len(te) == 3 * (7 - int(0.8 * 7))
    assert not {p for p, _ in tr} & {p for p, _ in te}
    # the documented rule, for one class: name-sorted files shuffled by Random("0-<wnid>")
    import random
    files = sorted((tmp_path / "imagenet-r" / wnids[1]).iterdir())
    random.Random(f"0-{wnids[1]}").shuffle(files)
    assert [p for p, y in te if y == 1] == files[int(0.8 * 7):]
    assert paper.imagenet_r_sdlora_split(tmp_path / "imagenet-r") == (tr, te, wnids)
    for k in (0, 4):   # the split does not depend on the run seed
        s = paper.imagenet_r(1, seed=k, root=tmp_path, protocol=Protocol(imagenet_r_split="sdlora"))
        assert [len(e.dataset) for e in s.test_stream] == [len(te)]


# ---------------------------------------------------------------------- pre-split trees
def fake_presplit(folder, n_classes=4, train=3, test=2, prefix="c"):
    for c in range(n_classes):
        for split, n in (("train", train), ("test", test)):
            for i in range(n):
                _jpeg(folder / split / f"{prefix}{c:03d}" / f"{i}.jpg", seed=100 * c + i)
    return folder


@pytest.mark.parametrize("builder,folder,proto", [
    (paper.imagenet_a, "imagenet-a", Protocol()),
    (paper.stanford_cars, "stanford_cars", Protocol()),
    (paper.cub200, "cub", Protocol(cub_split="pilot")),
])
def test_presplit_loaders_on_fake_trees(tmp_path, builder, folder, proto):
    fake_presplit(tmp_path / folder)
    s = builder(n_experiences=2, seed=0, root=tmp_path, protocol=proto)
    _check_stream(s, 2, 4)
    assert sum(len(e.dataset) for e in s.train_stream) == 12
    assert sum(len(e.dataset) for e in s.test_stream) == 8
    assert s.info["classes"] == [f"c{c:03d}" for c in range(4)]


def fake_domainnet(root, n_classes=4, per=2):
    folder = root / "domainnet"
    for d in paper.DOMAINNET_DOMAINS:
        lines = {"train": [], "test": []}
        for c in range(n_classes):
            for split in ("train", "test"):
                for i in range(per):
                    rel = f"{d}/class_{c}/{d}_{split}_{c}_{i}.jpg"
                    _jpeg(folder / rel, seed=c * 10 + i, size=(12, 10))
                    lines[split].append(f"{rel} {c}")
        for split, ls in lines.items():
            (folder / f"{d}_{split}.txt").write_text("\n".join(ls) + "\n")
    return root


def test_domainnet_fake_tree(tmp_path):
    fake_domainnet(tmp_path)
    s = paper.domainnet(n_experiences=2, seed=0, root=tmp_path)
    _check_stream(s, 2, 4)
    assert sum(len(e.dataset) for e in s.train_stream) == 6 * 4 * 2
    assert sum(len(e.dataset) for e in s.test_stream) == 6 * 4 * 2
    assert s.info["classes"] == [f"class_{c}" for c in range(4)]


@pytest.mark.parametrize("builder,proto,needle", [
    (paper.imagenet_a, Protocol(), "imagenet-a/train"),
    (paper.domainnet, Protocol(), "clipart_train.txt"),
    (paper.stanford_cars, Protocol(), "stanford_cars/train"),
    (paper.cub200, Protocol(cub_split="pilot"), "cub/train"),
])
def test_new_loaders_say_what_is_missing(tmp_path, builder, proto, needle):
    with pytest.raises(DatasetMissingError) as err:
        builder(n_experiences=2, seed=0, root=tmp_path, protocol=proto)
    msg = str(err.value)
    assert needle in msg and str(tmp_path) in msg and "\n" not in msg


def test_cli_imagenet_r_paper_profile_without_data_fails_fast(tmp_path, monkeypatch, capsys):
    from clmerge.cli import main
    monkeypatch.setenv(paper.DATA_ENV, str(tmp_path))
    rc = main(["run", "--method", "pm", "--benchmark", "imagenet_r", "--profile", "paper",
               "--out", str(tmp_path / "res"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and "\n" not in err
    assert err.startswith("clmerge: error: ImageNet-R not found: download ")
    assert paper.IMAGENET_R_URL in err and str(tmp_path) in err


# ---------------------------------------------------------------------- config
def test_paper_profile_records_the_protocol():
    from clmerge.experiment.config import make_config
    cfg = make_config("pm", "imagenet_r", "paper", 0)
    assert (cfg.input_norm, cfg.lr_schedule, cfg.class_order, cfg.imagenet_r_split,
            cfg.cub_split, cfg.test_interpolation, cfg.crop_scale_min, cfg.vit_weights) == \
        ("none", "cosine", "pilot", "coda", "pilot", "bicubic", 0.05, "augreg2_in21k_ft_in1k")
    assert make_config("pm", "domainnet", "paper", 0).n_experiences == 5
    assert make_config("pm", "imagenet_a", "paper", 0).n_experiences == 10
    assert Protocol.from_config(cfg) == Protocol("none", "pilot", "coda", "pilot", "bicubic", 0.05)


def test_new_settings_at_their_defaults_keep_every_config_hash():
    from clmerge.experiment.config import (FIELDS, HASH_NEUTRAL_DEFAULTS, ExperimentConfig,
                                           make_config)
    for key, default in HASH_NEUTRAL_DEFAULTS.items():
        assert FIELDS[key].default == default
    cfg = make_config("pm", "split_mnist5k", "quick", 0)
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in HASH_NEUTRAL_DEFAULTS}
    assert ExperimentConfig(**legacy).config_hash() == cfg.config_hash()
    assert make_config("pm", "split_mnist5k", "quick", 0,
                       {"lr_schedule": "cosine"}).config_hash() != cfg.config_hash()


def test_class_order_on_a_non_paper_benchmark_is_a_config_error():
    from clmerge.experiment.config import ConfigError, make_config
    with pytest.raises(ConfigError, match="applies to the paper benchmarks only"):
        make_config("seq", "split_digits", "smoke", 0, {"class_order": "pilot"})


# ---------------------------------------------------------------------- schedule
def test_cosine_schedule_sets_both_groups_per_epoch():
    from clmerge.plugins.schedule import CosineEpochSchedule, cosine_factor
    K = 5
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-2}])
    strategy = SimpleNamespace(optimizer=opt, clock=SimpleNamespace(train_exp_epochs=0))
    plugin = CosineEpochSchedule(K)
    seen = []
    for e in range(K):
        strategy.clock.train_exp_epochs = e
        plugin.before_training_epoch(strategy)
        seen.append([g["lr"] for g in opt.param_groups])
    for e, (lr_a, lr_h) in enumerate(seen):
        f = math.cos(99 * math.pi * e / (200 * (K - 1)))
        assert lr_a == pytest.approx(1e-3 * f, rel=1e-12) and lr_h == pytest.approx(1e-2 * f)
    assert seen[0] == [1e-3, 1e-2] and seen[-1][0] == pytest.approx(1e-3 * math.cos(0.495 * math.pi))
    assert cosine_factor(0, 1) == 1.0


def test_cosine_schedule_in_a_run():
    from clmerge.avalanche_api import SupervisedPlugin
    from clmerge.experiment.config import make_config
    from clmerge.experiment.runner import Run
    from clmerge.plugins.schedule import CosineEpochSchedule

    cfg = make_config("seq", "synthetic", "smoke", 0, {"lr_schedule": "cosine", "epochs": 3})
    run = Run(cfg)
    lrs = []

    class Spy(SupervisedPlugin):
        def before_training_iteration(self, strategy, **kwargs):
            lrs.append((strategy.clock.train_exp_epochs, strategy.optimizer.param_groups[0]["lr"]))

    strategy = run.make_strategy([Spy()])
    assert any(isinstance(p, CosineEpochSchedule) for p in strategy.plugins)
    strategy.train_heads = [0]
    strategy.train(run.stream.train_stream[0])
    per_epoch = dict(lrs)
    assert sorted(per_epoch) == [0, 1, 2]
    for e, lr in per_epoch.items():
        assert lr == pytest.approx(cfg.lr * math.cos(99 * math.pi * e / 400))


# ---------------------------------------------------------------------- pooled metrics
def test_pooled_metrics_against_counted_samples():
    from clmerge.experiment import metrics as M
    rng = np.random.default_rng(0)
    sizes = [517, 718, 600]
    T = len(sizes)
    correct = [[int(rng.integers(0, sizes[j] + 1)) if j <= i else None for j in range(T)]
               for i in range(T)]
    R = [[None if c is None else c / sizes[j] for j, c in enumerate(row)] for row in correct]
    pooled_rows = [sum(c for c in row if c is not None) / sum(sizes[: i + 1])
                   for i, row in enumerate(correct)]
    out = M.summarize(R, sizes)
    assert out["A_last_pooled"] == pytest.approx(pooled_rows[-1], rel=1e-12)
    assert out["A_avg_pooled"] == pytest.approx(sum(pooled_rows) / T, rel=1e-12)
    assert out["A_last_pooled"] != pytest.approx(out["A_last"], rel=1e-6)
    equal = M.summarize(R, [600] * T)
    assert equal["A_last_pooled"] == pytest.approx(equal["A_last"])
    assert equal["A_avg_pooled"] == pytest.approx(equal["A_avg"])
    assert M.summarize([[0.5, 0.7]], [10, 30])["A_avg_pooled"] is None   # one row (joint)


def test_pooled_columns_for_stored_results():
    from pathlib import Path

    from clmerge.experiment.results import load_results
    df = load_results(Path(__file__).resolve().parents[1] / "data" / "results",
                      benchmark="split_mnist5k")
    assert len(df) > 0
    for proto in ("cil", "til"):
        # Split MNIST-5k has 200 test images per experience: pooled == per-task mean
        assert np.allclose(df[f"{proto}_A_last_pooled"], df[f"{proto}_A_last"])
        both = df[[f"{proto}_A_avg_pooled", f"{proto}_A_avg"]].dropna()
        assert np.allclose(both.iloc[:, 0], both.iloc[:, 1])


# ---------------------------------------------------------------------- the book page
def test_paper_scale_page_has_a_command_for_every_cell_of_the_table():
    from pathlib import Path

    import pandas as pd

    from clmerge.cli import build_parser
    from clmerge.experiment.config import make_config, parse_assignments
    from clmerge.report import paper_scale as ps

    root = Path(__file__).resolve().parents[1]
    page = (root / "chapters" / "paper_scale.md").read_text()
    assert ps.commands_markdown() in page and ps.estimate_markdown() in page
    assert "chapters/paper_scale" in (root / "_toc.yml").read_text()
    numbers = pd.read_csv(root / "data" / "paper_numbers.csv")
    pm_cells = numbers[(numbers["method"] == "pm") & (numbers["metric"] == "A_last")]
    main_table = {(b, int(t)) for b, t in zip(pm_cells["benchmark"], pm_cells["tasks"])
                  if not (b == "imagenet_r" and t == 5)}      # 5 tasks: the a-ablation only
    assert {(c.benchmark, c.tasks) for c in ps.CELLS} == main_table and len(ps.CELLS) == 6
    parser = build_parser()
    for cell in ps.CELLS:
        for _, method, sets in ps.ROWS:
            args = parser.parse_args(ps.command(cell, method, sets, seed=1).split()[1:])
            cfg = make_config(args.method, args.benchmark, args.profile, args.seed,
                              parse_assignments(args.sets))
            assert (cfg.benchmark, cfg.n_experiences, cfg.profile) == \
                (cell.benchmark, cell.tasks, "paper")
            assert cfg.class_order == "pilot" and cfg.input_norm == "none"
        assert ps.seconds(cell, "pm") > ps.seconds(cell, "seq") > 0


def test_summary_table_shows_pooled_beside_per_task_means():
    import pandas as pd

    from clmerge.report.tables import side_by_side, summary
    df = pd.DataFrame({"variant": ["pm", "pm"], "seed": [0, 1],
                       "cil_A_last": [0.5, 0.7], "cil_A_last_pooled": [0.4, 0.6],
                       "cil_A_avg": [0.6, 0.8], "cil_A_avg_pooled": [0.5, 0.7],
                       "cil_forgetting": [0.1, 0.1]})
    out = summary(df, protocols=("cil",), pooled=True)
    assert list(out.columns.get_level_values(1)) == [
        "seeds", "A_last", "A_last_pooled", "A_avg", "A_avg_pooled", "forgetting"]
    assert out.loc["pm", ("CIL", "A_last_pooled")].startswith("50.0")
    assert out.loc["pm", ("CIL", "A_last")].startswith("60.0")
    paper_col = side_by_side(df, "quick", metric="A_last_pooled").iloc[0, 1]
    assert paper_col == "79.95"       # P&M, ImageNet-R 10 tasks, A_last
