"""``MergingTemplate``: Avalanche's ``SupervisedTemplate`` with the shared head protocol.

Before each training experience (``model_adaptation``, which Avalanche calls before it
builds the optimizer):

- the heads in ``train_heads`` (the current experience's, or all for joint training)
  become the model's only active heads, so the loss sees only their logits;
- only the LoRA parameters (or every backbone weight, for full fine-tuning) and those
  heads require gradients;

and ``make_optimizer`` builds a fresh AdamW with two parameter groups (backbone at
``lr``, heads at ``head_lr``), so no optimizer state crosses experiences. Everything
else, including the plugins (merge driver, P&M perturbation, diagnostics) and the
``EvaluationPlugin``, is stock Avalanche.
"""

from __future__ import annotations

import torch

from clmerge.avalanche_api import SupervisedTemplate


class MergingTemplate(SupervisedTemplate):
    def __init__(self, *, model, lora=None, finetune: str = "lora", lr: float = 1e-3,
                 head_lr: float = 1e-2, weight_decay: float = 0.0, **kwargs):
        self.lora = lora
        self.finetune = finetune
        self.lr, self.head_lr, self.weight_decay = lr, head_lr, weight_decay
        self.train_heads: list[int] = [0]
        placeholder = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(model=model, optimizer=placeholder,
                         criterion=torch.nn.CrossEntropyLoss(), **kwargs)

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
            for h in self.train_heads:
                for p in model.heads[h].parameters():
                    p.requires_grad_(True)
        return model.to(self.device)

    def make_optimizer(self, **kwargs):
        heads = [p for h in self.train_heads for p in self.model.heads[h].parameters()]
        self.optimizer = torch.optim.AdamW(
            [{"params": self.backbone_trainables(), "lr": self.lr, "name": "backbone"},
             {"params": heads, "lr": self.head_lr, "name": "head"}],
            weight_decay=self.weight_decay)
