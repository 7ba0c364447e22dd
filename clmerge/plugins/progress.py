"""A tqdm progress bar over the minibatches of each training experience."""

from __future__ import annotations

from tqdm import tqdm

from clmerge.avalanche_api import SupervisedPlugin


class ProgressPlugin(SupervisedPlugin):
    def __init__(self, desc: str = "", enabled: bool = True):
        super().__init__()
        self.desc = desc
        self.enabled = enabled
        self.bar = None

    def before_training_exp(self, strategy, **kwargs):
        total = strategy.train_epochs * len(strategy.dataloader)
        t = strategy.experience.current_experience
        self.bar = tqdm(total=total, desc=f"{self.desc} exp {t}", leave=False,
                        disable=not self.enabled, mininterval=1.0)

    def after_training_iteration(self, strategy, **kwargs):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{float(strategy.loss.detach()):.3f}", refresh=False)

    def after_training_exp(self, strategy, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
