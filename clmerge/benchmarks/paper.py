"""The papers' benchmarks (``paper`` profile): Split CIFAR-100, ImageNet-R, ImageNet-A,
DomainNet, CUB-200 and Stanford Cars.

Data lives under one root: the ``root`` argument, else the env var ``CLMERGE_DATA``,
else ``~/data``. Expected layouts (the official archives, unpacked, unless noted):

- ``split_cifar100``: ``<root>/cifar-100-python/{train,test,meta}`` (torchvision's layout
  of ``cifar-100-python.tar.gz``; ``download=True`` fetches it through torchvision);
- ``imagenet_r``: ``<root>/imagenet-r/<wnid>/<image>.jpg`` (200 classes, 30,000 images),
  or the official ``<root>/imagenet-r.tar``, unpacked next to itself on first use. There
  is no official split. ``imagenet_r_split``: ``coda`` reads the 24,000 / 6,000 list that
  CODA-Prompt (arXiv 2211.13218) and InfLoRA (arXiv 2404.00228) ship (the same file in
  both; stored here as ``splits/imagenet_r_coda.txt.gz``: its 6,000 test images, every
  other image trains); ``sdlora`` is the 80/20 per-class split of SD-LoRA's
  ``scripts/split_imagenet_r.py`` (seed 0); ``seeded`` is an 80/20 per-class split drawn
  with ``SPLIT_SEED`` (independent of the run seed); any other value is the path of a split file in the
  same format (``test <wnid>/<file>`` lines, optional ``class <wnid>`` lines giving the
  label order; a bare ``<wnid>/<file>`` line is a test image);
- ``imagenet_a``: ``<root>/imagenet-a/{train,test}/<wnid>/<image>.jpg``, the pre-split
  copy that the PILOT-family codebases (SD-LoRA, InfLoRA) read; the official
  ``imagenet-a.tar`` has no train/test split;
- ``domainnet``: ``<root>/domainnet/<domain>/<class>/<image>`` for the six domains, with
  the official image lists ``<root>/domainnet/<domain>_{train,test}.txt``
  (``<domain>/<class>/<file> <label>`` per line); 345 classes over all six domains;
- ``cub200``: ``cub_split=official``: ``<root>/CUB_200_2011/`` with ``images.txt``,
  ``train_test_split.txt``, ``image_class_labels.txt`` and ``images/`` (the official
  ``CUB_200_2011.tgz``, also unpacked on first use; the official 5,994 / 5,794 split);
  ``cub_split=pilot``: ``<root>/cub/{train,test}/<class>/<image>.jpg``, the pre-split
  copy the PILOT-family codebases read (distributed with APER, arXiv 2303.07338; its
  split was not checked here against the official one: a run records the sizes it
  finds);
- ``stanford_cars``: ``<root>/stanford_cars/{train,test}/<class>/<image>.jpg`` (196
  classes, the official 8,144 / 8,041 split arranged one folder per class).

Missing data raises :class:`DatasetMissingError` (a ``FileNotFoundError``) with one
sentence saying what to download and where to put it.

Items are read from disk when iterated (CIFAR-100's pickles are small and are held as
uint8 arrays). The protocol choices (:class:`Protocol`, each an ``ExperimentConfig``
field recorded in every result):

- transforms: train ``RandomResizedCrop(224, scale=(crop_scale_min, 1))`` + horizontal
  flip; test ``Resize(256)`` (``test_interpolation`` bilinear or bicubic) +
  ``CenterCrop(224)``; so samples are ``3 x 224 x 224`` float tensors and the ViT-B/16
  backbone reads them as they are;
- ``input_norm``: ``none`` feeds [0, 1] pixels (what InfLoRA, CODA-Prompt, SD-LoRA and
  LAMDA-PILOT do), ``half`` normalises with mean = std = 0.5 (timm's config for the
  augreg ViT-B/16 weights), ``imagenet`` with the ImageNet mean/std;
- ``class_order``: ``seeded`` permutes the classes by the run seed (numpy PCG64),
  ``pilot`` is the LAMDA-PILOT / SD-LoRA order ``np.random.seed(s);
  np.random.permutation(n)`` with ``s`` = 1993 (1995 for ImageNet-R, SD-LoRA's config),
  the same for every run seed; ``natural`` is the label order (InfLoRA's CIFAR-100
  order): class folders sorted by name, the official label ids for CIFAR-100, CUB and
  DomainNet, and the CODA label order with ``imagenet_r_split=coda``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from clmerge.benchmarks.stream import (Stream, class_incremental_stream_from_datasets,
                                       seeded_class_order)
from clmerge.errors import MissingInputError

DATA_ENV = "CLMERGE_DATA"
SPLIT_SEED = 0  # fixed ImageNet-R train/test split (``seeded``), independent of the run seed
IMAGENET_R_TEST_FRACTION = 0.2
NORM_MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics
NORM_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = {"none": None, "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                  "imagenet": (NORM_MEAN, NORM_STD)}
IMG_SIZE = 224
TEST_RESIZE = 256
INPUT_SHAPE = (3, IMG_SIZE, IMG_SIZE)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PILOT_SEED = 1993                       # LAMDA-PILOT / SD-LoRA configs
PILOT_SEEDS = {"imagenet_r": 1995}      # SD-LoRA's ImageNet-R config
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
IMAGENET_R_CODA_SPLIT = SPLITS_DIR / "imagenet_r_coda.txt.gz"
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
IMAGENET_A_URL = ("the pre-split ImageNet-A copy linked from "
                  "https://github.com/zhoudw-zdw/RevisitingCIL (imagenet-a/train, imagenet-a/test)")
DOMAINNET_URL = ("the six domains' images and <domain>_train.txt / <domain>_test.txt lists from "
                 "https://ai.bu.edu/M3SDA/")
CUB_URL = "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)"
CUB_PILOT_URL = ("the pre-split CUB copy linked from https://github.com/zhoudw-zdw/RevisitingCIL "
                 "(cub/train, cub/test)")
CARS_URL = ("Stanford Cars (https://ai.stanford.edu/~jkrause/cars/car_dataset.html, 8,144 train "
            "/ 8,041 test images) arranged one folder per class")


@dataclass(frozen=True)
class Protocol:
    """The protocol choices of the paper benchmarks (``ExperimentConfig`` fields of the
    same names, with the same defaults: ImageNet normalisation, seeded class order,
    seeded ImageNet-R split, official CUB split, bilinear test resize, crop scale 0.08;
    the ``paper`` profile sets the codebases' values)."""

    input_norm: str = "imagenet"
    class_order: str = "seeded"
    imagenet_r_split: str = "seeded"
    cub_split: str = "official"
    test_interpolation: str = "bilinear"
    crop_scale_min: float = 0.08

    @classmethod
    def from_config(cls, cfg) -> "Protocol":
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


DEFAULT_PROTOCOL = Protocol()


class DatasetMissingError(MissingInputError, FileNotFoundError):
    """A benchmark's files are not where the loader looks; the message says what to get."""

    def __str__(self) -> str:  # FileNotFoundError(msg) would print as "msg" anyway
        return self.args[0] if self.args else super().__str__()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$CLMERGE_DATA``, else ``~/data``."""
    return Path(root or os.environ.get(DATA_ENV) or "~/data").expanduser()


def _missing(what: str, url: str, where: Path, root: Path) -> DatasetMissingError:
    return DatasetMissingError(
        f"{what} not found: download {url} and unpack it into {root} so that {where} "
        f"exists (or set {DATA_ENV} to the folder that holds it; default ~/data)")


# ---------------------------------------------------------------------- transforms
def _normalise(protocol: Protocol) -> list:
    if protocol.input_norm not in NORMALISATIONS:
        raise ValueError(f"input_norm must be one of {', '.join(NORMALISATIONS)}")
    stats = NORMALISATIONS[protocol.input_norm]
    return [] if stats is None else [T.Normalize(*stats)]


def train_transform(protocol: Protocol = DEFAULT_PROTOCOL):
    return T.Compose([T.RandomResizedCrop(IMG_SIZE, scale=(protocol.crop_scale_min, 1.0)),
                      T.RandomHorizontalFlip(), T.ToTensor(), *_normalise(protocol)])


def test_transform(protocol: Protocol = DEFAULT_PROTOCOL):
    mode = {"bilinear": T.InterpolationMode.BILINEAR,
            "bicubic": T.InterpolationMode.BICUBIC}[protocol.test_interpolation]
    return T.Compose([T.Resize(TEST_RESIZE, interpolation=mode), T.CenterCrop(IMG_SIZE),
                      T.ToTensor(), *_normalise(protocol)])


# ---------------------------------------------------------------------- class order
def class_order(mode: str, n_classes: int, seed: int, benchmark: str,
                natural: list[int] | None = None) -> list[int]:
    """The order in which classes arrive (see the module docstring)."""
    if mode == "seeded":
        return seeded_class_order(n_classes, seed)
    if mode == "pilot":
        rs = np.random.RandomState(PILOT_SEEDS.get(benchmark, PILOT_SEED))
        return rs.permutation(n_classes).tolist()
    if mode == "natural":
        return list(range(n_classes)) if natural is None else [int(c) for c in natural]
    raise ValueError("class_order must be seeded, pilot or natural")


def _stream(name: str, train, test, n_classes: int, n_experiences: int, seed: int,
            protocol: Protocol, info: dict, natural: list[int] | None = None) -> Stream:
    order = class_order(protocol.class_order, n_classes, seed, name, natural)
    info = {**info, "class_order": protocol.class_order, "input_norm": protocol.input_norm,
            "test_interpolation": protocol.test_interpolation,
            "crop_scale_min": protocol.crop_scale_min,
            "train_size": len(train), "test_size": len(test)}
    return class_incremental_stream_from_datasets(
        name, train, test, n_classes=n_classes, n_experiences=n_experiences, seed=seed,
        input_shape=INPUT_SHAPE, info=info, order=order)


# ---------------------------------------------------------------------- datasets
class ImageFiles(Dataset):
    """Images on disk with integer labels; ``targets`` as Avalanche expects."""

    def __init__(self, paths: list[Path], targets: list[int], transform):
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths = [Path(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        return self.transform(img), self.targets[i]


class ImageArray(Dataset):
    """uint8 images ``(N, H, W, 3)`` held in memory, transformed per item."""

    def __init__(self, images: np.ndarray, targets, transform):
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.targets[i]


def _unpack(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(into)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _image_folder(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """(paths, labels) of ``folder/<class>/<image>`` with labels indexing ``classes``
    (torchvision ``ImageFolder``'s convention: classes sorted by name)."""
    paths, labels = [], []
    for label, c in enumerate(classes):
        if (folder / c).is_dir():
            files = _images(folder / c)
            paths += files
            labels += [label] * len(files)
    return paths, labels


def _presplit(name: str, folder: Path, protocol: Protocol, n_experiences: int, seed: int,
              info: dict | None = None) -> Stream:
    """A stream from ``folder/{train,test}/<class>/<image>`` (classes sorted by name)."""
    classes = _class_folders(folder / "train")
    train = _image_folder(folder / "train", classes)
    test = _image_folder(folder / "test", classes)
    return _stream(name, ImageFiles(*train, train_transform(protocol)),
                   ImageFiles(*test, test_transform(protocol)), len(classes), n_experiences,
                   seed, protocol, {"root": str(folder), "classes": classes, **(info or {})})


def _has_presplit(folder: Path) -> bool:
    return all((folder / s).is_dir() and any(p.is_dir() for p in (folder / s).iterdir())
               for s in ("train", "test"))


# ---------------------------------------------------------------------- CIFAR-100
def _read_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def split_cifar100(n_experiences: int = 10, seed: int = 0,
                   root: str | os.PathLike | None = None, download: bool = False,
                   protocol: Protocol = DEFAULT_PROTOCOL) -> Stream:
    """Split CIFAR-100 (100 classes, 50000/10000 images) at 224 px."""
    base = data_root(root)
    folder = base / "cifar-100-python"
    if download and not (folder / "train").is_file():
        torchvision.datasets.CIFAR100(str(base), train=True, download=True)
    if not all((folder / f).is_file() for f in ("train", "test", "meta")):
        raise _missing("CIFAR-100", CIFAR100_URL, folder / "train", base)
    classes = _read_cifar_pickle(folder / "meta")["fine_label_names"]
    splits = {}
    for split, tf in (("train", train_transform(protocol)), ("test", test_transform(protocol))):
        d = _read_cifar_pickle(folder / split)
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits[split] = ImageArray(np.ascontiguousarray(x), d["fine_labels"], tf)
    return _stream("split_cifar100", splits["train"], splits["test"], len(classes),
                   n_experiences, seed, protocol,
                   {"root": str(folder), "classes": list(classes)})


# ---------------------------------------------------------------------- ImageNet-R
def imagenet_r_split(folder: Path, seed: int = SPLIT_SEED,
                     test_fraction: float = IMAGENET_R_TEST_FRACTION):
    """(train, test, wnids): lists of (path, label), per-class split fixed by ``seed``."""
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, wnid in enumerate(wnids):
        files = _images(folder / wnid)
        idx = rng.permutation(len(files))
        n_test = int(round(test_fraction * len(files)))
        test += [(files[i], label) for i in sorted(idx[:n_test])]
        train += [(files[i], label) for i in sorted(idx[n_test:])]
    return train, test, wnids


def imagenet_r_sdlora_split(folder: Path, seed: int = SPLIT_SEED, train_ratio: float = 0.8):
    """(train, test, wnids): SD-LoRA's ``scripts/split_imagenet_r.py`` split: per class,
    the name-sorted images shuffled by ``random.Random(f"{seed}-{wnid}")``, the first
    ``int(0.8 n)`` (at least 1, at most n - 1) train, the rest test."""
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    train, test = [], []
    for label, wnid in enumerate(wnids):
        files = _images(folder / wnid)
        random.Random(f"{seed}-{wnid}").shuffle(files)
        n_train = int(len(files) * train_ratio)
        if len(files) >= 2:
            n_train = max(1, min(len(files) - 1, n_train))
        train += [(p, label) for p in files[:n_train]]
        test += [(p, label) for p in files[n_train:]]
    return train, test, wnids


def read_split_file(path: Path) -> tuple[list[str], list[str]]:
    """(class wnids in label order, test images ``<wnid>/<file>``) of a split file."""
    opener = gzip.open if path.suffix == ".gz" else open
    classes, test = [], []
    with opener(path, "rt") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kind, _, rest = line.partition(" ")
            if kind == "class":
                classes.append(rest.strip())
            elif kind == "test":
                test.append(rest.strip())
            else:
                test.append(line)
    return classes, test


def imagenet_r_listed_split(folder: Path, split_file: Path):
    """(train, test, wnids, natural) from a split file: its test images, every other image
    of ``folder`` for training; labels index sorted wnids; ``natural`` is the file's class
    order (sorted wnids when it names none) as labels."""
    if not split_file.is_file():
        raise DatasetMissingError(
            f"ImageNet-R split file {split_file} not found: set imagenet_r_split to coda, "
            f"sdlora, seeded or the path of a file with one 'test <wnid>/<file>' line per test image")
    listed_classes, test_names = read_split_file(split_file)
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    label = {w: i for i, w in enumerate(wnids)}
    missing = [n for n in test_names if not (folder / n).is_file()]
    if missing:
        raise DatasetMissingError(
            f"{len(missing)} of the {len(test_names)} test images of {split_file.name} are "
            f"not under {folder} (first: {missing[0]}); unpack the official "
            f"{IMAGENET_R_URL} there")
    test_set = set(test_names)
    train, test = [], []
    for w in wnids:
        for p in _images(folder / w):
            (test if f"{w}/{p.name}" in test_set else train).append((p, label[w]))
    natural = [label[w] for w in listed_classes if w in label] or list(range(len(wnids)))
    return train, test, wnids, natural


def imagenet_r(n_experiences: int = 10, seed: int = 0,
               root: str | os.PathLike | None = None,
               protocol: Protocol = DEFAULT_PROTOCOL) -> Stream:
    """ImageNet-R (200 classes, 30000 renditions), 224 px; split by ``imagenet_r_split``."""
    base = data_root(root)
    folder = base / "imagenet-r"
    if not folder.is_dir() and (base / "imagenet-r.tar").is_file():
        _unpack(base / "imagenet-r.tar", base)
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise _missing("ImageNet-R", IMAGENET_R_URL, folder / "<wnid>/<image>.jpg", base)
    split = protocol.imagenet_r_split
    info = {"root": str(folder), "split": split}
    if split in ("seeded", "sdlora"):
        make = imagenet_r_split if split == "seeded" else imagenet_r_sdlora_split
        train, test, wnids = make(folder)
        natural = None
        info["split_seed"] = SPLIT_SEED
    else:
        path = IMAGENET_R_CODA_SPLIT if split == "coda" else Path(split).expanduser()
        train, test, wnids, natural = imagenet_r_listed_split(folder, path)
    info["classes"] = wnids
    return _stream("imagenet_r",
                   ImageFiles([p for p, _ in train], [y for _, y in train],
                              train_transform(protocol)),
                   ImageFiles([p for p, _ in test], [y for _, y in test],
                              test_transform(protocol)),
                   len(wnids), n_experiences, seed, protocol, info, natural)


# ---------------------------------------------------------------------- ImageNet-A
def imagenet_a(n_experiences: int = 10, seed: int = 0,
               root: str | os.PathLike | None = None,
               protocol: Protocol = DEFAULT_PROTOCOL) -> Stream:
    """ImageNet-A (200 classes, 7500 natural adversarial images), pre-split copy, 224 px."""
    base = data_root(root)
    folder = base / "imagenet-a"
    if not _has_presplit(folder):
        raise _missing("ImageNet-A (train/test split)", IMAGENET_A_URL,
                       folder / "train/<wnid>/<image>.jpg", base)
    return _presplit("imagenet_a", folder, protocol, n_experiences, seed, {"split": "pilot"})


# ---------------------------------------------------------------------- DomainNet
def _read_domainnet_list(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, label = line.rsplit(maxsplit=1)
            out.append((rel, int(label)))
    return out


def domainnet(n_experiences: int = 5, seed: int = 0, root: str | os.PathLike | None = None,
              protocol: Protocol = DEFAULT_PROTOCOL) -> Stream:
    """DomainNet (345 classes, six domains mixed), official lists, 224 px."""
    base = data_root(root)
    folder = base / "domainnet"
    lists = {s: [folder / f"{d}_{s}.txt" for d in DOMAINNET_DOMAINS] for s in ("train", "test")}
    if not all(p.is_file() for ps in lists.values() for p in ps):
        raise _missing("DomainNet", DOMAINNET_URL, folder / "clipart_train.txt", base)
    parts, names = {}, {}
    for s, paths in lists.items():
        items = [it for p in paths for it in _read_domainnet_list(p)]
        for rel, y in items:
            names.setdefault(y, rel.split("/")[1])
        parts[s] = ([folder / rel for rel, _ in items], [y for _, y in items])
    n_classes = max(names) + 1
    return _stream("domainnet", ImageFiles(*parts["train"], train_transform(protocol)),
                   ImageFiles(*parts["test"], test_transform(protocol)), n_classes,
                   n_experiences, seed, protocol,
                   {"root": str(folder), "classes": [names.get(i) for i in range(n_classes)],
                    "split": "official", "domains": list(DOMAINNET_DOMAINS)})


# ---------------------------------------------------------------------- CUB-200
def _read_pairs(path: Path) -> dict[int, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            k, v = line.split(maxsplit=1)
            out[int(k)] = v.strip()
    return out


def cub200(n_experiences: int = 10, seed: int = 0,
           root: str | os.PathLike | None = None,
           protocol: Protocol = DEFAULT_PROTOCOL) -> Stream:
    """CUB-200-2011 (200 bird species; official 5994/5794 split or the PILOT copy), 224 px."""
    base = data_root(root)
    if protocol.cub_split == "pilot":
        folder = base / "cub"
        if not _has_presplit(folder):
            raise _missing("CUB-200 (PILOT split)", CUB_PILOT_URL,
                           folder / "train/<class>/<image>.jpg", base)
        return _presplit("cub200", folder, protocol, n_experiences, seed, {"split": "pilot"})
    folder = base / "CUB_200_2011"
    files = ("images.txt", "train_test_split.txt", "image_class_labels.txt")
    if not folder.is_dir() and (base / "CUB_200_2011.tgz").is_file():
        _unpack(base / "CUB_200_2011.tgz", base)
    if not all((folder / f).is_file() for f in files):
        raise _missing("CUB-200-2011", CUB_URL, folder / "images.txt", base)
    images = _read_pairs(folder / "images.txt")
    is_train = _read_pairs(folder / "train_test_split.txt")
    labels = _read_pairs(folder / "image_class_labels.txt")
    ids = sorted(images)
    n_classes = len({labels[i] for i in ids})
    parts = {True: ([], []), False: ([], [])}
    for i in ids:
        paths, ys = parts[is_train[i] == "1"]
        paths.append(folder / "images" / images[i])
        ys.append(int(labels[i]) - 1)           # 1-based in the files
    class_names = None
    if (folder / "classes.txt").is_file():
        class_names = [v for _, v in sorted(_read_pairs(folder / "classes.txt").items())]
    return _stream("cub200", ImageFiles(*parts[True], train_transform(protocol)),
                   ImageFiles(*parts[False], test_transform(protocol)), n_classes,
                   n_experiences, seed, protocol,
                   {"root": str(folder), "classes": class_names, "split": "official"})


# ---------------------------------------------------------------------- Stanford Cars
def stanford_cars(n_experiences: int = 4, seed: int = 0,
                  root: str | os.PathLike | None = None,
                  protocol: Protocol = DEFAULT_PROTOCOL) -> Stream:
    """Stanford Cars (196 classes, official 8144/8041 split, one folder per class), 224 px."""
    base = data_root(root)
    folder = base / "stanford_cars"
    if not _has_presplit(folder):
        raise _missing("Stanford Cars", CARS_URL, folder / "train/<class>/<image>.jpg", base)
    return _presplit("stanford_cars", folder, protocol, n_experiences, seed,
                     {"split": "official"})


BUILDERS = {"split_cifar100": split_cifar100, "imagenet_r": imagenet_r,
            "imagenet_a": imagenet_a, "domainnet": domainnet, "cub200": cub200,
            "stanford_cars": stanford_cars}
