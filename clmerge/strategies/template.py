"""``MergingTemplate``: Avalanche's ``SupervisedTemplate`` with the shared head protocol.

Before each training experience (``model_adaptation``, which Avalanche calls before it
builds the optimizer):

- the heads in ``train_heads`` (the current experience's, or all for joint training)
  become the model's only active heads, so the loss sees only their logits;
- only the LoRA parameters (or every backbone weight, for full fine-tuning) and those
  heads require gradients;

- with ``head_init="means"``, the rows of those heads are set to the unit mean of the
  unit features of each class's training images, computed by the model the experience
  starts from (eval mode, no gradient, in dataset order, so no random number is drawn);
  biases are set to 0. A cosine head then starts as the nearest-class-mean classifier
  of the current features, so heads learnt one experience at a time start calibrated
  against each other, and training moves them from there;

and ``make_optimizer`` builds a fresh AdamW with two parameter groups (backbone at
``lr``, heads at ``head_lr``), so no optimizer state crosses experiences. Everything
else, including the plugins (merge driver, P&M perturbation, diagnostics) and the
``EvaluationPlugin``, is stock Avalanche.

**Mixed precision** (``amp``, resolved from the config by :func:`resolve_amp`): with a
dtype, ``forward`` and ``criterion`` (training and evaluation) run under
``torch.autocast(device.type, dtype)``; the backward pass, the optimizer step, the plugins'
hooks and the merge (Fisher included) run outside it, in float32. Parameters and
optimizer state stay float32, and bfloat16 needs no gradient scaler. ``amp=None`` (the
CPU default) changes nothing. On a CUDA device the template also enables TF32 for
float32 matmuls and cuDNN convolutions (:func:`enable_tf32`, process-wide).

**Evaluation in chunks**: an evaluation minibatch (and the head initialisation's) goes
through the model ``EVAL_CHUNK`` samples at a time and the outputs are concatenated
(:func:`in_chunks`). Every sample's output is computed by the same operations on its
own row either way (the model mixes no samples in evaluation mode), so the outputs are
the same; the chunks' activations stay in the core's caches, which a 500-sample
minibatch's do not (the MLP's hidden activations alone are 50 MB for the letters ViT).

**Data loaders**: ``num_workers`` worker processes for the training and evaluation
loaders (training: persistent for the experience's epochs; each worker seeded by
``worker_init_fn``, which the runner sets to :func:`clmerge.experiment.seeding.
seed_worker`); Avalanche pins memory on CUDA. With
``num_workers=0`` the loaders are Avalanche's defaults, unchanged.
"""

from __future__ import annotations

import contextlib

import torch

from clmerge.avalanche_api import SupervisedTemplate

AMP_DTYPES = {"bf16": torch.bfloat16}
EVAL_CHUNK = 50  # samples per forward pass in evaluation


def in_chunks(fn, x: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """``fn(x)`` computed ``chunk`` rows at a time and concatenated (``fn`` must treat
    rows independently, as a model in evaluation mode does)."""
    if len(x) <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


def resolve_amp(setting: str, device) -> torch.dtype | None:
    """The autocast dtype of the config setting ``amp`` on ``device`` (None: no autocast).

    ``auto``: bfloat16 on CUDA, none elsewhere; ``bf16``: bfloat16 on any device (on the
    CPU, torch's CPU autocast); ``off``: none.
    """
    device = torch.device(device)
    if setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if setting in AMP_DTYPES:
        return AMP_DTYPES[setting]
    raise ValueError(f"amp must be one of auto, bf16, off; got {setting!r}")


def enable_tf32() -> None:
    """Let float32 matmuls and cuDNN convolutions use TF32 tensor cores (CUDA only)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


class MergingTemplate(SupervisedTemplate):
    def __init__(self, *, model, lora=None, finetune: str = "lora", lr: float = 1e-3,
                 head_lr: float = 1e-2, weight_decay: float = 0.0, head_init: str = "random",
                 amp: torch.dtype | None = None, num_workers: int = 0,
                 worker_init_fn=None, **kwargs):
        self.lora = lora
        self.finetune = finetune
        self.lr, self.head_lr, self.weight_decay = lr, head_lr, weight_decay
        self.train_heads: list[int] = [0]
        self.head_init = head_init
        self.amp = amp
        self.num_workers = int(num_workers)
        self.worker_init_fn = worker_init_fn
        placeholder = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(model=model, optimizer=placeholder,
                         criterion=torch.nn.CrossEntropyLoss(), **kwargs)
        if self.device.type == "cuda":
            enable_tf32()

    # ------------------------------------------------------------------ precision
    def autocast(self):
        """The autocast context of training/evaluation forwards (a no-op without amp)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def forward(self):
        with self.autocast():
            if self.is_training:
                return super().forward()
            return in_chunks(self.model, self.mb_x)

    def criterion(self):
        with self.autocast():  # autocast runs cross-entropy in float32
            return super().criterion()

    # ------------------------------------------------------------------ data
    def make_train_dataloader(self, num_workers=None, persistent_workers=None, **kwargs):
        workers = self.num_workers if num_workers is None else num_workers
        if persistent_workers is None:
            persistent_workers = workers > 0
        super().make_train_dataloader(num_workers=workers,
                                      persistent_workers=persistent_workers, **kwargs)

    def make_eval_dataloader(self, num_workers=None, **kwargs):
        workers = self.num_workers if num_workers is None else num_workers
        super().make_eval_dataloader(num_workers=workers, **kwargs)

    def _obtain_common_dataloader_parameters(self, **kwargs):
        args = super()._obtain_common_dataloader_parameters(**kwargs)
        if args.get("num_workers", 0) > 0 and self.worker_init_fn is not None:
            args.setdefault("worker_init_fn", self.worker_init_fn)
        return args

    # ------------------------------------------------------------------ training
    def backbone_trainables(self) -> list[torch.nn.Parameter]:
        if self.finetune == "lora":
            return self.lora.parameters()
        lora_ids = {id(p) for p in self.lora.parameters()} if self.lora else set()
        return [p for p in self.model.backbone.parameters() if id(p) not in lora_ids]

    def model_adaptation(self, model=None):
        model = self.model if model is None else model
        if self.is_training:
            model.set_active_heads(self.train_heads)
            for p in model.parameters():
                p.requires_grad_(False)
            for p in self.backbone_trainables():
                p.requires_grad_(True)
            model = model.to(self.device)
            if self.head_init == "means":
                self.init_heads_at_means(model)
            for h in self.train_heads:
                for p in model.heads[h].parameters():
                    p.requires_grad_(True)
        return model.to(self.device)

    @torch.no_grad()
    def init_heads_at_means(self, model) -> None:
        """Set each training head's class rows to the unit mean of the unit features of
        that class in the current experience (biases to 0)."""
        was_training = model.training
        model.eval()
        loader = torch.utils.data.DataLoader(self.experience.dataset.eval(),
                                             batch_size=self.eval_mb_size, shuffle=False)
        sums: dict[int, torch.Tensor] = {}
        for x, y, *_ in loader:
            f = torch.nn.functional.normalize(in_chunks(model.backbone, x.to(self.device)),
                                              dim=-1)
            for c in y.unique().tolist():
                s = f[y.to(self.device) == c].sum(0)
                sums[c] = sums[c] + s if c in sums else s
        for h in self.train_heads:
            head = model.heads[h]
            for row, c in enumerate(model.classes_per_exp[h]):
                if c in sums:
                    head.weight[row] = torch.nn.functional.normalize(sums[c], dim=0)
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()
        model.train(was_training)

    def make_optimizer(self, **kwargs):
        heads = [p for h in self.train_heads for p in self.model.heads[h].parameters()]
        self.optimizer = torch.optim.AdamW(
            [{"params": self.backbone_trainables(), "lr": self.lr, "name": "backbone"},
             {"params": heads, "lr": self.head_lr, "name": "head"}],
            weight_decay=self.weight_decay)
