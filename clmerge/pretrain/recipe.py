"""Reproducible CPU recipe that pretrains :class:`~clmerge.backbones.vit.SmallViT` on letters.

The backbone is trained, with a throw-away linear head, to classify the 52 rendered
Latin letters of :mod:`clmerge.pretrain.letters` (no digits, so nothing overlaps the
MNIST / sklearn-digits streams used later). Only the backbone weights are kept:

- ``<out>/vit_letters.safetensors``: ``SmallViT.state_dict()`` (keys ``vit.*``);
- ``<out>/vit_letters.json``: the recipe, seed, final train loss, held-out letter
  accuracy (10 % of the rendered images never trained on), per-epoch history, torch
  version, wall seconds and the sha256 of the safetensors file.

Both are written atomically (temp file in the same folder + ``os.replace``), the
weights first, so an interrupted run leaves either the old pair or a json whose sha256
no longer matches (which :func:`ensure_vit_letters_checkpoint` treats as missing).

Command line::

    nice -n 10 python -m clmerge.pretrain.recipe [--out DIR] [--ensure]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn
from tqdm.auto import tqdm

from clmerge.backbones.vit import (CHECKPOINT_NAME, SmallViT, checkpoint_paths,
                                   sha256_file, verify_vit_letters_checkpoint)
from clmerge.pretrain.letters import N_CLASSES, render_letters


@dataclass
class VitLettersRecipe:
    seed: int = field(default=0, metadata={"help": "seed for rendering, split, init, "
                                                   "shuffling and augmentation"})
    n_per_class: int = field(default=250, metadata={"help": "rendered images per letter "
                                                            "(52 letters)"})
    holdout_frac: float = field(default=0.1, metadata={"help": "fraction of the rendered "
                                                               "images held out for accuracy"})
    epochs: int = field(default=12, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=128, metadata={"help": "minibatch size"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    min_lr: float = field(default=1e-5, metadata={"help": "final learning rate of the "
                                                          "cosine schedule"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up length "
                                                                "(epochs)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay "
                                                                "(matrices only; not "
                                                                "biases, norms, "
                                                                "embeddings)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label "
                                                                  "smoothing"})
    augment_shift: int = field(default=1, metadata={"help": "random translation in px "
                                                            "(zero-padded crop) per "
                                                            "training image"})
    embed_dim: int = field(default=128, metadata={"help": "ViT width (= backbone out_dim)"})
    depth: int = field(default=4, metadata={"help": "number of transformer blocks"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden width / embed_dim"})
    global_pool: str = field(default="avg", metadata={"help": "'avg' (mean of patch "
                                                              "tokens) or 'token'"})
    num_threads: int = field(default=2, metadata={"help": "torch.set_num_threads during "
                                                          "training"})
    deterministic: bool = field(default=True, metadata={"help": "torch.use_deterministic_"
                                                                "algorithms(True)"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VitLettersRecipe":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _param_groups(modules, weight_decay: float):
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-shift, shift]^2 (zero fill)."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    ox = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    oy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (ox[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    return padded[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def _evaluate(model: nn.Module, head: nn.Module, X: torch.Tensor, y: torch.Tensor,
              batch_size: int = 512) -> tuple[float, float]:
    model.eval()
    head.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = head(model(X[i:i + batch_size]))
        loss_sum += float(nn.functional.cross_entropy(logits, y[i:i + batch_size],
                                                      reduction="sum"))
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    return loss_sum / max(1, len(y)), correct / max(1, len(y))


def pretrain_vit_letters(recipe: VitLettersRecipe | None = None,
                         out_dir: str | os.PathLike | None = None,
                         progress: bool = True) -> Path:
    """Run the recipe and write the checkpoint pair into ``out_dir``; returns the
    safetensors path. ``out_dir`` defaults to ``<repo>/data/checkpoints``."""
    recipe = recipe or VitLettersRecipe()
    st_path, meta_path = checkpoint_paths(out_dir)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.num_threads)
    if recipe.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        random.seed(recipe.seed)
        np.random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)

        # data: render, split (stratified by construction: random permutation)
        X, y = render_letters(recipe.n_per_class, recipe.seed)
        perm = np.random.default_rng(recipe.seed).permutation(len(y))
        n_hold = int(round(recipe.holdout_frac * len(y)))
        hold, train = perm[:n_hold], perm[n_hold:]
        Xt = torch.from_numpy(X).unsqueeze(1).float().div_(255.0)
        yt = torch.from_numpy(y)
        X_tr, y_tr, X_ho, y_ho = Xt[train], yt[train], Xt[hold], yt[hold]
        t_data = time.time() - t0

        # model + throw-away letter head
        model = SmallViT(embed_dim=recipe.embed_dim, depth=recipe.depth,
                         num_heads=recipe.num_heads, mlp_ratio=recipe.mlp_ratio,
                         global_pool=recipe.global_pool)
        head = nn.Linear(model.out_dim, N_CLASSES)
        opt = torch.optim.AdamW(_param_groups([model, head], recipe.weight_decay),
                                lr=recipe.lr, betas=(0.9, 0.999))
        steps_per_epoch = math.ceil(len(y_tr) / recipe.batch_size)
        total = steps_per_epoch * recipe.epochs
        warm = int(round(recipe.warmup_epochs * steps_per_epoch))
        floor = recipe.min_lr / recipe.lr

        def lr_factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            p = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        gen = torch.Generator().manual_seed(recipe.seed + 1)

        history = []
        bar = tqdm(total=total, desc="vit-letters", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        for epoch in range(recipe.epochs):
            model.train()
            head.train()
            order = torch.randperm(len(y_tr), generator=gen)
            loss_sum, seen, correct = 0.0, 0, 0
            for s in range(steps_per_epoch):
                idx = order[s * recipe.batch_size:(s + 1) * recipe.batch_size]
                xb = _random_shift(X_tr[idx], recipe.augment_shift, gen)
                yb = y_tr[idx]
                logits = head(model(xb))
                loss = nn.functional.cross_entropy(logits, yb,
                                                   label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip > 0:
                    nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()),
                                             recipe.grad_clip)
                opt.step()
                sched.step()
                loss_sum += float(loss) * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
            ho_loss, ho_acc = _evaluate(model, head, X_ho, y_ho)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen,
                            "train_acc": correct / seen, "heldout_loss": ho_loss,
                            "heldout_acc": ho_acc, "seconds": time.time() - t0})
            bar.write(f"epoch {epoch + 1}/{recipe.epochs}: train loss {loss_sum / seen:.4f} "
                      f"acc {correct / seen:.4f} | held-out loss {ho_loss:.4f} "
                      f"acc {ho_acc:.4f} | {time.time() - t0:.0f}s")
        bar.close()
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)

    # backbone weights only (no letter head)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write_bytes(st_path, st_save(state, metadata={"recipe": json.dumps(recipe.to_dict())}))
    digest = sha256_file(st_path)
    wall = time.time() - t0
    meta = {
        "name": CHECKPOINT_NAME,
        "file": st_path.name,
        "sha256": digest,
        "bytes": st_path.stat().st_size,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "n_params": sum(v.numel() for v in state.values()),
        "n_train": int(len(y_tr)),
        "n_heldout": int(len(y_ho)),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_train_acc": history[-1]["train_acc"] if history else None,
        "heldout_loss": history[-1]["heldout_loss"] if history else None,
        "heldout_acc": history[-1]["heldout_acc"] if history else None,
        "history": history,
        "data_seconds": t_data,
        "wall_seconds": wall,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created_unix": int(time.time()),
    }
    _atomic_write_bytes(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    return st_path


def ensure_vit_letters_checkpoint(out_dir: str | os.PathLike | None = None) -> Path:
    """Path of a verified ``vit_letters.safetensors`` in ``out_dir``, rebuilding it with
    the recipe (the one recorded in the json when readable, else the default) if the
    file is missing or its sha256 does not match the json."""
    ok, reason = verify_vit_letters_checkpoint(out_dir)
    st_path, meta_path = checkpoint_paths(out_dir)
    if ok:
        return st_path
    recipe = VitLettersRecipe()
    try:
        recipe = VitLettersRecipe.from_dict(json.loads(meta_path.read_text())["recipe"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"[clmerge] ViT letters checkpoint not usable: {reason}.\n"
          f"[clmerge] Rebuilding it with the pretraining recipe into {st_path.parent} "
          f"(a few CPU minutes; {recipe.epochs} epochs x {52 * recipe.n_per_class} "
          f"letters) ...", file=sys.stderr, flush=True)
    return pretrain_vit_letters(recipe, st_path.parent)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the SmallViT backbone on "
                                                 "rendered letters (CPU).")
    parser.add_argument("--out", default=None,
                        help="output folder (default <repo>/data/checkpoints)")
    parser.add_argument("--ensure", action="store_true",
                        help="only rebuild if the checkpoint is missing or its sha256 "
                             "does not match the json")
    args = parser.parse_args(argv)
    if args.ensure:
        path = ensure_vit_letters_checkpoint(args.out)
    else:
        path = pretrain_vit_letters(VitLettersRecipe(), args.out)
    meta = json.loads(checkpoint_paths(args.out)[1].read_text())
    print(f"{path}  sha256={meta['sha256']}\n"
          f"final train loss {meta['final_train_loss']:.4f}, held-out letter accuracy "
          f"{meta['heldout_acc']:.4f}, wall {meta['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
