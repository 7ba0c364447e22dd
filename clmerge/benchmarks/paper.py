"""The papers' benchmarks (``paper`` profile): Split CIFAR-100, ImageNet-R, CUB-200.

Data lives under one root: the ``root`` argument, else the env var ``CLMERGE_DATA``,
else ``~/data``. Expected layouts (the official archives, unpacked):

- ``split_cifar100``: ``<root>/cifar-100-python/{train,test,meta}`` (torchvision's layout
  of ``cifar-100-python.tar.gz``; ``download=True`` fetches it through torchvision);
- ``imagenet_r``: ``<root>/imagenet-r/<wnid>/<image>.jpg`` (200 classes), or the official
  ``<root>/imagenet-r.tar``, which is unpacked next to itself on first use. There is no
  official split: 80 % / 20 % train/test per class, drawn with a fixed seed
  (``SPLIT_SEED``, independent of the run seed, so every run sees the same test set);
- ``cub200``: ``<root>/CUB_200_2011/`` with ``images.txt``, ``train_test_split.txt``,
  ``image_class_labels.txt`` and ``images/`` (the official ``CUB_200_2011.tgz``, also
  unpacked on first use when only the archive is there); the official train/test split.

Missing data raises :class:`DatasetMissingError` (a ``FileNotFoundError``) with one
sentence saying what to download and where to put it.

Items are read from disk when iterated (CIFAR-100's pickles are small and are held as
uint8 arrays). Transforms (InfLoRA / CODA-Prompt conventions, the papers do not state
theirs): train ``RandomResizedCrop(224)`` + horizontal flip, test ``Resize(256)`` +
``CenterCrop(224)``; both then normalise with the ImageNet mean/std, so samples are
``3 x 224 x 224`` float tensors and the ViT-B/16 backbone reads them as they are.
Assumption to know: timm's config for the augreg ViT-B/16 weights normalises with
mean = std = 0.5 instead; ``NORM_MEAN``/``NORM_STD`` are the single place to change it.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from clmerge.benchmarks.stream import Stream, class_incremental_stream_from_datasets
from clmerge.errors import MissingInputError

DATA_ENV = "CLMERGE_DATA"
SPLIT_SEED = 0  # fixed ImageNet-R train/test split, independent of the run seed
IMAGENET_R_TEST_FRACTION = 0.2
NORM_MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics
NORM_STD = (0.229, 0.224, 0.225)
IMG_SIZE = 224
INPUT_SHAPE = (3, IMG_SIZE, IMG_SIZE)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
CUB_URL = "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)"


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
def train_transform():
    return T.Compose([T.RandomResizedCrop(IMG_SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(NORM_MEAN, NORM_STD)])


def test_transform():
    return T.Compose([T.Resize(256), T.CenterCrop(IMG_SIZE), T.ToTensor(),
                      T.Normalize(NORM_MEAN, NORM_STD)])


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


# ---------------------------------------------------------------------- CIFAR-100
def _read_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def split_cifar100(n_experiences: int = 10, seed: int = 0,
                   root: str | os.PathLike | None = None, download: bool = False) -> Stream:
    """Split CIFAR-100 (100 classes, 50000/10000 images) at 224 px, ImageNet-normalised."""
    base = data_root(root)
    folder = base / "cifar-100-python"
    if download and not (folder / "train").is_file():
        torchvision.datasets.CIFAR100(str(base), train=True, download=True)
    if not all((folder / f).is_file() for f in ("train", "test", "meta")):
        raise _missing("CIFAR-100", CIFAR100_URL, folder / "train", base)
    classes = _read_cifar_pickle(folder / "meta")["fine_label_names"]
    splits = {}
    for split, tf in (("train", train_transform()), ("test", test_transform())):
        d = _read_cifar_pickle(folder / split)
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits[split] = ImageArray(np.ascontiguousarray(x), d["fine_labels"], tf)
    return class_incremental_stream_from_datasets(
        "split_cifar100", splits["train"], splits["test"], n_classes=len(classes),
        n_experiences=n_experiences, seed=seed, input_shape=INPUT_SHAPE,
        info={"root": str(folder), "classes": list(classes)})


# ---------------------------------------------------------------------- ImageNet-R
def imagenet_r_split(folder: Path, seed: int = SPLIT_SEED,
                     test_fraction: float = IMAGENET_R_TEST_FRACTION):
    """(train, test, wnids): lists of (path, label), per-class split fixed by ``seed``."""
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, wnid in enumerate(wnids):
        files = sorted(p for p in (folder / wnid).iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS)
        idx = rng.permutation(len(files))
        n_test = int(round(test_fraction * len(files)))
        test += [(files[i], label) for i in sorted(idx[:n_test])]
        train += [(files[i], label) for i in sorted(idx[n_test:])]
    return train, test, wnids


def imagenet_r(n_experiences: int = 10, seed: int = 0,
               root: str | os.PathLike | None = None) -> Stream:
    """ImageNet-R (200 classes, 30000 renditions), 80/20 per-class split, 224 px."""
    base = data_root(root)
    folder = base / "imagenet-r"
    if not folder.is_dir() and (base / "imagenet-r.tar").is_file():
        _unpack(base / "imagenet-r.tar", base)
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise _missing("ImageNet-R", IMAGENET_R_URL, folder / "<wnid>/<image>.jpg", base)
    train, test, wnids = imagenet_r_split(folder)
    return class_incremental_stream_from_datasets(
        "imagenet_r",
        ImageFiles([p for p, _ in train], [y for _, y in train], train_transform()),
        ImageFiles([p for p, _ in test], [y for _, y in test], test_transform()),
        n_classes=len(wnids), n_experiences=n_experiences, seed=seed, input_shape=INPUT_SHAPE,
        info={"root": str(folder), "classes": wnids, "split_seed": SPLIT_SEED})


# ---------------------------------------------------------------------- CUB-200
def _read_pairs(path: Path) -> dict[int, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            k, v = line.split(maxsplit=1)
            out[int(k)] = v.strip()
    return out


def cub200(n_experiences: int = 10, seed: int = 0,
           root: str | os.PathLike | None = None) -> Stream:
    """CUB-200-2011 (200 bird species, official 5994/5794 split), 224 px."""
    base = data_root(root)
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
    return class_incremental_stream_from_datasets(
        "cub200", ImageFiles(*parts[True], train_transform()),
        ImageFiles(*parts[False], test_transform()), n_classes=n_classes,
        n_experiences=n_experiences, seed=seed, input_shape=INPUT_SHAPE,
        info={"root": str(folder), "classes": class_names})
